"""SASRec on CPU: each loss option's time per epoch against a plain full-CE reference, and its
epochs and seconds to the validation plateau, measured in one run on the same data.

    .venv/bin/python bench/bench_sasrec.py                       # all of real Clothing (~30-40 min on 2 cores)
    .venv/bin/python bench/bench_sasrec.py --losses gbce --max-users 8000 --threads 1
    .venv/bin/python bench/bench_sasrec.py --skip-training        # only the step timings and the evaluation

Everything is printed as seconds and ratios measured in this run (never asserted):

1. **time per epoch** (training steps only): the same ``--steps`` length-bucketed batches of the
   real training data, one optimizer step each, for the plain full-CE reference
   (``F.cross_entropy(h @ E.T, y)``), the package's full CE (:func:`rarec_lite.sasrec.full_softmax_ce`,
   same values and gradients), sampled softmax over ``k`` shared negatives
   (:func:`rarec_lite.sasrec.sampled_softmax_ce`), gBCE with ``k`` negatives per position, and the
   paper's one-negative BCE;
   extrapolated to one epoch and divided by the reference.
2. **to the validation plateau**: for each ``--losses`` option, :func:`rarec_lite.sasrec.train_sasrec`
   with the :class:`~rarec_lite.sasrec.SASRecConfig` defaults except the loss (``--set key=value``
   adds overrides), early stopping on validation NDCG@10; prints each epoch, then the best
   validation NDCG@10, the epoch and the wall seconds it was reached at (training + per-epoch
   validation), the epochs run, and the test metrics of the restored best epoch over all users.
3. **evaluation**: seconds of a full-ranking evaluation with each batch encoded on its own
   (``evaluate(model.score_histories)``) against every user encoded once (:func:`rarec_lite.sasrec.evaluate_sasrec`),
   the encoder's share (length-sorted chunks vs one padded batch), and for one batch the score matmul and the
   rank counts in blocks of :data:`rarec_lite.metrics.RANK_ROWS` users against one ``(U, I)`` pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rarec_lite.metrics import RANK_ROWS, evaluate, full_ranking_rank_ties
from rarec_lite.sasrec import (SASRec, SASRecConfig, _length_bucketed_batches, evaluate_sasrec, pad_histories,
                               sequence_loss, train_sasrec, training_pairs)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_cloth"


def load(data_dir: Path, max_users: int | None):
    from rarec_lite.data import load_dataset

    if (data_dir / "user_sequence.txt").exists():
        return load_dataset("cloth", raw_dir=data_dir, max_users=max_users), f"real Clothing ({data_dir})"
    return load_dataset("toy", max_users=max_users), "the synthetic toy dataset (real Clothing not found)"


def plain_ce(model: SASRec, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference: full-catalogue cross-entropy as one would first write it."""
    states = model(x)
    keep = y != 0
    return F.cross_entropy(states[keep] @ model.item_embeddings().T, y[keep] - 1)


