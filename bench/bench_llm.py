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
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from rarec_lite import paths
from rarec_lite.llm import load_backbone
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median), after one warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--quick", action="store_true", help="SmolLM2 NF4/fp32 at 8 layers + MiniLM only, 1 rep")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

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
