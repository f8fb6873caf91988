"""SASRec on CPU: training throughput, full-ranking evaluation throughput, and the matmul floor.

    .venv/bin/python bench/bench_sasrec.py                  # real Clothing if found, else same-size synthetic
    .venv/bin/python bench/bench_sasrec.py --users 4096 --steps 10 --threads 2

Everything is measured in one run and printed as rates and ratios (never asserted):

* training: sequences/s of ``--steps`` optimizer steps (batch 256, full-catalogue cross-entropy,
  and the sampled BCE loss of the original paper for comparison);
* evaluation: users/s of :func:`rarec_lite.metrics.evaluate` (encode, score all items, mask the
  history, rank the target) on ``--users`` validation users;
* the floor: one ``(users x d) @ (d x items)`` matmul of the same size; the ratio
  ``evaluation time / matmul time`` says how much of the evaluation is beyond the unavoidable
  scoring (the Transformer encoder, the history mask and the rank counting).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from rarec_lite.metrics import evaluate
from rarec_lite.sasrec import SASRec, pad_histories, sequence_loss, training_pairs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_cloth"


def load_sequences(data_dir: Path | None, seed: int) -> tuple[list[np.ndarray], int, str]:
    """Real Clothing sequences via rarec_lite.data when available, else synthetic ones of the same size."""
    if data_dir is not None and (data_dir / "user_sequence.txt").exists():
        from rarec_lite.data import load_dataset

        ds = load_dataset("cloth", raw_dir=data_dir)
        return ds.sequences, ds.num_items, f"real Clothing ({data_dir})"
    rng = np.random.default_rng(seed)
    num_users, num_items = 39_387, 23_033
    lengths = np.clip(rng.geometric(1 / 3, size=num_users) + 4, 5, 136)  # mean ~7, like Clothing
    seqs = [rng.choice(num_items, size=n, replace=False) for n in lengths]
    return seqs, num_items, "synthetic, Clothing-sized (39,387 users, 23,033 items)"


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--users", type=int, default=4096, help="users evaluated")
    ap.add_argument("--steps", type=int, default=8, help="training steps timed per loss")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    seqs, num_items, source = load_sequences(args.data, seed=0)
    print(f"data: {source}; {len(seqs)} users, {num_items} items; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    model = SASRec(num_items, hidden=args.hidden, max_len=args.max_len)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train = [s[:-2] for s in seqs]
    inputs, targets = training_pairs(train, args.max_len)
    lengths = (inputs != 0).sum(1)
    order = torch.argsort(lengths)  # length-bucketed batches, as the trainer makes them
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(order) - args.batch_size, size=args.steps)

    print("\n-- training (one step = forward + backward + Adam) --")
    for loss in ("ce", "bce"):
        model.train()

        def steps(loss=loss):
            for start in starts:
                idx = order[start : start + args.batch_size]
                x, y = inputs[idx], targets[idx]
                w = int(lengths[idx].max())
                value = sequence_loss(model, x[:, -w:], y[:, -w:], loss)
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()

        steps()  # warm-up (first call imports and allocates)
        seconds = timed(steps)
        rate = args.steps * args.batch_size / seconds
        print(f"loss={loss:<4} {rate:8.0f} sequences/s   -> one Clothing epoch ({len(inputs)} sequences) "
              f"~{len(inputs) / rate:6.0f} s")

    print(f"\n-- full-ranking evaluation, {args.users} users --")
    model.eval()
    users = np.arange(min(args.users, len(seqs)))
    hist = [seqs[u][:-2] for u in users]
    target = np.array([seqs[u][-2] for u in users])
    with torch.no_grad():
        encode_s = timed(lambda: model.encode(pad_histories(hist, args.max_len, trim=True)))
        eval_s = timed(lambda: evaluate(model.score_histories, hist, target, num_items, batch_size=1024))
        u = torch.randn(len(users), args.hidden)
        items = model.item_embeddings().detach().clone()
        u @ items.T  # warm-up
        matmul_s = timed(lambda: u @ items.T, repeat=3)
    print(f"evaluate (encode + score + mask + rank): {len(users) / eval_s:8.0f} users/s  ({eval_s:.2f} s)")
    print(f"  of which the encoder alone:            {len(users) / encode_s:8.0f} users/s  ({encode_s:.2f} s)")
    print(f"floor: one ({len(users)} x {args.hidden}) @ ({args.hidden} x {num_items}) matmul: {matmul_s:.3f} s")
    print(f"ratio evaluation / matmul floor: {eval_s / matmul_s:.1f}x")
    print(f"-> all {len(seqs)} users: ~{len(seqs) / (len(users) / eval_s):.0f} s per full-ranking evaluation")


if __name__ == "__main__":
    main()
