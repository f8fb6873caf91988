"""One prepared GPU check: load, forward, train and a reduced ``gpu-t4`` run, measured in one call.

    python scripts/gpu_check.py                       # on one GPU: <= 8 minutes (--budget-s 480)
    python scripts/gpu_check.py --models Qwen/Qwen2.5-0.5B-Instruct   # + hub models (needs the network)
    python scripts/gpu_check.py --tiny                # the CPU smoke version the test suite runs

What it measures, each stage in this process, one after the other (``torch.cuda.max_memory_allocated``
reset before each stage, so every peak is that stage's own):

1. ``load``: every model (the offline SmolLM2-135M with all 30 layers, then any ``--models``) in NF4
   (bitsandbytes, bf16 compute on compute capability >= 8, else fp16), in fp32, and in 16 bits (the
   fp32 load cast to bf16/fp16): load seconds, weight bytes, peak memory.
2. ``forward``: frozen forward passes of a batch of item prompts with each loaded model: real
   (non-padding) tokens per second, the median of ``--repeats`` timed passes after one warm-up.
3. ``pipeline``: the ``gpu-t4`` config through :func:`rarec_lite.pipeline.run_pipeline`, the same code
   path as the full run, made smaller: a user slice of the real Clothing (``$RAREC_MIRROR`` or
   ``../shared/data``, found as the notebooks find it), fewer SASRec epochs, evaluation users,
   alignment samples and steps, SmolLM2 instead of the (hub-only) Llama-3.2-1B, and four methods
   (MostPop, SASRec, zero-shot ID Translation, RA-Rec). RA-Rec's training steps per second come from
   its ``train_seconds``.

A stage that would start after ``--budget-s`` seconds is skipped and says so; a stage that fails
records its error and the others still run. Output: a table on stdout and ``--out`` (JSON: one
record per stage, with the machine, the versions and the settings used).

``--tiny`` runs the same stages on the CPU with the tiny random LLaMA (fp32 and NF4; no 16-bit cast),
the synthetic toy data and a few steps, in well under a minute: ``tests/test_gpu_check.py`` runs it,
so the script cannot rot while no GPU is at hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

PROMPTS = [
    "Brand: Levi's. Categories: Clothing, Shoes & Jewelry > Men > Clothing > Jeans.",
    "Brand: Skechers. Categories: Clothing, Shoes & Jewelry > Women > Shoes > Fashion Sneakers.",
    "Brand: Casio. Categories: Clothing, Shoes & Jewelry > Men > Watches > Wrist Watches.",
    "Brand: Hanes. Categories: Clothing, Shoes & Jewelry > Women > Clothing > Socks & Hosiery.",
]


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> int | None:
    """Bytes: the stage's peak CUDA memory (``None`` on a CPU: no comparable per-stage number)."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def forward_tokens_per_second(bb, batch_size: int, repeats: int) -> dict:
    """Frozen forward passes of ``batch_size`` item prompts: real tokens per second (median of ``repeats``).

    Returns:
        ``{"tokens_per_pass", "seconds_per_pass" (list), "tokens_per_second"}``.
    """
    import torch

    device = bb.info.device
    texts = [PROMPTS[i % len(PROMPTS)] for i in range(batch_size)]
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    tokens = int(mask.sum())
    times = []
    with torch.no_grad():
        for k in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            bb.model(input_ids=ids, attention_mask=mask)
            _sync(device)
            if k:  # the first pass warms up kernels and caches
                times.append(time.perf_counter() - t0)
    return {"tokens_per_pass": tokens, "seconds_per_pass": times,
            "tokens_per_second": tokens / statistics.median(times)}