def time_steps(ds, cfg: SASRecConfig, steps: int) -> None:
    split = ds.split()
    inputs, targets = training_pairs(split.train, cfg.max_len)
    lengths = (inputs != 0).sum(1)
    gen = torch.Generator().manual_seed(0)
    batches = _length_bucketed_batches(lengths, cfg.batch_size, gen)
    per_epoch = len(batches)
    chosen = [batches[i] for i in torch.randperm(per_epoch, generator=gen)[:steps].tolist()]
    options = [
        ("ce-plain (reference)", lambda m, x, y, g: plain_ce(m, x, y)),
        ("ce", lambda m, x, y, g: sequence_loss(m, x, y, "ce")),
        (f"sampled k={cfg.sampled_negatives}",
         lambda m, x, y, g: sequence_loss(m, x, y, "sampled", g, sampled_negatives=cfg.sampled_negatives)),
        (f"gbce k={cfg.num_negatives}", lambda m, x, y, g: sequence_loss(m, x, y, "gbce", g, cfg.num_negatives, cfg.gbce_t)),
        ("bce (1 negative)", lambda m, x, y, g: sequence_loss(m, x, y, "bce", g)),
    ]
    print(f"\n-- 1. time per epoch: {len(chosen)} of the {per_epoch} batches of an epoch (batch {cfg.batch_size}), "
          "one AdamW step each --")
    ref = None
    for name, fn in options:
        torch.manual_seed(0)
        model = SASRec(ds.num_items, cfg.hidden, cfg.max_len, cfg.num_layers, cfg.num_heads, cfg.dropout,
                       cfg.similarity, cfg.temperature).train()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(1)

        def run(batch_list):
            for idx in batch_list:
                w = int(lengths[idx].max())
                loss = fn(model, inputs[idx][:, -w:], targets[idx][:, -w:], g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        run(chosen[:2])  # warm-up
        start = time.perf_counter()
        run(chosen)
        seconds = (time.perf_counter() - start) / len(chosen) * per_epoch
        ref = ref or seconds
        print(f"{name:<22} {seconds:7.1f} s of training steps per epoch   {seconds / ref:5.2f}x the reference")


def to_plateau(ds, losses: list[str], overrides: dict, epochs: int, patience: int, out_root: Path) -> None:
    print(f"\n-- 2. to the validation plateau: SASRecConfig defaults + {overrides or 'nothing'}, "
          f"at most {epochs} epochs, patience {patience} --")
    rows = []
    for loss in losses:
        cfg = dict(overrides, loss=loss, epochs=epochs, patience=patience)
        start = time.perf_counter()
        run = train_sasrec(ds, out_root / f"bench-{loss}", progress=False, **cfg)
        wall = time.perf_counter() - start
        hist = run.metrics["history"]
        best = run.metrics["best_epoch"]
        to_best = sum(h["seconds"] for h in hist[:best])
        print(f"{loss}: " + "  ".join(f"{h['epoch']}:{h['valid_ndcg10']:.4f}" for h in hist))
        rows.append((loss, run.metrics["valid"]["NDCG@10"], best, to_best, len(hist),
                     np.mean([h["seconds"] for h in hist]), run.test.metrics, wall))
    print(f"\n{'loss':<6} {'best valid NDCG@10':>18} {'epoch':>5} {'s to best':>9} {'epochs':>6} {'s/epoch':>7} "
          f"{'test NDCG@10':>12} {'HR@10':>7} {'HR@100':>7} {'wall s':>7}")
    for loss, v, best, to_best, n, per, test, wall in rows:
        print(f"{loss:<6} {v:18.4f} {best:5d} {to_best:9.0f} {n:6d} {per:7.1f} {test['NDCG@10']:12.4f} "
              f"{test['HR@10']:7.4f} {test['HR@100']:7.4f} {wall:7.0f}")


def plain_rank_ties(scores: torch.Tensor, targets: np.ndarray, histories) -> tuple[np.ndarray, np.ndarray]:
    """The reference: one ``(U, I)`` pass as one would first write it (copy, NaN mask, compare, sum)."""
    s = scores.clone()
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
    keep = s[torch.arange(len(targets)), torch.from_numpy(targets)].clone()
    s[torch.from_numpy(rows), torch.from_numpy(np.concatenate(histories).astype(np.int64))] = float("nan")
    s[torch.arange(len(targets)), torch.from_numpy(targets)] = keep
    col = keep[:, None]
    return (s > col).sum(1).numpy(), ((s == col).sum(1) - 1).numpy()


def eval_speed(ds, cfg: SASRecConfig, users: int) -> None:
    print(f"\n-- 3. full-ranking evaluation, {users} validation users --")
    split = ds.split()
    model = SASRec(ds.num_items, cfg.hidden, cfg.max_len, cfg.num_layers, cfg.num_heads, cfg.dropout,
                   cfg.similarity, cfg.temperature).eval()
    n = min(users, ds.num_users)
    hist, target = split.valid_history[:n], np.asarray(split.valid_target[:n])

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    with torch.no_grad():
        _, padded_s = timed(lambda: model.encode(pad_histories(hist, cfg.max_len, trim=True)))
        states, encode_s = timed(lambda: model.encode_histories(hist))
        per_batch, per_batch_s = timed(lambda: evaluate(model.score_histories, hist, target, ds.num_items,
                                                        batch_size=cfg.eval_batch_size))
        (once, _), once_s = timed(lambda: evaluate_sasrec(model, hist, target, cfg.eval_batch_size))
        items = model.item_embeddings()
        scores = states[: cfg.eval_batch_size] @ items.T
        b = scores.shape[0]
        _, matmul_s = timed(lambda: states[: cfg.eval_batch_size] @ items.T)
        blocked, blocked_s = timed(lambda: full_ranking_rank_ties(scores, target[:b], hist[:b]))
        plain, plain_s = timed(lambda: plain_rank_ties(scores, target[:b], hist[:b]))
    same = np.array_equal(blocked.greater, plain[0]) and np.array_equal(blocked.tied, plain[1])
    print(f"encoder: {encode_s:.2f} s in length-sorted chunks (one batch padded to its longest history: {padded_s:.2f} s)")
    print(f"evaluate(model.score_histories) (each batch encoded, scored, ranked): {per_batch_s:.2f} s; "
          f"evaluate_sasrec (encoded once): {once_s:.2f} s, {per_batch_s / once_s:.2f}x faster "
          f"(same NDCG@10: {per_batch.metrics['NDCG@10']:.6f} vs {once.metrics['NDCG@10']:.6f})")
    print(f"one batch of {b} users: score matmul {matmul_s:.3f} s; rank counts {blocked_s:.3f} s in blocks of "
          f"{RANK_ROWS} users vs {plain_s:.3f} s in one (U, I) pass ({plain_s / blocked_s:.1f}x; identical counts: {same})")
    print(f"all {ds.num_users} users ~{ds.num_users * once_s / n:.0f} s per evaluation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--max-users", type=int, default=None, help="a fixed random slice of the users (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="batches timed per loss in part 1")
    ap.add_argument("--losses", default="ce,sampled", help="comma-separated loss options trained in part 2")
    ap.add_argument("--epochs", type=int, default=SASRecConfig.epochs)
    ap.add_argument("--patience", type=int, default=SASRecConfig.patience)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a SASRecConfig override for part 2 (JSON value), e.g. --set dropout=0.3")
    ap.add_argument("--skip-training", action="store_true", help="parts 1 and 3 only")
    ap.add_argument("--eval-users", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    cfg = SASRecConfig(**overrides)
    ds, source = load(args.data, args.max_users)
    print(f"data: {source}; {ds.num_users} users, {ds.num_items} items; torch {torch.__version__}, "
          f"{args.threads} thread(s); config {json.dumps(dataclasses.asdict(cfg))}")
    time_steps(ds, cfg, args.steps)
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            to_plateau(ds, [s.strip() for s in args.losses.split(",") if s.strip()], overrides,
                       args.epochs, args.patience, Path(tmp))
    eval_speed(ds, cfg, args.eval_users)


if __name__ == "__main__":
    main()
