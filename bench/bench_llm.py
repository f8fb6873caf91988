"""Memory and speed of the frozen backbones on this machine: NF4 vs fp32, SmolLM2 vs MiniLM.

For each configuration it loads the backbone with :func:`rarec_lite.llm.load_backbone` and
measures, in this one run:

* weight bytes (parameters + buffers + quantization constants, as stored),
* load seconds (a first NF4 load on CPU also quantizes and caches; see the ``cached`` column),
* forward seconds for a batch of 16 x 64 tokens (no grad, median of ``--reps``),
* prefix-train-step seconds: a Linear makes a per-layer prefix (P=4 vectors per layer, RA-Rec
  Sec. 3), forward with the prefix, mean-pooled MSE loss, backward, Adam step (median).

It prints a table and the ratios the course quotes (NF4 / fp32 weight bytes, NF4 / fp32
forward time, 8 / 30 layers forward time). Numbers depend on the machine and its load:
compare ratios from one run, not absolute times across machines.

    .venv/bin/python bench/bench_llm.py            # SmolLM2 + MiniLM, ~5 min on 2 CPU cores
    .venv/bin/python bench/bench_llm.py --quick    # fewer configs and reps
    .venv/bin/python bench/bench_llm.py --main-job # the main job's LLM stages per precision

``--main-job`` (issue 12: the CPU default precision chosen by measurement) times, on
SmolLM2-135M with its first 6 layers (``max_layers=6``, as ``cpu-quick`` runs it), the two LLM
stages of the main job, per precision:

* ``encode``: no-grad encoding of 64 item prompts of 24 tokens (``[llm] batch_size`` and
  ``item_max_tokens`` of cpu-quick), mean-pooled last layer;
* ``train step``: forward + backward + Adam step through per-layer prefixes of P = 5 slots
  (1 ID token + 4 instruction tokens, cpu-quick's ``[alignment]``) for 16 user prompts of 64
  tokens and 16 item prompts of 24 tokens, in-batch softmax over the pooled states (a stand-in
  for the alignment's loss; the prefixes come from one Linear, the stand-in for RA-Rec's
  alignment module).

Precisions: fp32, NF4 (fp32 compute, as ``load_backbone`` does on CPU) and bf16
(``load_backbone(quantization="bf16")``) where the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16``
in ``/proc/cpuinfo``: ``rarec_lite.llm.cpu_has_native_bf16``, what ``[llm] quantization = "auto"`` reads);
else the bf16 row says ``skipped: no avx512_bf16``. "Trains correctly" is checked in the same
run: the train step runs after a no-grad pass (as in the pipeline); the prefix source's
gradient must be finite and non-zero, no 4-bit layer may be on bitsandbytes' repacked path
(:func:`rarec_lite.llm.untrainable_4bit_layers`), and its cosine with the fp32 gradient is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from rarec_lite import paths
from rarec_lite.llm import cpu_has_native_bf16, load_backbone
from rarec_lite.prefix import forward_with_prefix, pool

BATCH, SEQ, PREFIX = 16, 64, 4


def _batch(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = 5  # skip special tokens
    ids = torch.randint(low, len(bb.tokenizer), (BATCH, SEQ), generator=g)
    return ids, torch.ones_like(ids)


def _median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(name: str, quantization: str | None, max_layers: int | None, reps: int) -> dict:
    cache = paths.models_dir() / f"{name}-nf4-cpu"
    cached = quantization != "nf4" or cache.exists()
    bb = load_backbone(name, quantization=quantization, device="cpu", max_layers=max_layers)
    info = bb.info
    ids, mask = _batch(bb)

    def forward():
        with torch.no_grad():
            forward_with_prefix(bb, ids, mask, None)

    torch.manual_seed(0)
    L, H = info.num_layers, info.hidden_size
    source = torch.nn.Linear(64, L * PREFIX * H)
    z, target = torch.randn(BATCH, 64), torch.randn(BATCH, H)
    opt = torch.optim.Adam(source.parameters(), lr=1e-3)

    def train_step():
        prefixes = list(source(z).view(BATCH, L, PREFIX, H).unbind(1))
        hs = forward_with_prefix(bb, ids, mask, prefixes)
        loss = torch.nn.functional.mse_loss(pool(hs[-1], mask, "mean"), target)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return {
        "model": name,
        "quantization": quantization or "fp32",
        "layers": f"{info.num_layers}/{info.num_layers_total}",
        "weight_MB": info.weight_bytes / 1e6,
        "load_s": info.load_seconds,
        "cached": cached,
        "forward_s": _median_seconds(forward, reps),
        "train_step_s": _median_seconds(train_step, max(1, reps - 1)),
    }


MAIN_JOB = dict(name="smollm2-135m", max_layers=6, item_batch=64, item_tokens=24,
                user_batch=16, user_tokens=64, prefix=5)


def _tokens(bb, batch: int, length: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(bb.tokenizer), (batch, length), generator=g)
    return ids, torch.ones_like(ids)


def setup_main_job(precision: str, fp32_ref: dict | None = None) -> dict:
    """Load one precision (``"fp32"``, ``"nf4"``, ``"bf16"``), run the no-grad pass the pipeline
    always runs first, then one (un-timed) train step: the correctness check. Returns the row
    (gradient facts, cosines with fp32) plus the ``encode`` / ``train_step`` closures to time."""
    from rarec_lite.llm import untrainable_4bit_layers

    cfg = MAIN_JOB
    bb = load_backbone(cfg["name"], quantization=None if precision == "fp32" else precision,
                       device="cpu", max_layers=cfg["max_layers"])
    L, H, P = bb.info.num_layers, bb.info.hidden_size, cfg["prefix"]
    item_ids, item_mask = _tokens(bb, cfg["item_batch"], cfg["item_tokens"], 1)
    u_ids, u_mask = _tokens(bb, cfg["user_batch"], cfg["user_tokens"], 2)
    i_ids, i_mask = _tokens(bb, cfg["user_batch"], cfg["item_tokens"], 3)

    def encode():
        with torch.no_grad():
            return pool(forward_with_prefix(bb, item_ids, item_mask, None)[-1], item_mask, "mean").float()

    torch.manual_seed(0)
    source = torch.nn.Linear(64, L * P * H)
    torch.nn.init.normal_(source.weight, std=0.02)
    zu, zi = torch.randn(cfg["user_batch"], 64), torch.randn(cfg["user_batch"], 64)
    opt = torch.optim.Adam(source.parameters(), lr=1e-3)
    B = cfg["user_batch"]

    def loss_fn():
        pu = list(source(zu).view(B, L, P, H).unbind(1))
        pi = list(source(zi).view(B, L, P, H).unbind(1))
        hu = pool(forward_with_prefix(bb, u_ids, u_mask, pu)[-1], u_mask, "mean").float()
        hi = pool(forward_with_prefix(bb, i_ids, i_mask, pi)[-1], i_mask, "mean").float()
        logits = (hu @ hi.T) / H ** 0.5
        return torch.nn.functional.cross_entropy(logits, torch.arange(B))

    def train_step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad()

    states = encode()  # the no-grad pass the pipeline always runs first
    loss = loss_fn()   # first step, un-timed: the correctness check
    loss.backward()
    grad = source.weight.grad.detach().flatten().clone()
    opt.zero_grad()
    row = {
        "precision": precision,
        "layers": f"{L}/{bb.info.num_layers_total}",
        "weight_MB": bb.info.weight_bytes / 1e6,
        "load_s": bb.info.load_seconds,
        "grad_finite": bool(torch.isfinite(grad).all()),
        "grad_norm": float(grad.norm()),
        "untrainable_4bit_layers": len(untrainable_4bit_layers(bb.model)),
    }
    if fp32_ref is not None:
        row["grad_cos_vs_fp32"] = float(torch.nn.functional.cosine_similarity(grad, fp32_ref["grad"], dim=0))
        row["item_state_cos_vs_fp32"] = float(
            torch.nn.functional.cosine_similarity(states, fp32_ref["item_states"], dim=1).mean())
    row["trains"] = row["grad_finite"] and row["grad_norm"] > 0 and row["untrainable_4bit_layers"] == 0
    return {"row": row, "grad": grad, "item_states": states, "encode": encode, "train_step": train_step}


def main_job(reps: int, threads: int) -> list[dict]:
    """``--main-job``: print the main job's LLM stages per precision and their ratios to fp32."""
    cfg = MAIN_JOB
    load_before = os.getloadavg()
    native_bf16 = cpu_has_native_bf16()
    rows, runs = [], []
    ref = None
    for precision in ("fp32", "nf4", "bf16"):
        if precision == "bf16" and not native_bf16:
            rows.append({"precision": "bf16", "skipped": "no avx512_bf16"})
            continue
        run = setup_main_job(precision, ref)
        if precision == "fp32":
            ref = {"grad": run["grad"], "item_states": run["item_states"]}
        run["encode"]()  # warm-up
        run["train_step"]()
        run["times"] = {"encode_s": [], "train_step_s": []}
        runs.append(run)
        rows.append(run["row"])
    # interleaved: every repetition times each precision once, so a change in the machine's load
    # (shared CPU) hits all precisions alike instead of whichever block ran at the time
    for _ in range(reps):
        for run in runs:
            for stage in ("encode", "train_step"):
                t = time.perf_counter()
                run[stage]()
                run["times"][stage + "_s"].append(time.perf_counter() - t)
    for run in runs:
        for key, values in run["times"].items():
            run["row"][key] = statistics.median(values)
            run["row"][key[:-2] + "_each_s"] = [round(v, 3) for v in values]
        if runs[0] is not run:  # ratio to fp32 within each repetition (paired), then the median
            for key in ("encode_s", "train_step_s"):
                paired = [a / b for a, b in zip(run["times"][key], runs[0]["times"][key])]
                run["row"][key[:-2] + "_ratio_vs_fp32"] = statistics.median(paired)
                run["row"][key[:-2] + "_ratio_range"] = [round(min(paired), 2), round(max(paired), 2)]
        print(json.dumps(run["row"]), flush=True)
    print(f"\nmain job stages: {cfg['name']}, first {cfg['max_layers']} layers; encode = no grad, "
          f"{cfg['item_batch']} x {cfg['item_tokens']} tokens; train step = {cfg['user_batch']} x "
          f"{cfg['user_tokens']} + {cfg['user_batch']} x {cfg['item_tokens']} tokens, P={cfg['prefix']}, "
          f"forward + backward + Adam; medians of {reps} interleaved repetitions after a warm-up; torch threads {threads}")
    print(f"machine load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; native bf16 (avx512_bf16): {native_bf16}\n")
    header = (f"{'precision':9} {'layers':6} {'weight MB':>9} {'encode s':>9} {'train s':>8} "
              f"{'trains':>6} {'grad cos':>8} {'state cos':>9}")
    print(header)
    print("-" * len(header))
    fp32 = rows[0]
    for r in rows:
        if "skipped" in r:
            print(f"{r['precision']:9} skipped: {r['skipped']}")
            continue
        print(f"{r['precision']:9} {r['layers']:6} {r['weight_MB']:9.1f} {r['encode_s']:9.2f} {r['train_step_s']:8.2f} "
              f"{str(r['trains']):>6} {r.get('grad_cos_vs_fp32', 1.0):8.3f} {r.get('item_state_cos_vs_fp32', 1.0):9.3f}")
    print()
    for r in rows[1:]:
        if "skipped" in r:
            continue
        print(f"{r['precision']}/fp32 (median of per-repetition ratios, range): "
              f"encode {r['encode_ratio_vs_fp32']:.2f}x {r['encode_ratio_range']}, "
              f"train step {r['train_step_ratio_vs_fp32']:.2f}x {r['train_step_ratio_range']}, "
              f"weight bytes {r['weight_MB'] / fp32['weight_MB']:.3f}")
    ok = [r for r in rows if "skipped" not in r and r["trains"]]
    if ok:
        best = min(ok, key=lambda r: r["train_step_s"] + r["encode_s"])
        print(f"fastest precision that trains (train step + encode): {best['precision']}")
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median), after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="SmolLM2 NF4/fp32 at 8 layers + MiniLM only, 1 rep")
    ap.add_argument("--main-job", action="store_true",
                    help="only the main job's LLM stages (SmolLM2, 6 layers) in fp32 / NF4 / bf16")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.main_job:
        rows = main_job(args.reps, args.threads)
        if args.json:
            from rarec_lite.files import atomic_write_json

            atomic_write_json(args.json, rows)
        return

    configs = [
        ("smollm2-135m", "nf4", None),
        ("smollm2-135m", None, None),
        ("smollm2-135m", "nf4", 8),
        ("smollm2-135m", None, 8),
        ("minilm", None, None),
        ("minilm", "nf4", None),
    ]
    reps = args.reps
    if args.quick:
        configs = [c for c in configs if c[0] == "minilm" or c[2] == 8]
        reps = 1
    load_before = os.getloadavg()
    rows = []
    for name, q, k in configs:
        row = measure(name, q, k, reps)
        rows.append(row)
        print(json.dumps(row), flush=True)

    print(f"\nbatch {BATCH} x {SEQ} tokens, prefix P={PREFIX} per layer, torch threads {args.threads}, "
          f"RAREC_HOME={paths.home()}")
    print(f"machine load average (1 min) before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores: other processes slow every row alike only if it stays flat\n")
    header = f"{'model':14} {'quant':6} {'layers':7} {'weight MB':>10} {'load s':>8} {'cached':>6} {'forward s':>10} {'train step s':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:14} {r['quantization']:6} {r['layers']:7} {r['weight_MB']:10.1f} {r['load_s']:8.1f} "
              f"{str(r['cached']):>6} {r['forward_s']:10.2f} {r['train_step_s']:13.2f}")

    def find(model, q, layers_prefix):
        for r in rows:
            if r["model"] == model and r["quantization"] == q and r["layers"].startswith(layers_prefix):
                return r
        return None

    print()
    for model, layers in (("smollm2-135m", "30/"), ("smollm2-135m", "8/"), ("minilm", "6/")):
        a, b = find(model, "nf4", layers), find(model, "fp32", layers)
        if a and b:
            print(f"{model} {layers[:-1]} layers: NF4/fp32 weight bytes {a['weight_MB'] / b['weight_MB']:.3f}, "
                  f"forward time {a['forward_s'] / b['forward_s']:.2f}x, train step {a['train_step_s'] / b['train_step_s']:.2f}x")
    for q in ("fp32", "nf4"):
        a, b = find("smollm2-135m", q, "8/"), find("smollm2-135m", q, "30/")
        if a and b:
            print(f"smollm2-135m {q}: forward 8/30 layers {a['forward_s'] / b['forward_s']:.2f}x, "
                  f"train step {a['train_step_s'] / b['train_step_s']:.2f}x")
    if args.json:
        from rarec_lite.files import atomic_write_json

        atomic_write_json(args.json, rows)


if __name__ == "__main__":
    main()