def pipeline_config(tiny: bool, users: int, eval_users: int, steps: int, model: str) -> dict:
    """The ``gpu-t4`` config made small (``--tiny``: ``ci-tiny`` on the toy data), one code path with the real run."""
    from rarec_lite import pipeline

    conf = pipeline.load_config("ci-tiny" if tiny else "gpu-t4")
    conf["name"] = "gpu-check-tiny" if tiny else "gpu-check"
    conf["description"] = f"scripts/gpu_check.py: {conf['description']}, reduced"
    conf["data"].update(dataset="toy" if tiny else "cloth", max_users=users)
    conf["eval"].update(num_users=eval_users, bootstrap_resamples=100)
    conf["sasrec"]["epochs"] = 1 if tiny else 3
    conf["llm"]["name"] = model
    conf["train"].update(steps=steps, samples=max(2 * steps * conf["train"]["batch_size"] // 4, 16),
                         negatives=min(conf["train"]["negatives"], 256))
    conf["methods"]["run"] = ["mostpop", "sasrec", "id_translation", "rarec"]
    return conf


def run_check(args) -> dict:
    """Run every stage; return the report (also written to ``args.out``)."""
    import torch

    import rarec_lite
    from rarec_lite import course, llm

    start = time.perf_counter()
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU is visible; run with --tiny for the CPU smoke version")
    machine = {"python": platform.python_version(), "torch": torch.__version__, "rarec_lite": rarec_lite.__version__,
               "device": device, "cpu_count": os.cpu_count()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        machine.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                       compute_capability=f"{props.major}.{props.minor}",
                       nf4_compute_dtype=str(llm.compute_dtype_for("cuda", "nf4")).replace("torch.", ""))
    for lib in ("transformers", "bitsandbytes"):
        try:
            machine[lib] = __import__(lib).__version__
        except ImportError:
            machine[lib] = None
    report = {"tiny": args.tiny, "machine": machine, "budget_s": args.budget_s, "stages": []}

    def stage(name: str, fn, **facts):
        if time.perf_counter() - start > args.budget_s:
            report["stages"].append({"stage": name, **facts, "skipped": f"time budget of {args.budget_s} s spent"})
            return None
        _reset_peak(device)
        t0 = time.perf_counter()
        try:
            out = fn()
            row = {"stage": name, **facts, **(out or {}), "seconds": time.perf_counter() - t0, "peak_bytes": _peak(device)}
        except Exception as exc:  # one failed stage must not hide the others' numbers
            row = {"stage": name, **facts, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=4), "seconds": time.perf_counter() - t0}
            out = None
        report["stages"].append(row)
        print(_format_row(row), flush=True)
        return out

    models = ["tiny-llama"] if args.tiny else [llm.SMOLLM2_NAME, *args.models]
    precisions = [("nf4", None), ("fp32", None)] if args.tiny else [("nf4", None), ("fp32", None), ("16-bit", "cast")]
    for model in models:
        for precision, how in precisions:
            holder = {}

            def load(model=model, precision=precision, how=how):
                bb = llm.load_backbone(model, quantization="nf4" if precision == "nf4" else None, device=device)
                if how == "cast":  # fp32 load cast to the GPU's 16-bit dtype: what "no quantization" costs in 16 bits
                    dtype = torch.bfloat16 if llm.gpu_has_native_bf16(device) else torch.float16
                    bb.model.to(dtype)
                    bb.info.compute_dtype = str(dtype).replace("torch.", "")
                    bb.info.weight_bytes = sum(p.numel() * p.element_size() for p in bb.model.parameters())
                holder["bb"] = bb
                i = bb.info
                return {"layers": i.num_layers, "weight_bytes": i.weight_bytes, "compute_dtype": i.compute_dtype,
                        "load_seconds": i.load_seconds}

            stage("load", load, model=model, precision=precision)
            if "bb" in holder:
                stage("forward", lambda: forward_tokens_per_second(holder["bb"], args.batch_size, args.repeats),
                      model=model, precision=precision, batch_size=args.batch_size)
            holder.clear()

    def pipeline_stage():
        from rarec_lite.pipeline import run_pipeline

        conf = pipeline_config(args.tiny, args.users, args.eval_users, args.steps,
                               "tiny-llama" if args.tiny else llm.SMOLLM2_NAME)
        before = os.environ.get("RAREC_MIRROR")
        if not args.tiny:
            raw, origin = course.locate_raw("cloth")
            if raw is None:
                raise FileNotFoundError(f"no real Clothing for the pipeline stage ({origin}): set RAREC_MIRROR")
            os.environ["RAREC_MIRROR"] = str(raw)
        try:
            with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
                result = run_pipeline(conf, out=args.work or tmp, progress=False)
        finally:
            if before is None:
                os.environ.pop("RAREC_MIRROR", None)
            else:
                os.environ["RAREC_MIRROR"] = before
        methods = {name: {k: e.get(k) for k in ("HR@10", "HR@100", "NDCG@10", "train_seconds", "eval_seconds", "users")}
                   for name, e in result["methods"].items()}
        rarec = result["methods"]["rarec"]
        steps = conf["train"]["steps"]
        return {"settings": {k: conf[k] for k in ("data", "eval", "llm", "train", "methods")}, "methods": methods,
                "rarec_train_steps": steps, "rarec_steps_per_second": steps / max(rarec["train_seconds"], 1e-9)}

    stage("pipeline", pipeline_stage, config="ci-tiny (toy data), reduced" if args.tiny else "gpu-t4, reduced")
    report["total_seconds"] = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{len(report['stages'])} stages in {report['total_seconds']:.0f} s on {machine.get('gpu', device)}; "
          f"written to {out}")
    return report


