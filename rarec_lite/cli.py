"""The ``rarec-lite`` command (also ``python -m rarec_lite``).

Each sub-command is a thin wrapper over one module of the package, so that what a
notebook does and what the command does are the same code.
"""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_prepare(args: argparse.Namespace) -> int:
    """``rarec-lite prepare``: :func:`rarec_lite.data.prepare`, then print its stats."""
    import time

    from . import data, paths

    start = time.perf_counter()
    stats = data.prepare(
        args.dataset, raw_dir=args.raw_dir, out_dir=args.out, force=args.force, skip_bad_lines=args.skip_bad_lines
    )
    seconds = time.perf_counter() - start
    out = args.out or paths.processed_dir(stats["dataset"])
    seq, pop, cov = stats["sequence_length"], stats["item_popularity"], stats["text_coverage"]
    pct = lambda n: f"{n:,} ({100.0 * n / max(cov['items'], 1):.1f}%)"  # noqa: E731
    action = "reused the cache (inputs unchanged)" if stats.get("cache") == "reused" else "built"
    lines = [
        f"{stats['dataset']} ({data.label(stats['dataset'])}): {action} in {seconds:.1f} s -> {out}",
        f"  source        {stats['source_format']} in {stats['source_dir']}",
        f"  users         {stats['users']:,}",
        f"  items         {stats['items']:,}",
        f"  interactions  {stats['interactions']:,}  (density {stats['density']:.6f})",
        f"  seq. length   min {seq['min']}  median {seq['median']:g}  mean {seq['mean']:.2f}  "
        f"p90 {seq['percentiles']['p90']:g}  p99 {seq['percentiles']['p99']:g}  max {seq['max']}",
        f"  item counts   min {pop['min']}  median {pop['median']:g}  max {pop['max']}  "
        f"Gini {pop['gini']:.3f}  top-1% items {100 * pop['top1pct_share']:.1f}% of interactions",
        f"  item text     title {pct(cov['title'])}  brand {pct(cov['brand'])}  categories {pct(cov['categories'])}",
        "  text from     " + "  ".join(f"{k} {v:,}" for k, v in cov["text_from"].items()),
    ]
    if "distinct_texts" in cov:
        lines.append(f"  shared text   distinct texts {cov['distinct_texts']:,} of {cov['items']:,} items; "
                     f"{pct(cov['items_sharing_text'])} share their text with another item "
                     f"(largest group {cov['largest_text_group']:,})")
    skipped = {k: v for k, v in stats.get("bad_lines_skipped", {}).items() if v}
    if skipped:
        lines.append("  bad lines     skipped " + ", ".join(f"{k}: {v}" for k, v in skipped.items()))
    print("\n".join(lines))
    return 0


#: ``--help`` text of each :class:`rarec_lite.sasrec.SASRecConfig` field (the defaults come from the class).
SASREC_HELP = {
    "hidden": "embedding and state size d",
    "max_len": "longest history read (older items are dropped)",
    "num_layers": "Transformer blocks",
    "num_heads": "attention heads",
    "dropout": "dropout on embeddings, attention weights and residual branches",
    "lr": "peak learning rate (AdamW)",
    "weight_decay": "AdamW decoupled weight decay",
    "warmup_steps": "optimizer steps of linear learning-rate warm-up",
    "lr_schedule": "'constant' or 'cosine' (to 0 at the last epoch) after the warm-up",
    "batch_size": "training sequences per step",
    "epochs": "the most epochs; with --lr-schedule cosine also the schedule's length (the rate reaches 0 at the "
              "last one), so the best epoch is usually one of the last; early stopping may end sooner",
    "patience": "stop after this many epochs without a better validation NDCG@10; the best epoch is kept",
    "seed": "shuffling, dropout and negatives",
    "loss": "'ce' full-catalogue softmax, 'sampled' sampled softmax over --sampled-negatives shared items "
            "(logQ-corrected), 'gbce' gSASRec's calibrated BCE with --num-negatives, 'bce', 'bpr'",
    "num_negatives": "negatives per position for --loss gbce",
    "sampled_negatives": "negatives shared by each batch for --loss sampled (uniform draw, logQ correction)",
    "gbce_t": "gBCE calibration t in [0, 1] (0 = plain BCE)",
    "label_smoothing": "label smoothing eps of --loss ce (1 - eps on the target, eps / I on every item)",
    "contrastive": "weight lambda of DuoRec's contrastive term (InfoNCE between two views of each sequence's last "
                   "state, in-batch negatives; the views: --contrastive-positive; 0 = off)",
    "contrastive_temperature": "temperature of the contrastive InfoNCE (dot-product similarity)",
    "contrastive_positive": "the contrastive positive: 'dropout' (a second dropout pass of the same sequence) or "
                            "'same_target' (another training sequence with the same last target)",
    "similarity": "'dot' (state . item embedding) or 'cosine' (both L2-normalised, divided by --temperature)",
    "temperature": "temperature tau of --similarity cosine (scores are cos / tau); unused by --similarity dot, "
                   "but always checked to be a finite number >= 1e-6",
    "ema_decay": "0 = off, else the decay of an exponential moving average of the weights (updated every step), "
                 "which is validated, early-stopped and exported",
    "eval_batch_size": "users per full-ranking evaluation batch",
}


