"""Catalogue encoding in 1 process vs N data-parallel processes, measured in one run on this machine.

    .venv/bin/python bench/bench_distributed.py                         # SmolLM2 (6 layers, fp32), 2,048 items
    .venv/bin/python bench/bench_distributed.py --items 0 --device cuda  # a multi-GPU box: the whole catalogue
    .venv/bin/python bench/bench_distributed.py --model tiny-llama      # seconds: checks the plumbing only

What it times is the pipeline's own code: :meth:`rarec_lite.alignment.TwoTower.encode_batched` of the
item text prompts (text only, every layer's pooled state, as ``Experiment.item_text_states``), once in
one process and once in each ``--processes`` count. The processes are started with
``torch.multiprocessing`` and join a ``torch.distributed`` group exactly as under ``accelerate launch``
(environment ``RANK``/``WORLD_SIZE``/``MASTER_*``, :func:`rarec_lite.distributed.init`: gloo on CPUs,
NCCL with one GPU per process). Each process loads its own copy of the model (not timed); the timed
span runs from a barrier before the encoding to a barrier after the gather, so it is the wall time
of the slowest rank including the gather. The script also checks that every count gathers exactly
the single-process states (``identical``).

On a CPU the processes share the cores: ``--threads`` per process defaults to the cores divided
by the processes, so every row uses the whole machine; expect little gain on 2 cores. On GPUs each
process has its own device and the speed-up is what data parallelism buys.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_cloth"


def item_prompts(n: int) -> tuple[list[str], str]:
    """The item text prompts of real Clothing (``RAREC_MIRROR`` or ``../shared/data``), else the toy data's;
    the first ``n`` items (all when ``n`` is 0)."""
    from rarec_lite import prompts
    from rarec_lite.data import load_dataset

    try:
        raw = SHARED if (SHARED / "user_sequence.txt").exists() and not os.environ.get("RAREC_MIRROR") else None
        ds, what = load_dataset("cloth", raw_dir=raw), "real Clothing"
    except FileNotFoundError:
        ds, what = load_dataset("toy"), "the synthetic toy data (real Clothing not found)"
    texts = [prompts.item_text_prompt(t).text for t in ds.item_text]
    return (texts[:n] if n else texts), what


def encode(args, texts: list[str]) -> tuple[float, torch.Tensor, torch.Tensor, dict]:
    """Load the model, then time one sharded catalogue encoding: ``(seconds, final (I, H), layers (I, L, H),
    texts this rank encoded)``."""
    from rarec_lite import distributed
    from rarec_lite.alignment import TwoTower
    from rarec_lite.llm import load_backbone

    quant = None if args.quantization in ("none", "fp32") else args.quantization
    with distributed.main_first():
        backbone = load_backbone(args.model, quantization=quant, device=args.device, max_layers=args.max_layers or None)
    tower = TwoTower(backbone, None, "mean")
    distributed.ENCODED.clear()
    distributed.barrier()
    t0 = time.perf_counter()
    final, layers = tower.encode_batched(texts, "item", None, args.batch_size, args.max_tokens, per_layer=True,
                                         use_prefix=False, progress=False)
    distributed.barrier()
    return time.perf_counter() - t0, final, layers, dict(distributed.ENCODED)


def _rank(rank: int, size: int, port: int, args, texts: list[str], out: str) -> None:
    from rarec_lite import distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // size))
    distributed.init(timeout_minutes=30)
    try:
        seconds, final, layers, counts = encode(args, texts)
        counts = distributed.gather_objects(counts)
        if rank == 0:
            torch.save({"seconds": seconds, "final": final, "layers": layers, "counts": counts},
                       Path(out) / f"world{size}.pt")
    finally:
        distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max-layers", type=int, default=6, help="first layers only (0 = all; cpu-quick uses 6)")
    p.add_argument("--quantization", default="none", help="none, nf4 or int8")
    p.add_argument("--device", default="cpu")
    p.add_argument("--items", type=int, default=2048, help="first items of the catalogue (0 = all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--processes", default="2", help="comma-separated process counts to compare with 1")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0 = cores / processes)")
    args = p.parse_args()
    import torch.multiprocessing as mp

    texts, what = item_prompts(args.items)
    counts = [1] + [int(c) for c in args.processes.split(",") if int(c) > 1]
    print(f"{len(texts):,} item prompts of {what}; {args.model} ({args.max_layers or 'all'} layers, "
          f"{args.quantization}) on {args.device}, batches of {args.batch_size} x <= {args.max_tokens} tokens; "
          f"{os.cpu_count()} CPU cores", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as out:
        for size in counts:  # every count in its own processes, so each loads the model the same way
            mp.start_processes(_rank, args=(size, _free_port(), args, texts, out), nprocs=size, start_method="spawn")
            results[size] = torch.load(Path(out) / f"world{size}.pt", weights_only=False)
            r = results[size]
            print(f"  {size} process(es) x {args.threads or max(1, (os.cpu_count() or 1) // size)} thread(s): "
                  f"{r['seconds']:.2f} s, {len(texts) / r['seconds']:.1f} items/s; texts per rank "
                  f"{[c.get('item', 0) for c in r['counts']]}", flush=True)
    base = results[1]
    print("\n| processes | seconds | items/s | speed-up vs 1 | identical to 1 process |\n|---:|---:|---:|---:|---|")
    for size, r in results.items():
        same = torch.equal(r["final"], base["final"]) and torch.equal(r["layers"], base["layers"])
        diff = float((r["final"] - base["final"]).abs().max() / base["final"].abs().max())
        print(f"| {size} | {r['seconds']:.2f} | {len(texts) / r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x "
              f"| {'yes (bit for bit)' if same else f'no: max |diff| {diff:.1e} of max |state|'} |")
    if any(not torch.equal(r["final"], base["final"]) for r in results.values()):
        print("\nNot bit-identical: the processes ran with other thread counts than the single one, and a BLAS "
              "splits a matmul's sum by thread; with the same --threads everywhere they are identical.")


if __name__ == "__main__":
    main()
