"""RA-Rec's start from SASRec's geometry: a last-layer reparameterization made isometric through the frozen path.

A prototype outside the package (like ``last_layer_probe.py``), untrained: it measures where the towers
*start* when the soft prompt's route to the final state is inverted by hand. At the last layer the ID
slot's prefix vector ``W e`` reaches the pooled, standardised final state through the layer's frozen input
norm, ``v_proj``, the grouped-query expansion, ``o_proj``, the final norm and the item statistics:

    J = diag(g_final / sigma_item) . O . E . V . diag(g_input)            (H x H, rank <= kv_heads * head_dim)

linear up to per-token scalars (the attention weight of the slot, the RMS norms) and the layer's MLP. With
``W = V_64`` (the top-``d`` right singular vectors of ``J``; variant ``a``) or ``V_64 S_64^-1`` (variant ``b``,
the package's map), both towers' ID parts are ``J W e``: the same scaled copy of SASRec's (cosine) geometry, so their dot product
starts as SASRec's own score, next to the text's. The gates are opened (warm-up factor 1) with every layer's
gate at 0 but the last one's at ``G``; nothing is trained. Each variant encodes the whole catalogue once
(about 3 min on 2 idle cores for SmolLM2's first 6 layers).

Usage (after the main job, whose cache holds the catalogue's text-only states)::

    python bench/isometric_init_probe.py --out results/cpu-quick --users 500 --variants a:0.25,a:0.5,a:1 \\
        --method rarec_no_instruction

``--pipeline-start`` scores the pipeline's own untrained RA-Rec instead (``Experiment.build_tower`` with the
config's ``[alignment]``, the warm-up opened, ``Experiment.tower_scores``): where training starts from::

    python bench/isometric_init_probe.py --out results/cpu-quick --users 2000 --pipeline-start

``--method rarec`` keeps the 4 contextual-instruction slots beside the ID slot (they share its softmax);
``rarec_no_instruction`` has the ID slot alone, so every head and token gives it attention weight 1.
Prints HR@10 / HR@100 / NDCG@10 for SASRec, the text alone (hybrid prompt), late fusion and each variant
(statistics of the opened towers recomputed on the evaluated users and catalogue).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rarec_lite.baselines import late_fusion
from rarec_lite.metrics import metrics_from_ranks
from rarec_lite.pipeline import METHODS, Experiment, load_config


def isometric_map(tower, divide_singular_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W (H, d), singular values (H,))``: the last layer's isometric map from the ID embedding,
    ``V_d S_d^-1 c`` (the package's :meth:`rarec_lite.alignment.TwoTower.init_isometric_reparameterization`,
    which also writes it into ``tower``), or without ``divide_singular_values`` the variant ``V_d`` (the
    package's map until session 11, which weights SASRec's directions by ``s_k^2``)."""
    sv = tower.init_isometric_reparameterization()
    w = tower.alignment.reparam["user"][tower.alignment.num_layers - 1].weight.detach().float().clone()
    if not divide_singular_values:
        d = w.shape[1]
        w = w * sv[:d] / sv[:d].mean()
    return w, sv


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cpu-quick")
    ap.add_argument("--out", required=True, help="the pipeline's results directory of that config (its cache/)")
    ap.add_argument("--users", type=int, default=500, help="the first N evaluation users")
    ap.add_argument("--variants", default="a:0.5", help="comma-separated KIND:GATE, KIND a (W = V_d) or b (V_d S^-1)")
    ap.add_argument("--method", default="rarec", choices=["rarec", "rarec_no_instruction"])
    ap.add_argument("--pipeline-start", action="store_true",
                    help="score the pipeline's own untrained start instead (Experiment.build_tower with the config's "
                         "[alignment], the warm-up opened, Experiment.tower_scores): what training starts from")
    args = ap.parse_args(argv)

    exp = Experiment(load_config(args.config), Path(args.out), progress=False)
    exp.load_data()
    exp.load_sasrec()
    n = args.users
    exp.eval_users, exp.eval_histories, exp.eval_targets = exp.eval_users[:n], exp.eval_histories[:n], exp.eval_targets[:n]
    method = METHODS[args.method]

    def show(name, scores):
        greater, tied = exp.rank(scores)
        m = metrics_from_ranks(greater, [10, 100], tied=tied)
        print(f"| {name} | {m['HR@10']:.4f} | {m['HR@100']:.4f} | {m['NDCG@10']:.4f} |", flush=True)

    print(f"{n} test users, {exp.dataset.num_items:,} items, full ranking, expected ties\n"
          "| method | HR@10 | HR@100 | NDCG@10 |\n|---|---:|---:|---:|")
    if args.pipeline_start:
        method = METHODS[args.method]
        with torch.no_grad():
            tower = exp.build_tower(method)
            tower.alignment.gate_offset = 0.0  # warm-up factor 1: the gates open at their starting values
            t0 = time.time()
            scores = exp.tower_scores(tower, method)
            show(f"{args.method}, the pipeline's untrained start, gates open ({time.time() - t0:.0f} s)", scores)
        return
    with torch.no_grad():
        user_emb = exp.user_id_embeddings(exp.eval_histories).float()
        item_emb = exp.sasrec.item_embeddings().detach().float()
        sasrec = exp.sasrec_scores()
        show("SASRec (ID only)", sasrec)
        text = METHODS["id_translation"]
        show("late fusion: SASRec + ID Translation", late_fusion([sasrec, exp.tower_scores(exp.build_tower(text), text)]))
        tower = exp.build_tower(method)
        show("text alone (hybrid prompt, zero-shot)",
             tower.score(tower.encode_batched([p.text for p in exp.eval_prompts(method)], "user", None, 64, 64,
                                              use_prefix=False, progress=False), exp.item_text_states()[0]))
        last = tower.alignment.num_layers - 1
        tower.alignment.gate_offset = 0.0  # warm-up factor 1: the gates are open
        # the maps from the text-only statistics, before any variant replaces them with its own
        maps = {kind: isometric_map(tower, divide_singular_values=kind == "b")[0] for kind in "ab"}
        for variant in args.variants.split(","):
            kind, gate = variant.split(":")
            w = maps[kind]
            for t in ("user", "item"):
                tower.alignment.reparam[t][last].weight.copy_(w)
                tower.alignment.reparam[t][last].bias.zero_()
                tower.alignment.gate[t].zero_()
                tower.alignment.gate[t][last] = float(gate)
            t0 = time.time()
            items = tower.encode_batched(exp.item_prompts("hybrid"), "item", item_emb, 64, 24, progress=False)
            users = tower.encode_batched([p.text for p in exp.eval_prompts(method)], "user", user_emb, 64, 64,
                                         progress=False)
            tower.set_standardization(items, users)  # the opened towers' own statistics
            show(f"{args.method}, W {'V_d' if kind == 'a' else 'V_d S^-1'}, last gate {gate} ({time.time() - t0:.0f} s)",
                 tower.score(users, items))


if __name__ == "__main__":
    main()