def _format_row(row: dict) -> str:
    """One printed line per stage: what, the key number, seconds, peak memory (MiB)."""
    what = " ".join(str(row[k]) for k in ("stage", "model", "precision", "config") if k in row)
    if "skipped" in row:
        return f"{what:48s} skipped: {row['skipped']}"
    if "error" in row:
        return f"{what:48s} FAILED: {row['error']}"
    peak = f"{row['peak_bytes'] / 2**20:9.1f} MiB peak" if row.get("peak_bytes") is not None else "        (CPU: no peak)"
    if row["stage"] == "load":
        key = f"{row['weight_bytes'] / 2**20:9.1f} MiB weights, {row['layers']} layers, {row['compute_dtype']}"
    elif row["stage"] == "forward":
        key = f"{row['tokens_per_second']:12,.0f} tokens/s"
    else:
        r = row["methods"].get("rarec", {})
        key = f"RA-Rec {row['rarec_steps_per_second']:.2f} steps/s, HR@100 {r.get('HR@100', float('nan')):.4f}"
    return f"{what:48s} {key:44s} {row['seconds']:7.1f} s {peak}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke version: tiny random model, toy data, few steps")
    parser.add_argument("--models", nargs="*", default=[], help="hub ids or local dirs to load after SmolLM2")
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no stage after this many seconds")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per forward pass (default: 64, tiny 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed forward passes (default: 10, tiny 2)")
    parser.add_argument("--users", type=int, default=None, help="pipeline: user slice (default: 4000, tiny 60)")
    parser.add_argument("--eval-users", type=int, default=None, help="pipeline: test users (default: 500, tiny 20)")
    parser.add_argument("--steps", type=int, default=None, help="pipeline: RA-Rec steps (default: 100, tiny 2)")
    parser.add_argument("--work", default=None, help="pipeline results dir (default: a temporary dir)")
    parser.add_argument("--out", default=str(REPO / "results" / "gpu-check" / "gpu_check.json"), help="JSON report")
    args = parser.parse_args(argv)
    for name, full, tiny in (("batch_size", 64, 4), ("repeats", 10, 2), ("users", 4000, 60), ("eval_users", 500, 20),
                             ("steps", 100, 2)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return run_check(args)


if __name__ == "__main__":
    main()