def _cmd_train_sasrec(args: argparse.Namespace) -> int:
    """``rarec-lite train-sasrec``: :func:`rarec_lite.sasrec.cached_sasrec_run` (or ``train_sasrec`` into ``--out``)."""
    import dataclasses
    from pathlib import Path

    from rarec_lite.baselines import MostPop
    from rarec_lite.data import label, load_dataset
    from rarec_lite.metrics import evaluate, format_metrics
    from rarec_lite.sasrec import SASRecConfig, cached_sasrec_run, check_config, train_sasrec

    cfg = {f.name: getattr(args, f.name) for f in dataclasses.fields(SASRecConfig)}
    check_config(cfg)  # a bad value fails here, before the data is read
    dataset = load_dataset(args.dataset)
    schedule = (f"the learning rate decays to 0 over them (--lr-schedule {args.lr_schedule})"
                if args.lr_schedule == "cosine" else f"constant learning rate (--lr-schedule {args.lr_schedule})")
    print(f"train-sasrec on {args.dataset} ({dataset.num_users:,} users, {dataset.num_items:,} items): up to "
          f"{args.epochs} epochs (--epochs), {schedule}, stopping early after {args.patience} epochs without a "
          f"better validation NDCG@10 (--patience); the best epoch is kept. One line per finished epoch; a finished "
          "run with the same data and settings is reused, and Ctrl-C then the same command resumes.", flush=True)
    if args.out:
        run = train_sasrec(dataset, Path(args.out), **cfg)
    else:  # the shared cache: the pipeline and the notebooks reuse this run when they ask for the same model
        run = cached_sasrec_run(dataset, **cfg)
    out = run.out_dir
    split = dataset.split()
    pop = MostPop().fit(split.train, dataset.num_items)
    pop_test = evaluate(pop.score, split.test_history, split.test_target, dataset.num_items)
    m = run.metrics
    print(f"\n{dataset.name} ({label(dataset.name)}): {dataset.num_users} users, {dataset.num_items} items; "
          f"{m['epochs']} epochs (best {m['best_epoch']}), {m['train_seconds']:.0f} s of training"
          + (" (reused)" if run.reused else ""))
    print("validation NDCG@10 by epoch: " + "  ".join(f"{h['epoch']}:{h['valid_ndcg10']:.4f}" for h in m["history"]))
    print(format_metrics({"SASRec (valid)": run.valid, "SASRec (test)": run.test, "MostPop (test)": pop_test}))
    print(f"\nwritten to {out}:")
    for name in ("model.safetensors", "item_embeddings.safetensors", "user_embeddings.safetensors",
                 "ranks.safetensors", "metrics.json", "checkpoint.safetensors"):
        if (out / name).exists():
            print(f"  {out / name}")
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    from rarec_lite.pipeline import run_pipeline

    add = [m.strip() for m in args.add_methods.split(",") if m.strip()] if args.add_methods is not None else None
    result = run_pipeline(args.config, out=args.out, add_methods=add, dataset=args.dataset)
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch / torchrun: once
        print(f"metrics: {result['results_dir']}/metrics.json")
    return 0


