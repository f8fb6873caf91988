"""How faithfully does the soft prompt carry SASRec? The ID channel of RA-Rec's untrained start, measured end to end.

A prototype outside the package (like ``isometric_init_probe.py``), untrained. The pipeline's RA-Rec starts from
the isometric last-layer map (``TwoTower.init_isometric_reparameterization``), which inverts the *linear* part of
the last layer's path from the soft prompt to the pooled, standardised state. What really arrives also goes
through the prefix's RMS norm, the layer's MLP and the final norm. This script opens the gates (warm-up factor 1),
encodes a sample of items and of training users (their validation prompts, never a test user) with the gates open
and closed, and calls the difference, in the item standardisation's units, the **ID part** ``D``. Then:

* a ridge fit ``D - mean = M (e - mean)`` per tower (``e`` the frozen SASRec embeddings): the held-out R^2 says how
  linear the channel is, the singular values of ``M`` how isometric (all equal = SASRec's geometry kept);
* the per-item scale ``|D| / |M e|`` (spread from the final norm and the pooling);
* the correlation of item-item dot products of the ID parts with SASRec's own (held-out items).

``--calibrate K`` replaces the last layer's map by ``W T`` with ``T = V diag(mean(s) / s) V^T`` (``M = U S V^T``, the
item tower's fitted path), ``K`` times, so the *measured* item path becomes isometric, same ``T`` for both towers.
``--anchor B`` instead sets the map's bias to a vector of the value path's null space of length ``B`` times the
tower's RMS ``|W e|`` (so the prefix's RMS norm divides every ID by nearly the same number) and multiplies the
last gate by ``sqrt(1 + B^2)``. ``--gate G`` sets the last layer's starting gate. Each run then scores the start on
the evaluation users against the whole catalogue (``Experiment.tower_scores``: the opened towers' own statistics),
with the plain standardised dot product (``[llm] item_norm = false``, forced here so the comparison holds
whatever the config says) and with the cosine item tower (the item states rescaled after standardisation,
the pipeline's default since this round).

Usage (after the main job, whose results directory holds the caches)::

    python bench/id_channel_probe.py --out results/cpu-quick                 # diagnostics + the start as it is
    python bench/id_channel_probe.py --out results/cpu-quick --calibrate 1   # the measured path made isometric
    python bench/id_channel_probe.py --out results/cpu-quick --anchor 2
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from rarec_lite.metrics import metrics_from_ranks
from rarec_lite.pipeline import METHODS, Experiment, load_config


def ridge(x: torch.Tensor, y: torch.Tensor, rel: float = 1e-2) -> torch.Tensor:
    """``M`` (out, in) minimising ``|y - x M^T|^2 + lam |M|^2`` with ``lam = rel * mean eigenvalue of x^T x``
    (SASRec's LayerNorm'd user states span an affine 127-dim subspace: one direction has no variance)."""
    g = x.T @ x
    return torch.linalg.solve(g + rel * torch.trace(g) / g.shape[0] * torch.eye(g.shape[0]), x.T @ y).T


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cpu-quick", help="the main job's config (name or .toml path)")
    ap.add_argument("--out", required=True, help="the pipeline's results directory of that config (its cache/)")
    ap.add_argument("--users", type=int, default=2000, help="the first N evaluation users to score")
    ap.add_argument("--fit", type=int, default=2000, help="items and training users sampled for the fits")
    ap.add_argument("--calibrate", type=int, default=0, help="make the measured item path isometric, K times")
    ap.add_argument("--anchor", type=float, default=0.0, help="null-space bias of B x the RMS |W e| (0: none)")
    ap.add_argument("--gate", type=float, default=None, help="the last layer's starting gate (default: the config's)")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    cfg["llm"]["item_norm"] = False  # scored both ways at the end
    if args.gate is not None:
        cfg["alignment"]["last_layer_gate"] = args.gate
    exp = Experiment(cfg, Path(args.out), progress=False)
    exp.load_data()
    exp.load_sasrec()
    n = args.users
    exp.eval_users, exp.eval_histories, exp.eval_targets = exp.eval_users[:n], exp.eval_histories[:n], exp.eval_targets[:n]
    method = METHODS["rarec"]
    rng = np.random.default_rng(0)
    budget_u, budget_i, bs = int(cfg["llm"]["user_max_tokens"]), int(cfg["llm"]["item_max_tokens"]), int(cfg["llm"]["batch_size"])

    with torch.no_grad():
        tower = exp.build_tower(method)
        al = tower.alignment
        al.gate_offset = 0.0  # warm-up factor 1: the gates open at their starting values
        last = al.num_layers - 1
        items_e = exp.sasrec.item_embeddings().detach().float()
        iidx = torch.as_tensor(np.sort(rng.choice(items_e.shape[0], args.fit, replace=False)))
        item_prompts = exp.item_prompts(method.prompts)
        fit_items = [item_prompts[i] for i in iidx.tolist()]
        others = np.setdiff1d(np.arange(exp.dataset.num_users), exp.eval_users)
        others = np.array([u for u in others if len(exp.split.valid_history[u]) > 0])
        users = np.sort(rng.choice(others, args.fit, replace=False))
        hist = [np.asarray(exp.split.valid_history[u]) for u in users]
        fit_users = [exp.user_prompt(method.prompts, u, h, budget_u).text for u, h in zip(users, hist)]
        users_e = exp.user_id_embeddings(hist).float()

        if args.anchor > 0:
            from rarec_lite.prefix import _layers

            block = _layers(exp.backbone.model, "llama")[last]
            h = exp.backbone.info.hidden_size
            eye = torch.eye(h, dtype=tower.dtype, device=tower.device)
            value = (block.self_attn.v_proj(eye) - block.self_attn.v_proj(torch.zeros(1, h, dtype=tower.dtype,
                                                                                     device=tower.device)))
            value = value.float().cpu().T * block.input_layernorm.weight.detach().float().cpu()[None, :]
            null = torch.linalg.svd(value)[2][-1]  # a unit vector the value path does not see
            for t, e in (("user", users_e), ("item", items_e)):
                lin = al.reparam[t][last]
                size = float((e @ lin.weight.detach().float().cpu().T).norm(dim=1).pow(2).mean().sqrt())
                lin.bias.copy_((args.anchor * size * null).to(lin.bias.dtype))
                al.gate[t][last] *= math.sqrt(1 + args.anchor ** 2)

        def id_parts():
            gates = {t: al.gate[t].clone() for t in al.gate}
            opened = (tower.encode_batched(fit_users, "user", users_e, bs, budget_u, progress=False),
                      tower.encode_batched(fit_items, "item", items_e[iidx], bs, budget_i, progress=False))
            for t in al.gate:
                al.gate[t].zero_()
            closed = (tower.encode_batched(fit_users, "user", users_e, bs, budget_u, progress=False),
                      tower.encode_batched(fit_items, "item", items_e[iidx], bs, budget_i, progress=False))
            for t in al.gate:
                al.gate[t].copy_(gates[t])
            sigma = tower.stats["item"][1]
            return [(o - c) / sigma for o, c in zip(opened, closed)]

        for rnd in range(args.calibrate + 1):
            d_u, d_i = id_parts()
            x_u, x_i = users_e - users_e.mean(0), items_e[iidx] - items_e[iidx].mean(0)
            half = args.fit // 2
            for name, x, d in (("user", x_u, d_u - d_u.mean(0)), ("item", x_i, d_i - d_i.mean(0))):
                m_half = ridge(x[:half], d[:half])
                r2 = 1 - ((d[half:] - x[half:] @ m_half.T) ** 2).sum() / (d[half:] ** 2).sum()
                sv = torch.linalg.svdvals(ridge(x, d))
                print(f"[{rnd}] {name} ID part: held-out linear R^2 {r2:.3f}; fitted path singular values "
                      f"{sv[0]:.2f} .. {sv[-2]:.2f} (max/min {sv[0] / sv[-2]:.2f}, the smallest left out for users)", flush=True)
            m_i = ridge(x_i, d_i - d_i.mean(0))
            scale = d_i.norm(dim=1) / (x_i @ m_i.T + d_i.mean(0)).norm(dim=1)
            xe, de = items_e[iidx][half:], d_i[half:]
            corr = np.corrcoef((xe @ xe.T).flatten().numpy(), (de @ de.T).flatten().numpy())[0, 1]
            print(f"[{rnd}] item ID part: per-item scale |D| / |M e + mean| cv {float(scale.std() / scale.mean()):.3f}; "
                  f"item-item dot products vs SASRec's, correlation {corr:.4f}", flush=True)
            if rnd == args.calibrate:
                break
            _, s, vh = torch.linalg.svd(m_i, full_matrices=False)
            t_map = vh.T @ torch.diag(s.mean() / s) @ vh
            for t in ("user", "item"):
                w = al.reparam[t][last].weight
                w.copy_(w @ t_map.to(w.dtype))

        t0 = time.time()
        captured = {}
        score = type(tower).score

        def keep(self, u, i):
            captured["u"], captured["i"] = u, i
            return score(self, u, i)

        type(tower).score = keep  # the evaluated states, to score them once more with the cosine item tower
        try:
            scores = exp.tower_scores(tower, method)
        finally:
            type(tower).score = score
        tower.item_norm = True  # the package's own cosine item tower, on the same states and statistics
        cosine = tower.score(captured["u"], captured["i"])
        label = (f"gate {float(al.gate['item'][last]):.3f}" + (f", anchor {args.anchor}" if args.anchor else "")
                 + (f", calibrated x{args.calibrate}" if args.calibrate else ""))
        print(f"\n{n} test users, {exp.dataset.num_items:,} items, full ranking, expected ties "
              f"({time.time() - t0:.0f} s)\n| untrained start, gates open | HR@10 | HR@100 | NDCG@10 |\n|---|---:|---:|---:|")
        for name, s in ((f"{label}, plain standardised dot product", scores),
                        (f"{label}, cosine item tower", cosine),
                        ("SASRec", exp.sasrec_scores())):
            greater, tied = exp.rank(s)
            m = metrics_from_ranks(greater, [10, 100], tied=tied)
            print(f"| {name} | {m['HR@10']:.4f} | {m['HR@100']:.4f} | {m['NDCG@10']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
