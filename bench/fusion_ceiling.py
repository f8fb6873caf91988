"""What the frozen parts already know: SASRec + the zero-shot LLM, combined without the soft-prompt route.

RA-Rec has to carry the SASRec signal through soft prompts into the LLM's final states. Before blaming
the LLM or the data, this script measures how far the *same information* goes when it is combined in
the simplest ways, on the main job's users and items (one run, same protocol as the pipeline: full
ranking, leave-one-out, history masked, expected ties):

1. each part alone: SASRec, zero-shot ID Translation (the LLM reading the history text), TF-IDF kNN;
2. **late fusion**: per-user z-scored SASRec scores + zero-shot LLM scores, one weight chosen on the
   validation pairs of other (training) users;
3. **a linear stand-in of RA-Rec's towers**: ``score = (z_u + A e_u) . (z_i + B e_i)``, the zero-shot
   standardised states plus a trained linear map of the (normalised) SASRec embedding, trained with the
   trainer's loss (BPR over in-batch + 64 uniformly drawn negatives, score scale 1/H, 150 steps of 16,
   AdamW lr 1e-3) on the same kind of pairs, with ``A = B`` at the start (``tie_init``) or drawn apart.

Usage (after the main job, whose cache holds the catalogue's text-only states)::

    python bench/fusion_ceiling.py --config cpu-quick --out results/cpu-quick

It encodes the ID Translation prompts of the evaluation users and of ``--train-users`` other users
(about a minute for 5,000 prompts on 2 idle cores) and prints one table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rarec_lite.alignment import TwoTower
from rarec_lite.baselines import ItemTextKNN, late_fusion
from rarec_lite.losses import bpr_loss
from rarec_lite.metrics import full_ranking_rank_ties, metrics_from_ranks
from rarec_lite.pipeline import Experiment, load_config


def evaluate(scores, targets, histories, ks=(10, 100)) -> dict:
    greater, tied = full_ranking_rank_ties(scores, targets, histories)
    return metrics_from_ranks(greater, list(ks), tied=tied)


def linear_stand_in(z_user, e_user, targets, z_item, e_item, tied: bool, steps=150, batch=16, negatives=64,
                    lr=1e-3, init=1.0, seed=0):
    """Train A, B (H, d) of ``score = (z_u + A e_u) . (z_i + B e_i)`` with the trainer's BPR; return A, B."""
    g = torch.Generator().manual_seed(seed)
    h, d = z_item.shape[1], e_item.shape[1]
    a = torch.randn(h, d, generator=g) * init
    b = a.clone() if tied else torch.randn(h, d, generator=g) * init
    a.requires_grad_(True), b.requires_grad_(True)
    opt = torch.optim.AdamW([a, b], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        idx = torch.randint(0, len(targets), (batch,), generator=g)
        neg = torch.randint(0, len(z_item), (negatives,), generator=g)
        tgt = targets[idx]
        u = z_user[idx] + e_user[idx] @ a.T
        v = z_item[tgt] + e_item[tgt] @ b.T
        extra = z_item[neg] + e_item[neg] @ b.T
        loss = bpr_loss(u, v, tgt, 1.0 / h, extra.detach(), neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return a.detach(), b.detach()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="cpu-quick")
    ap.add_argument("--out", required=True, help="the pipeline's results directory of that config (its cache/)")
    ap.add_argument("--train-users", type=int, default=3000)
    args = ap.parse_args(argv)
    t0 = time.time()
    cfg = load_config(args.config)
    exp = Experiment(cfg, Path(args.out), progress=False)
    exp.load_data()
    exp.load_sasrec()
    split, llm = exp.split, cfg["llm"]
    budget = int(llm["user_max_tokens"])
    items = exp.item_text_states()[0].float()

    others = np.setdiff1d(np.arange(exp.dataset.num_users), exp.eval_users)
    others = np.array([u for u in others if len(split.valid_history[u]) > 0])
    rng = np.random.default_rng([exp.seed, 23])
    train_users = np.sort(rng.choice(others, size=min(args.train_users, len(others)), replace=False))
    train_hist = [np.asarray(split.valid_history[u]) for u in train_users]
    train_tgt = np.asarray([split.valid_target[u] for u in train_users])

    tower = TwoTower(exp.backbone, None, exp.pooling)
    enc = lambda users, hists: tower.encode_batched(  # noqa: E731
        [exp.user_prompt("translation", u, h, budget).text for u, h in zip(users, hists)], "user", None,
        int(llm["batch_size"]), budget, progress=False)
    u_eval, u_train = enc(exp.eval_users, exp.eval_histories), enc(train_users, train_hist)
    # standardisation as the pipeline did it before the cosine item tower: items by the catalogue, users by
    # other users' prompts (the item rows keep their lengths; the numbers in bench/README.md were measured so)
    z_item = (items - items.mean(0)) / items.std(0)
    mu, sd = u_train.mean(0), u_train.std(0)
    z_eval, z_train = (u_eval - mu) / sd, (u_train - mu) / sd

    emb = exp.sasrec.item_embeddings().detach().float()
    e_item = F.normalize(emb, dim=1)
    s_user_eval, s_user_train = exp.user_id_embeddings(exp.eval_histories), exp.user_id_embeddings(train_hist)
    knn = ItemTextKNN().fit(exp.dataset.item_text, split.train)
    knn_scores = lambda h: torch.cat([knn.score(h[i:i + 512]) for i in range(0, len(h), 512)])  # noqa: E731

    rows = {}
    ev = (exp.eval_targets, exp.eval_histories)
    parts_eval = {"sasrec": s_user_eval @ emb.T, "llm": z_eval @ z_item.T}
    parts_train = {"sasrec": s_user_train @ emb.T, "llm": z_train @ z_item.T}
    rows["SASRec (ID only)"] = evaluate(parts_eval["sasrec"], *ev)
    rows["ID Translation, zero-shot"] = evaluate(parts_eval["llm"], *ev)
    rows["Item-text TF-IDF kNN"] = evaluate(knn_scores(exp.eval_histories), *ev)
    # rarec_lite.baselines.late_fusion: per-user z-scores, weighted (the pipeline's late_fusion uses 0.5 / 0.5)
    best = max(np.linspace(0, 1, 11), key=lambda w: sum(evaluate(
        late_fusion([parts_train["sasrec"], parts_train["llm"]], [w, 1 - w]), train_tgt, train_hist).values()))
    rows[f"late fusion, SASRec weight {best:.1f} (chosen on training users)"] = evaluate(
        late_fusion([parts_eval["sasrec"], parts_eval["llm"]], [best, 1 - best]), *ev)
    tgt = torch.as_tensor(train_tgt)
    for tied in (True, False):
        a, b = linear_stand_in(z_train, F.normalize(s_user_train, dim=1), tgt, z_item, e_item, tied)
        scores = (z_eval + F.normalize(s_user_eval, dim=1) @ a.T) @ (z_item + e_item @ b.T).T
        rows[f"linear stand-in, {'tied' if tied else 'separate'} start"] = evaluate(scores, *ev)

    print(f"{len(exp.eval_users):,} test users, {exp.dataset.num_items:,} items, full ranking, expected ties; "
          f"{len(train_users):,} training users' validation pairs; {time.time() - t0:.0f} s")
    print(f"| method | HR@10 | HR@100 | NDCG@10 |\n|---|---:|---:|---:|")
    for name, m in rows.items():
        print(f"| {name} | {m['HR@10']:.4f} | {m['HR@100']:.4f} | {m['NDCG@10']:.4f} |")


if __name__ == "__main__":
    main()