DATASET_HELP = ("a category of the 2014/2018/2023 Amazon releases: a short alias (cloth, beauty, sports, toys, "
                "scientific, instruments, book, ...) or the release's own name (Industrial_and_Scientific); "
                "list: rarec_lite/data/categories.tsv")


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` ends each option's line with ``(default: X)``, unless the help text already says
    what its default is (a default that is computed, such as ``$RAREC_HOME/...``) or it is an off
    switch (``store_true``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from rarec_lite import __version__

    defaults = _HelpWithDefaults  # every --help shows each option's default
    parser = argparse.ArgumentParser(
        prog="rarec-lite", formatter_class=defaults,
        description="RA-Rec course: data, SASRec, LLM backbones and the three paradigms.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read raw Amazon files and write a processed, leave-one-out dataset",
                       formatter_class=defaults)
    p.add_argument("--dataset", default="cloth", help=DATASET_HELP + " (default: cloth)")
    p.add_argument("--raw-dir", default=None, help="raw files or a mirror (default: $RAREC_MIRROR, then the download dir)")
    p.add_argument("--out", default=None, help="output dir (default: $RAREC_HOME/processed/<dataset key>)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cache matches the inputs")
    p.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines instead of failing")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("train-sasrec", help="train the SASRec ID encoder and export its embeddings",
                       formatter_class=defaults,
                       description="Train SASRec on split.train (s[:-2]), early-stop on the validation items "
                                   "(s[-2]), test on s[-1], full ranking over all items with the history masked. "
                                   "The defaults are rarec_lite.sasrec.SASRecConfig, the best measured on Clothing.")
    p.add_argument("--dataset", default="cloth", help=DATASET_HELP)
    p.add_argument("--out", default=None,
                   help="run dir (default: the shared cache $RAREC_HOME/runs/sasrec-DATASET-<data hash>-<config hash>)")
    from dataclasses import fields

    from rarec_lite.sasrec import CONTRASTIVE_POSITIVES, LOSSES, LR_SCHEDULES, SIMILARITIES, SASRecConfig

    choices = {"loss": LOSSES, "lr_schedule": LR_SCHEDULES, "contrastive_positive": CONTRASTIVE_POSITIVES,
               "similarity": SIMILARITIES}
    for f in fields(SASRecConfig):
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=type(f.default), default=f.default,
                       choices=choices.get(f.name), help=SASREC_HELP.get(f.name, f.name))
    p.set_defaults(func=_cmd_train_sasrec)

    p = sub.add_parser("pipeline", help="prepare, SASRec, every paradigm and the evaluation, resumable",
                       formatter_class=defaults)
    p.add_argument("--config", default="cpu-quick", help="a name in configs/ (e.g. cpu-quick) or a path to a .toml")
    p.add_argument("--out", default=".", help="results go to OUT/results/<config name>/ "
                                              "(OUT/results/<config name>-<dataset>/ with --dataset)")
    p.add_argument("--dataset", default=None,
                   help=DATASET_HELP + ". Default: the config's [data] dataset. The config keeps its sizes; its "
                        "[budgets.<dataset>] token budgets apply when it has them")
    p.add_argument("--add-methods", default=None, metavar="M1,M2",
                   help="comma-separated methods to run after the config's own (finished ones are reused), "
                        "e.g. the RA-Rec ablations (rarec_no_infonce, rarec_no_instruction, rarec_joint) or "
                        "late_fusion on a finished run (default: only the config's own)")
    p.set_defaults(func=_cmd_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\nrarec-lite {args.command}: interrupted; finished stages are saved, run the same "
              "command again to resume", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as exc:  # OSError covers FileNotFoundError, NotADirectoryError, ...
        print(f"rarec-lite {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
