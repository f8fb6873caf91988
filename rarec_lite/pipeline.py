"""The end-to-end comparison behind ``rarec-lite pipeline --config NAME``.

One split, one yardstick, every paradigm:

1. **data**: the leave-one-out dataset (:mod:`rarec_lite.data`);
2. **SASRec**: the frozen ID encoder, trained once (:mod:`rarec_lite.sasrec`);
3. **evaluation users**: a fixed, seeded sample of test users, each ranked against the whole
   catalogue with their own history masked out (full ranking, :mod:`rarec_lite.metrics`);
4. **methods**: MostPop and SASRec; ID Direct and ID Translation zero-shot (the frozen LLM as
   two towers, no training); the same with a prefix-tuning budget but no IDs (``*_prefix``, the
   paper's "without ID representation" ablation); RA-Rec; RA-Rec ablations;
5. **report**: ``metrics.json`` (one entry per method), ``report.md`` (the table, paired
   bootstrap CIs against SASRec, efficiency columns) and figures.

Every stage writes its result atomically under ``OUT/results/<config name>/`` and is skipped
when that result already exists, so an interrupted run resumes where it stopped (training
resumes from its own checkpoint too). Delete a method's ``methods/<name>.json`` to rerun it.

Source: RA-Rec (Yu et al. 2024, arXiv 2402.04527), Sec. 4 (experimental protocol: leave-one-out,
full ranking, HR@K / NDCG@K), Table 3 (ablations).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import re
import resource
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rarec_lite import distributed
from rarec_lite.files import atomic_write_json, atomic_write_text, read_json

__all__ = ["METHODS", "Method", "Experiment", "load_config", "config_path", "run_pipeline", "format_report"]


# ------------------------------------------------------------------------------------ configs
def _sasrec_defaults() -> dict:
    """The ``[sasrec]`` defaults: the fields of :class:`rarec_lite.sasrec.SASRecConfig` but ``seed`` (top level)."""
    from dataclasses import asdict

    from rarec_lite.sasrec import SASRecConfig

    return {k: v for k, v in asdict(SASRecConfig()).items() if k != "seed"}


def _train_defaults() -> dict:
    """The ``[train]`` defaults: :class:`rarec_lite.train.TrainConfig`'s (``lambda_infonce`` is its
    ``lam``) plus the pipeline's own sample construction keys."""
    from rarec_lite.train import TrainConfig

    t = TrainConfig()
    own = {"samples": 4000, "samples_from": "valid", "max_per_user": 3, "denoise": True, "diversify": True,
           "num_buckets": 4}
    shared = {"steps": t.steps, "batch_size": t.batch_size, "lr": t.lr, "weight_decay": t.weight_decay,
              "lambda_infonce": t.lam, "temperature": t.temperature, "checkpoint_every": t.checkpoint_every,
              "rank_loss": t.rank_loss, "negatives": t.negatives, "score_scale": 0.0,
              "restandardize": t.restandardize, "stats_momentum": t.stats_momentum, "warmup": t.warmup,
              "schedule": t.schedule, "gate_lr_scale": t.gate_lr_scale, "gate_warmup": t.gate_warmup,
              "negative_sampling": t.negative_sampling}
    return {**own, **shared}


DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"dataset": "cloth", "max_users": 0, "synthetic_fallback": False, "raw_dir": ""},
    "sasrec": _sasrec_defaults(),  # SASRec's defaults live in one place: rarec_lite.sasrec.SASRecConfig
    "eval": {"num_users": 1000, "ks": [10, 20, 50, 100], "bootstrap_resamples": 1000, "batch_size": 256,
             "step0": True, "stats_users": 512},
    "llm": {"name": "smollm2-135m", "quantization": "nf4", "max_layers": 0, "batch_size": 64,
            "user_max_tokens": 64, "item_max_tokens": 24, "history_items": 3, "pooling": "",
            "standardize": False, "item_norm": True},
    "alignment": {"num_id_tokens": 1, "num_instruction_tokens": 4, "gate_init": -20.0, "tie_init": True,
                  "attention": "gated", "last_layer_gate": 0.15, "reparam_init": "isometric",
                  "instruction_softmax": "own", "user_statistics": "text"},
    "train": _train_defaults(),  # the training loop's defaults live in one place: rarec_lite.train.TrainConfig
    "methods": {"run": ["mostpop", "sasrec", "tfidf_knn", "id_direct", "id_translation", "id_translation_prefix",
                        "rarec"]},
}
TOP_LEVEL = {"name", "description", "seed", "budgets"}
BUDGET_KEYS = ("user_max_tokens", "item_max_tokens")
"""``[budgets.<dataset key>]`` may set these: the ``[llm]`` token budgets for that dataset (item titles need
more tokens than Clothing's breadcrumbs; README, "Token budgets")."""


def config_path(name_or_path: str | Path) -> Path:
    """Resolve ``cpu-quick`` to the packaged ``configs/cpu-quick.toml``, or accept a path.

    Raises:
        FileNotFoundError: neither a file nor a known config name (lists the known names).
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist" if not path.exists()
                                    else f"config {path} is a directory, not a .toml file")
        return path
    packaged = resources.files("rarec_lite") / "configs" / f"{name_or_path}.toml"
    if packaged.is_file():
        return Path(str(packaged))
    known = sorted(p.name[:-5] for p in (resources.files("rarec_lite") / "configs").iterdir()
                   if p.name.endswith(".toml"))
    raise FileNotFoundError(f"no config named {name_or_path!r}; known: {', '.join(known)} (or pass a .toml path)")


def _check_type(source: str, section: str, key: str, value: Any, default: Any) -> None:
    """A config value must have its default's type (an int is fine where a float is expected)."""
    expected = type(default)
    ok = (isinstance(value, bool) if expected is bool
          else isinstance(value, (int, float)) and not isinstance(value, bool) if expected is float
          else isinstance(value, expected) and not (expected is int and isinstance(value, bool)))
    if not ok:
        raise ValueError(f"{source}: [{section}] {key} = {value!r} must be {'an' if expected.__name__[0] in 'aeiou' else 'a'} {expected.__name__} "
                         f"(e.g. {key} = {json.dumps(default)})")


def load_config(name_or_path: str | Path | dict) -> dict:
    """Read a pipeline config (TOML) and fill in the defaults.

    Returns:
        a dict with the sections of :data:`DEFAULTS` plus ``name``, ``description``, ``seed``.

    Raises:
        FileNotFoundError: see :func:`config_path`.
        ValueError: malformed TOML (names the file and line), an unknown section or key
            (names it, with the file), or an unknown method name.
    """
    if isinstance(name_or_path, dict):
        raw, source = copy.deepcopy(name_or_path), "<dict>"
    else:
        path = config_path(name_or_path)
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: malformed TOML ({exc})") from exc
        raw.setdefault("name", path.stem)
    cfg: dict[str, Any] = {"name": raw.pop("name", "custom"), "description": raw.pop("description", ""),
                           "seed": raw.pop("seed", 0), "budgets": raw.pop("budgets", {})}
    _check_budgets(source, cfg["budgets"])
    for key, default in (("name", ""), ("description", ""), ("seed", 0)):
        _check_type(source, "top level", key, cfg[key], default)
    raw_train = dict(raw.get("train", {})) if isinstance(raw.get("train", {}), dict) else {}
    for section, defaults in DEFAULTS.items():
        given = raw.pop(section, {})
        if not isinstance(given, dict):
            raise ValueError(f"{source}: [{section}] must be a table")
        unknown = set(given) - set(defaults)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) in [{section}]: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(defaults)})")
        for key, value in given.items():
            _check_type(source, section, key, value, defaults[key])
        cfg[section] = {**defaults, **given}
    if raw:
        raise ValueError(f"{source}: unknown key(s) or section(s) {', '.join(sorted(raw))} "
                         f"(known: {', '.join(sorted(TOP_LEVEL | set(DEFAULTS)))})")
    bad = [m for m in cfg["methods"]["run"] if m not in METHODS]
    if bad:
        raise ValueError(f"{source}: unknown method(s) {bad} in [methods] run (known: {', '.join(METHODS)})")
    for section, key, allowed in CHOICES:
        value = cfg[section][key]
        if str(value).lower() not in allowed:
            raise ValueError(f"{source}: [{section}] {key} = {value!r} must be one of {', '.join(map(repr, allowed))}")
        cfg[section][key] = str(value).lower()  # "Isometric" means "isometric" everywhere the value is used
    for section, key, low in MINIMA:
        if cfg[section][key] < low:
            raise ValueError(f"{source}: [{section}] {key} = {cfg[section][key]!r} must be >= {low}")
    for section, key in POSITIVE:
        if not cfg[section][key] > 0:
            raise ValueError(f"{source}: [{section}] {key} = {cfg[section][key]!r} must be > 0")
    if not NAME_PATTERN.fullmatch(str(cfg["name"])):
        raise ValueError(f"{source}: name = {cfg['name']!r} must be letters, digits, '.', '_' or '-' (it names the "
                         f"folder OUT/results/<name>)")
    t = cfg["train"]
    if t["negative_sampling"] == "popularity" and t["rank_loss"] != "softmax":
        given = "" if "rank_loss" in raw_train else ", the default"
        raise ValueError(f"{source}: [train] negative_sampling = \"popularity\" needs rank_loss = \"softmax\" (its logQ "
                         f"correction is a softmax's; rank_loss is {t['rank_loss']!r}{given})")
    from rarec_lite.data import dataset_key

    try:
        cfg["data"]["dataset"] = dataset_key(cfg["data"]["dataset"])
    except ValueError as exc:
        raise ValueError(f"{source}: [data] dataset: {exc}") from exc
    return cfg


def _check_budgets(source: str, budgets: Any) -> None:
    """``[budgets.<dataset key>]`` tables of positive ``user_max_tokens`` / ``item_max_tokens``."""
    if not isinstance(budgets, dict):
        raise ValueError(f"{source}: [budgets] must be a table of [budgets.<dataset>] tables")
    for name, table in budgets.items():
        if not isinstance(table, dict):
            raise ValueError(f"{source}: [budgets.{name}] must be a table (keys: {', '.join(BUDGET_KEYS)})")
        unknown = set(table) - set(BUDGET_KEYS)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) in [budgets.{name}]: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(BUDGET_KEYS)})")
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{source}: [budgets.{name}] {key} = {value!r} must be a positive integer")


def for_dataset(cfg: dict, dataset: str | None) -> dict:
    """``cfg`` run on ``dataset`` (``--dataset``): ``[data] dataset`` set to its key and the
    ``[llm]`` budgets taken from ``[budgets.<key>]`` when the config has one. Every other size is
    the config's. ``dataset=None`` keeps the config's own dataset (its budgets apply too).

    Raises:
        ValueError: an unknown dataset name (with the closest names).
    """
    from rarec_lite.data import dataset_key

    cfg = copy.deepcopy(cfg)
    if dataset is not None:
        cfg["data"]["dataset"] = dataset_key(dataset)
    cfg["llm"].update(cfg.get("budgets", {}).get(cfg["data"]["dataset"], {}))
    return cfg


def results_dir(cfg: dict, out: str | Path, default_dataset: str | None = None) -> Path:
    """``OUT/results/<config name>`` for the config's own dataset, ``OUT/results/<config name>-<key>``
    for another one (so runs of one config on several datasets live side by side)."""
    own = default_dataset if default_dataset is not None else cfg["data"]["dataset"]
    suffix = "" if cfg["data"]["dataset"] == own else f"-{cfg['data']['dataset']}"
    return Path(out) / "results" / f"{cfg['name']}{suffix}"


CHOICES = [("llm", "pooling", ("", "last", "mean")), ("llm", "quantization", ("none", "", "fp32", "nf4", "int8", "bf16", "auto")),
           ("alignment", "attention", ("gated", "joint")),
           ("alignment", "reparam_init", ("random", "isometric")),
           ("alignment", "instruction_softmax", ("own", "shared")),
           ("alignment", "user_statistics", ("tower", "text")),
           ("train", "rank_loss", ("bpr", "softmax")), ("train", "schedule", ("cosine", "constant")),
           ("train", "negative_sampling", ("uniform", "popularity")),
           ("train", "samples_from", ("valid", "train"))]
"""Config values checked when the config is read (not hours later, when a stage first uses them)."""
MINIMA = [("train", "batch_size", 2), ("train", "steps", 1), ("train", "samples", 2), ("train", "negatives", 0),
          ("train", "score_scale", 0.0), ("eval", "num_users", 1), ("llm", "batch_size", 1),
          ("llm", "user_max_tokens", 1), ("llm", "item_max_tokens", 1), ("sasrec", "epochs", 1),
          ("llm", "max_layers", 0), ("llm", "history_items", 0), ("data", "max_users", 0),
          ("train", "weight_decay", 0.0), ("train", "lambda_infonce", 0.0)]
POSITIVE = [("train", "lr"), ("train", "temperature")]
"""Config values that must be > 0, checked when the config is read."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A config's ``name`` becomes a folder under ``OUT/results/``: letters, digits, ``.``, ``_``, ``-`` only."""


# ------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: key in ``metrics.json``.
        label: what the report calls it.
        kind: ``"baseline"`` (no LLM), ``"zero-shot"`` (frozen LLM, no training) or ``"trained"``.
        prompts: ``"id_direct"``, ``"translation"`` or ``"hybrid"`` (user prompt; items get
            ``Item <id>`` for ID Direct, else the item text prompt).
        use_id: soft prompt from the SASRec embedding (RA-Rec's ID representation).
        use_instruction: contextual-instruction prefix.
        layer_specific: one reparameterization per layer.
        infonce: train with the InfoNCE term (lambda > 0).
        data_construction: denoise + diversify the training samples (as configured).
        attention: how the text reads the soft prompt, ``"gated"`` or ``"joint"``
            (:class:`rarec_lite.alignment.RAAlignment`); ``""`` = the config's ``[alignment] attention``.
    """

    name: str
    label: str
    kind: str
    prompts: str = "translation"
    use_id: bool = False
    use_instruction: bool = True
    layer_specific: bool = True
    infonce: bool = True
    data_construction: bool = True
    attention: str = ""

    @property
    def lam_applies(self) -> bool:
        """InfoNCE contrasts the ID representation with the text: only methods with IDs have it."""
        return self.infonce and self.use_id


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("mostpop", "MostPop", "baseline"),
    Method("sasrec", "SASRec (ID only)", "baseline"),
    Method("tfidf_knn", "Item-text TF-IDF kNN", "baseline"),
    Method("id_direct", "ID Direct, zero-shot", "zero-shot", "id_direct"),
    Method("id_direct_prefix", "ID Direct + prefix tuning (no IDs)", "trained", "id_direct"),
    Method("id_translation", "ID Translation, zero-shot", "zero-shot", "translation"),
    Method("id_translation_prefix", "ID Translation + prefix tuning (no IDs)", "trained", "translation"),
    Method("late_fusion", "Late fusion: SASRec + ID Translation scores (z-scored, equal weights)", "zero-shot",
           "translation"),
    Method("rarec", "RA-Rec", "trained", "hybrid", use_id=True),
    Method("rarec_no_instruction", "RA-Rec w/o contextual instruction", "trained", "hybrid", use_id=True,
           use_instruction=False),
    Method("rarec_shared_projector", "RA-Rec, one shared projector", "trained", "hybrid", use_id=True,
           layer_specific=False),
    Method("rarec_no_infonce", "RA-Rec w/o InfoNCE", "trained", "hybrid", use_id=True, infonce=False),
    Method("rarec_no_data_construction", "RA-Rec w/o denoising/diversity", "trained", "hybrid", use_id=True,
           data_construction=False),
    Method("rarec_joint", "RA-Rec, joint attention (classic prefix tuning)", "trained", "hybrid", use_id=True,
           attention="joint"),
]}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _log(msg: str) -> None:
    """A timestamped line on stdout (rank 0 only when data-parallel)."""
    if not distributed.is_main():
        return
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------ the run
class Experiment:
    """One run of a config: its data, SASRec, backbone and every method's steps, cached.

    :func:`run_pipeline` drives it over the config's methods; notebook 06 calls the same steps
    (:meth:`samples`, :meth:`build_tower`, :meth:`step0`, :meth:`train`, :meth:`evaluate_tower`)
    one at a time, so the course and the pipeline compute RA-Rec one way.

    Args:
        cfg: a resolved config (:func:`load_config`).
        out_dir: where caches, checkpoints and results go.
        progress: tqdm bars.
    """

    def __init__(self, cfg: dict, out_dir: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out_dir, progress
        self.seed = cfg["seed"]
        self._backbone = None
        self._item_text_states = None
        self._samples: dict[bool, tuple] = {}
        self._standardization: dict[str, torch.Tensor] = {}
        self._user_standardization: dict[str, torch.Tensor] = {}
        self.pooling = cfg["llm"]["pooling"] or None  # None: the backbone's default (last token for causal LMs)

    # -- stage 1: data --------------------------------------------------------------------
    def load_data(self) -> None:
        from rarec_lite.data import load_dataset, synthetic_dataset
        from rarec_lite.metrics import sample_users

        d = self.cfg["data"]
        max_users = d["max_users"] or None
        try:
            with distributed.main_first():  # rank 0 prepares the processed dataset, the others read it
                self.dataset = load_dataset(d["dataset"], raw_dir=d["raw_dir"] or None, max_users=max_users,
                                            seed=self.seed)
        except FileNotFoundError as exc:
            if not d["synthetic_fallback"]:
                raise
            _log("WARNING: no raw data, so this run uses the SYNTHETIC toy dataset (synthetic_fallback = true): "
                 "its numbers mean nothing. For real data set RAREC_MIRROR or run data_download.sh first.")
            _log(f"  (why: {exc})")
            self.dataset = synthetic_dataset(num_users=max_users or 300, num_items=150, seed=self.seed)
        self.split = self.dataset.split()
        ds = self.dataset
        from rarec_lite.data import label

        _log(f"data: {ds.name} ({label(ds.name)}): {ds.num_users:,} users, {ds.num_items:,} items, "
             f"{sum(len(s) for s in ds.sequences):,} interactions")
        ev, t = self.cfg["eval"], self.cfg["train"]
        if int(ev["num_users"]) >= ds.num_users:
            _log(f"data: [eval] num_users = {ev['num_users']:,} >= the {ds.num_users:,} users: every user is evaluated")
        if int(t["negatives"]) >= ds.num_items:
            raise ValueError(f"[train] negatives = {t['negatives']} must be below the {ds.num_items:,} items of "
                             f"{ds.name}; lower it in the config")

        # the evaluation users: a fixed sample of test users (all of them when fewer)
        self.eval_users = sample_users(ds.num_users, int(self.cfg["eval"]["num_users"]), self.seed)
        self.eval_histories = [np.asarray(self.split.test_history[u]) for u in self.eval_users]
        self.eval_targets = np.asarray([self.split.test_target[u] for u in self.eval_users])

    # -- stage 2: SASRec ------------------------------------------------------------------
    def load_sasrec(self, run=None) -> None:
        """The frozen ID encoder: one trained SASRec per data + hyper-parameters in ``$RAREC_HOME/runs``,
        shared with the notebooks (``run``: a :class:`rarec_lite.sasrec.SASRecRun` the caller already
        fetched for this config, e.g. :func:`rarec_lite.course.experiment`'s, so it is not read twice)."""
        from rarec_lite.sasrec import cached_sasrec_run

        if run is None:
            run = cached_sasrec_run(self.dataset, progress=self.progress, seed=self.seed, **self.cfg["sasrec"])
        if not (run.reused and self.progress):  # with progress, cached_sasrec_run has said it already
            _log(f"SASRec: {'reusing' if run.reused else 'trained'} {run.out_dir} "
                 f"(best epoch {run.metrics['best_epoch']} of {run.metrics['epochs']})")
        self.sasrec, self.sasrec_metrics = run.model.to("cpu"), run.metrics  # scored on the CPU, as always
        self.sasrec.eval()

    def user_id_embeddings(self, histories: list) -> torch.Tensor:
        """Frozen SASRec encodings of histories: (B, d)."""
        return self.sasrec.encode_histories(histories)

    # -- the LLM --------------------------------------------------------------------------
    @property
    def backbone(self):
        if self._backbone is None:
            from rarec_lite.llm import load_backbone, resolve_precision

            llm = self.cfg["llm"]
            quant = resolve_precision(llm["quantization"])
            _log(f"LLM: loading {llm['name']} (quantization={quant or 'none, fp32'}, "
                 f"max_layers={llm['max_layers'] or 'all'})")
            with distributed.main_first():  # each rank its own copy; rank 0 first fills the model cache
                self._backbone = load_backbone(llm["name"], quantization=quant,
                                               max_layers=llm["max_layers"] or None, seed=self.seed)
            info = self._backbone.info
            _log(f"LLM: {info.architecture}, {info.num_layers} layers, hidden {info.hidden_size}, "
                 f"{info.weight_bytes / 2**20:.0f} MiB of weights, {info.load_seconds:.0f} s")
        return self._backbone

    # -- prompts --------------------------------------------------------------------------
    def user_prompt(self, kind: str, user: int, history, budget: int | None = None):
        from rarec_lite import prompts

        tok = self.backbone.tokenizer
        texts = [self.dataset.item_text[i] for i in history]
        if kind == "id_direct":
            return prompts.id_direct_user(int(user), history, tok, budget)
        if kind == "translation":
            return prompts.id_translation_user(texts, tok, budget)
        if kind == "hybrid":
            return prompts.hybrid_user(texts, tok, int(self.cfg["llm"]["history_items"]), budget)
        raise ValueError(f"unknown prompt kind {kind!r}")

    def item_prompts(self, kind: str) -> list[str]:
        from rarec_lite import prompts

        if kind == "id_direct":
            return [prompts.id_direct_item(i).text for i in range(self.dataset.num_items)]
        return [prompts.item_text_prompt(t).text for t in self.dataset.item_text]

    # -- training samples -------------------------------------------------------------------
    def samples(self, data_construction: bool):
        """Training samples (train part only), denoised + diversified when asked; with a report.

        Built once per run for each value of ``data_construction``: every trained method with the
        same setting trains on the same samples (and shares their text cache)."""
        if data_construction not in self._samples:
            self._samples[data_construction] = self._build_samples(data_construction)
        return self._samples[data_construction]

    def _build_samples(self, data_construction: bool):
        from rarec_lite.sampling import denoise, diversify, make_samples

        t = self.cfg["train"]
        samples = make_samples(self.split, max_per_user=int(t["max_per_user"]), seed=self.seed,
                               max_history=int(self.cfg["sasrec"]["max_len"]), part=t["samples_from"])
        report: dict[str, Any] = {"candidates": len(samples)}
        if data_construction and t["denoise"]:
            samples, rep = denoise(samples, self.dataset.item_text)
            report["denoise"] = {k: v for k, v in rep.items() if isinstance(v, (int, float))}
        n = min(int(t["samples"]), len(samples))
        if data_construction and t["diversify"]:
            samples, rep = diversify(samples, n, self.dataset.item_popularity(), int(t["num_buckets"]), self.seed)
            report["diversify"] = {"chosen": len(samples), "cells_before": rep.get("cells_before"),
                                   "cells_after": rep.get("cells_after")}
        else:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(len(samples), size=n, replace=False))
            samples = [samples[k] for k in keep]
        report["used"] = len(samples)
        return samples, report

    # -- shared encodings -------------------------------------------------------------------
    def item_text_states(self):
        """Text-only item tower over the whole catalogue, every layer: ``(final (I,H), layers (I,L,H))``.

        Serves ID Translation zero-shot (``final``) and InfoNCE's item side (``layers``), so the
        most expensive LLM pass of the run happens once; cached on disk.
        """
        if self._item_text_states is None:
            from rarec_lite.alignment import TwoTower
            from rarec_lite.files import load_checkpoint, save_checkpoint

            path = self.out / "cache" / "item_text_states.safetensors"
            if path.exists():
                tensors, _ = load_checkpoint(path)
                self._item_text_states = (tensors["final"], tensors["layers"])
            else:
                llm = self.cfg["llm"]
                _log(f"encoding {self.dataset.num_items:,} item texts (text only, every layer)")
                tower = TwoTower(self.backbone, None, self.pooling)
                final, layers = tower.encode_text_only(self.item_prompts("translation"), "item", True,
                                                       int(llm["batch_size"]), int(llm["item_max_tokens"]),
                                                       self.progress)
                if distributed.is_main():
                    save_checkpoint(path, {"final": final, "layers": layers}, {"kind": "item_text_states"})
                distributed.barrier()
                self._item_text_states = (final, layers)
        return self._item_text_states

    def text_cache(self, samples, key: str):
        """InfoNCE's text-only side for ``samples``: user = ID Translation prompt of the history."""
        from rarec_lite.alignment import TwoTower
        from rarec_lite.train import TextCache

        path = self.out / "cache" / f"text_cache_{key}.safetensors"
        if path.exists():
            return TextCache.load(path)
        llm = self.cfg["llm"]
        _log(f"encoding {len(samples):,} text-only user prompts for InfoNCE")
        texts = [self.user_prompt("translation", s.user, s.history, int(llm["user_max_tokens"])).text
                 for s in samples]
        tower = TwoTower(self.backbone, None, self.pooling)
        _, user_layers = tower.encode_text_only(texts, "user", True, int(llm["batch_size"]),
                                                int(llm["user_max_tokens"]), self.progress)
        item_ids = sorted({s.target for s in samples})
        item_layers = self.item_text_states()[1][item_ids]
        cache = TextCache(user_layers, item_layers, torch.as_tensor(item_ids, dtype=torch.int64))
        if distributed.is_main():
            cache.save(path)
        distributed.barrier()
        return cache

    def standardization_states(self, kind: str) -> torch.Tensor:
        """Text-only item states whose statistics fix the score's standardisation (``[llm] standardize``).

        Item text prompts: the whole catalogue (already cached by :meth:`item_text_states`).
        ``Item <id>`` prompts (ID Direct): a seeded sample of 2,048 items, encoded once.
        """
        key = "id_direct" if kind == "id_direct" else "text"
        if key not in self._standardization:
            if key == "text":
                self._standardization[key] = self.item_text_states()[0]
            else:
                from rarec_lite.alignment import TwoTower

                tower = TwoTower(self.backbone, None, self.pooling)
                self._standardization[key] = tower.sample_text_states(
                    self.item_prompts("id_direct"), 2048, self.seed, int(self.cfg["llm"]["batch_size"]),
                    int(self.cfg["llm"]["item_max_tokens"]))
        return self._standardization[key]

    def stats_users(self) -> np.ndarray:
        """A seeded sample of ``[eval] stats_users`` users outside the evaluation users: the user
        tower's standardisation statistics come from their prompts (training data only)."""
        if not hasattr(self, "_stats_users"):
            others = np.setdiff1d(np.arange(self.dataset.num_users), self.eval_users)
            others = np.array([u for u in others if len(self.split.valid_history[u]) > 0], dtype=np.int64)
            n = min(int(self.cfg["eval"]["stats_users"]), len(others))
            self._stats_users = np.sort(np.random.default_rng([self.seed, 17]).choice(others, size=n, replace=False))
        return self._stats_users

    def stats_prompts(self, kind: str) -> tuple[list[str], list]:
        """The ``kind`` user prompts of :meth:`stats_users` on their **validation** histories ``s[:-2]``
        (their test target never enters), and those histories."""
        budget = int(self.cfg["llm"]["user_max_tokens"])
        hist = [np.asarray(self.split.valid_history[u]) for u in self.stats_users()]
        return [self.user_prompt(kind, u, h, budget).text for u, h in zip(self.stats_users(), hist)], hist

    def user_standardization_states(self, kind: str) -> torch.Tensor:
        """Text-only user-tower states of :meth:`stats_prompts`, encoded once per prompt kind."""
        if kind not in self._user_standardization:
            from rarec_lite.alignment import TwoTower

            llm = self.cfg["llm"]
            tower = TwoTower(self.backbone, None, self.pooling)
            self._user_standardization[kind] = tower.encode_batched(
                self.stats_prompts(kind)[0], "user", None, int(llm["batch_size"]), int(llm["user_max_tokens"]),
                progress=False)
        return self._user_standardization[kind]

    def _user_sigma(self, method: "Method") -> str:
        """``"item"`` when an aligned method's user tower keeps its text-only mean and takes the item
        tower's sigma (``[alignment] user_statistics = "text"``), else ``"own"``."""
        text = str(self.cfg["alignment"]["user_statistics"]) == "text"
        return "item" if method.kind == "trained" and method.use_id and text else "own"

    def _standardize(self, tower, method: "Method") -> None:
        """Per-tower statistics: items from the item prompts' text-only states, users from training users' prompts
        (with ``[alignment] user_statistics = "text"`` an aligned user tower is scaled by the items' sigma)."""
        if self.cfg["llm"]["standardize"]:
            tower.set_standardization(self.standardization_states(method.prompts),
                                      self.user_standardization_states(method.prompts),
                                      user_sigma=self._user_sigma(method))

    # -- scoring --------------------------------------------------------------------------
    def rank(self, scores: torch.Tensor):
        """Full ranking of the evaluation users' targets, history masked: ``(greater, tied)`` per user
        (items scored above the target, items tied with it; metrics are exact expectations over a
        random order of the tied items, :mod:`rarec_lite.metrics`)."""
        from rarec_lite.metrics import full_ranking_rank_ties

        return full_ranking_rank_ties(scores, self.eval_targets, self.eval_histories)

    def run_method(self, method: Method) -> dict:
        """Scores of the evaluation users under ``method``: ranks + efficiency facts."""
        t0 = time.time()
        if method.name == "mostpop":
            from rarec_lite.baselines import MostPop

            model = MostPop().fit(self.split.train, self.dataset.num_items)
            ranks, tied = self.rank(model.score(self.eval_histories))
            return {"ranks": ranks, "tied": tied, "prompt_tokens": 0, "trainable_params": 0, "train_samples": 0,
                    "train_seconds": 0.0, "eval_seconds": time.time() - t0}
        if method.name == "tfidf_knn":
            from rarec_lite.baselines import ItemTextKNN

            model = ItemTextKNN().fit(self.dataset.item_text, self.split.train)
            ranks, tied = self.rank(torch.cat([model.score(self.eval_histories[i:i + 512])
                                               for i in range(0, len(self.eval_histories), 512)]))
            return {"ranks": ranks, "tied": tied, "prompt_tokens": 0, "trainable_params": 0, "train_samples": 0,
                    "train_seconds": 0.0, "eval_seconds": time.time() - t0}
        if method.name == "sasrec":
            ranks, tied = self.rank(self.sasrec_scores())
            n_params = sum(p.numel() for p in self.sasrec.parameters())
            return {"ranks": ranks, "tied": tied, "prompt_tokens": 0, "trainable_params": n_params,
                    "train_samples": sum(max(len(s) - 1, 0) for s in self.split.train),
                    "train_seconds": float(self.sasrec_metrics.get("train_seconds", 0.0)),
                    "eval_seconds": time.time() - t0}
        if method.name == "late_fusion":
            return self.run_late_fusion(method, t0)
        return self.run_llm_method(method, t0)

    def sasrec_scores(self) -> torch.Tensor:
        """SASRec's scores of the evaluation users over the catalogue: ``(U, I)``."""
        users = self.user_id_embeddings(self.eval_histories)
        return users @ self.sasrec.item_embeddings().detach().float().T

    def run_late_fusion(self, method: Method, t0: float) -> dict:
        """SASRec's and zero-shot ID Translation's scores, each z-scored per user and summed
        (:func:`rarec_lite.baselines.late_fusion`): ID and text combined without any training, the
        reference that shows what RA-Rec's alignment adds over its two parts."""
        from rarec_lite.baselines import late_fusion

        text = METHODS["id_translation"]
        eval_prompts = self.eval_prompts(text)
        text_scores = self.tower_scores(self.build_tower(text), text)
        ranks, tied = self.rank(late_fusion([self.sasrec_scores(), text_scores]))
        return {"ranks": ranks, "tied": tied, "prompt_tokens": float(np.mean([p.tokens_kept for p in eval_prompts])),
                "prompt_tokens_needed": float(np.mean([p.tokens_needed for p in eval_prompts])),
                "truncated_share": float(np.mean([p.truncated for p in eval_prompts])),
                "budget": self.budget_report(method, eval_prompts),
                "trainable_params": 0, "train_samples": 0, "train_seconds": 0.0, "eval_seconds": time.time() - t0}

    def run_llm_method(self, method: Method, t0: float) -> dict:
        """An LLM method end to end: build its towers, train them when it is a trained method
        (reporting the step-0 metrics first), then rank the evaluation users (:meth:`evaluate_tower`)."""
        eval_prompts = self.eval_prompts(method)
        facts: dict[str, Any] = {
            "prompt_tokens": float(np.mean([p.tokens_kept for p in eval_prompts])),
            "prompt_tokens_needed": float(np.mean([p.tokens_needed for p in eval_prompts])),
            "truncated_share": float(np.mean([p.truncated for p in eval_prompts])),
            "budget": self.budget_report(method, eval_prompts),
        }
        tower = self.build_tower(method)
        if method.kind == "zero-shot":
            facts.update(trainable_params=0, train_samples=0, train_seconds=0.0, soft_prompt_tokens=0)
        else:
            if self.cfg["eval"]["step0"] and float(self.cfg["alignment"]["gate_init"]) < 0:
                facts["step0"] = self.step0(tower, method)
            samples, sample_report = self.samples(method.data_construction)
            result = self.train(tower, method)
            alignment, info = tower.alignment, self.backbone.info
            facts.update(trainable_params=alignment.num_trainable(),
                         trainable_share=alignment.num_trainable() / max(info.num_parameters, 1),
                         train_samples=len(samples), train_seconds=result.seconds,
                         soft_prompt_tokens=alignment.num_prefix_tokens, sample_report=sample_report,
                         gate={k: alignment.gate[k].detach().tolist() for k in alignment.gate},
                         instruction_gate={k: alignment.instruction_gate[k].detach().tolist()
                                           for k in alignment.instruction_gate},
                         losses={"bpr": result.bpr, "infonce": result.infonce, "total": result.total})
        facts["ranks"], facts["tied"] = self.evaluate_tower(tower, method)
        facts["eval_seconds"] = time.time() - t0 - facts["train_seconds"]
        return facts

    def budget_report(self, method: Method, eval_prompts: list) -> dict:
        """What ``[llm] user_max_tokens`` did to ``method``'s evaluation prompts (history items kept
        whole, :func:`rarec_lite.prompts.budget_report`) and ``item_max_tokens`` to the item prompts;
        logged, with a warning when most prompts lose items or most item texts are cut."""
        from rarec_lite import prompts

        llm = self.cfg["llm"]
        k = int(llm["history_items"])
        wanted = [min(k, len(h)) if method.prompts == "hybrid" else len(h) for h in self.eval_histories]
        users = prompts.budget_report(eval_prompts, wanted)
        items = self.item_budget_report() if method.prompts != "id_direct" else None
        what = {"hybrid": f"its {k} most recent items", "translation": "the whole history",
                "id_direct": "every item id"}[method.prompts]
        _log(f"{method.name}: user prompts need {users['tokens_needed']:.0f} tokens on average (budget "
             f"{llm['user_max_tokens']}); {users['items_kept']:.1f} of {users['items_wanted']:.1f} wanted history items "
             f"kept; {users['lost_item_share']:.0%} of the prompts lost some of {what}")
        limit = 0.05 if method.prompts == "hybrid" else 0.5
        if users["lost_item_share"] > limit:
            _log(f"WARNING: {method.name}: {users['lost_item_share']:.0%} of the user prompts lost history items to "
                 f"[llm] user_max_tokens = {llm['user_max_tokens']} (they need {users['tokens_needed']:.0f} on "
                 f"average); raise it (or set [budgets.{self.dataset.name}]) if that is not intended")
        return {"users": users, "items": items}

    def item_budget_report(self) -> dict:
        """:func:`rarec_lite.prompts.budget_report` of the catalogue's item prompts under ``[llm] item_max_tokens``
        (computed once; a warning when more than half the item texts are cut)."""
        if not hasattr(self, "_item_budget"):
            from rarec_lite import prompts

            budget, tok = int(self.cfg["llm"]["item_max_tokens"]), self.backbone.tokenizer
            rep = prompts.budget_report([prompts.item_text_prompt(t, tok, budget) for t in self.dataset.item_text])
            _log(f"item prompts need {rep['tokens_needed']:.1f} tokens on average (budget {budget}): "
                 f"{rep['over_budget_share']:.1%} of the item texts are cut, keeping "
                 f"{rep['words_kept_share']:.0%} of their words")
            if rep["over_budget_share"] > 0.5:
                _log(f"WARNING: most item texts are cut by [llm] item_max_tokens = {budget}; raise it (or set "
                     f"[budgets.{self.dataset.name}]) if that is not intended")
            self._item_budget = rep
        return self._item_budget

    # -- the steps of an LLM method (the pipeline and notebook 06 call the same ones) -------------
    def eval_prompts(self, method: Method) -> list:
        """The evaluation users' prompts (:class:`rarec_lite.prompts.PromptResult`) of ``method``."""
        budget = int(self.cfg["llm"]["user_max_tokens"])
        return [self.user_prompt(method.prompts, u, h, budget) for u, h in zip(self.eval_users, self.eval_histories)]

    def build_tower(self, method: Method):
        """The two towers of ``method`` (with a fresh :class:`~rarec_lite.alignment.RAAlignment` when
        it trains), standardised with the step-0 statistics (:meth:`_standardize`)."""
        from rarec_lite.alignment import RAAlignment, TwoTower

        alignment = None
        if method.kind == "trained":
            a = self.cfg["alignment"]
            alignment = RAAlignment(self.backbone.info, id_dim=int(self.sasrec.config["hidden"]),
                                    num_id_tokens=int(a["num_id_tokens"]),
                                    num_instruction_tokens=int(a["num_instruction_tokens"]),
                                    layer_specific=method.layer_specific, use_instruction=method.use_instruction,
                                    use_id=method.use_id, seed=self.seed, gate_init=float(a["gate_init"]),
                                    tie_init=bool(a["tie_init"]), attention=method.attention or str(a["attention"]),
                                    last_layer_gate=float(a["last_layer_gate"]),
                                    instruction_softmax=str(a["instruction_softmax"]))
        tower = TwoTower(self.backbone, alignment, self.pooling, item_norm=bool(self.cfg["llm"]["item_norm"]))
        self._standardize(tower, method)
        if alignment is not None and alignment.use_id and str(self.cfg["alignment"]["reparam_init"]) == "isometric":
            if not tower.stats or alignment.attention != "gated" or self.backbone.info.architecture != "llama":
                _log(f"{method.name}: [alignment] reparam_init = \"isometric\" needs [llm] standardize = true, the "
                     f"gated attention and a LLaMA-family backbone; this one starts from the random map instead")
            else:
                tower.init_isometric_reparameterization()
        return tower

    def train_config(self, method: Method):
        """The :class:`rarec_lite.train.TrainConfig` of ``method`` from the config's ``[train]`` section."""
        from rarec_lite.train import TrainConfig

        t, llm = self.cfg["train"], self.cfg["llm"]
        lam = float(t["lambda_infonce"]) if method.lam_applies else 0.0
        return TrainConfig(steps=int(t["steps"]), batch_size=int(t["batch_size"]), lr=float(t["lr"]),
                           weight_decay=float(t["weight_decay"]), lam=lam, temperature=float(t["temperature"]),
                           seed=self.seed, max_user_tokens=int(llm["user_max_tokens"]),
                           max_item_tokens=int(llm["item_max_tokens"]), checkpoint_every=int(t["checkpoint_every"]),
                           rank_loss=t["rank_loss"], negatives=int(t["negatives"]),
                           score_scale=float(t["score_scale"]) or None, restandardize=bool(t["restandardize"]),
                           stats_momentum=float(t["stats_momentum"]), warmup=float(t["warmup"]), schedule=t["schedule"],
                           gate_lr_scale=float(t["gate_lr_scale"]), gate_warmup=float(t["gate_warmup"]),
                           negative_sampling=t["negative_sampling"])

    def train(self, tower, method: Method, progress: bool | None = None):
        """Train ``tower.alignment`` on the method's samples (:func:`rarec_lite.train.train_alignment`;
        resumes from ``OUT/train/<method>``). Returns the :class:`~rarec_lite.train.TrainResult`."""
        from rarec_lite.train import train_alignment

        budget = int(self.cfg["llm"]["user_max_tokens"])
        tcfg = self.train_config(method)
        samples, _ = self.samples(method.data_construction)
        key = "constructed" if method.data_construction else "plain"
        cache = self.text_cache(samples, key) if tcfg.lam > 0 else None
        train_prompts = [self.user_prompt(method.prompts, s.user, s.history, budget).text for s in samples]
        item_id_emb = self.sasrec.item_embeddings().detach().float() if method.use_id else None
        user_fn = (lambda batch: self.user_id_embeddings([np.asarray(s.history) for s in batch])) \
            if method.use_id else None
        _log(f"{method.name}: training {tower.alignment.num_trainable():,} parameters on {len(samples):,} samples "
             f"({tcfg.steps} steps of {tcfg.batch_size}, {tcfg.negatives} fresh "
             f"{'popularity-drawn (logQ-corrected)' if tcfg.negative_sampling == 'popularity' else 'uniform'} "
             f"negatives per step, {tcfg.rank_loss})")
        result = train_alignment(tower, samples, train_prompts, self.item_prompts(method.prompts), user_fn,
                                 item_id_emb, cache, tcfg, self.out / "train" / method.name,
                                 progress=self.progress if progress is None else progress,
                                 item_popularity=self.dataset.item_popularity())
        tower.alignment.eval()
        return result

    def evaluate_tower(self, tower, method: Method):
        """Rank the whole catalogue for the evaluation users with ``tower``: ``(greater, tied)``
        (the scores of :meth:`tower_scores`)."""
        return self.rank(self.tower_scores(tower, method))

    def tower_scores(self, tower, method: Method) -> torch.Tensor:
        """The evaluation users' scores over the whole catalogue with ``tower``: ``(U, I)``.

        The item tower encodes every item (the cached text-only states for zero-shot text
        methods); a trained tower first gets its own statistics (the whole catalogue, and
        training users' prompts: :meth:`stats_prompts`)."""
        llm, budget = self.cfg["llm"], int(self.cfg["llm"]["user_max_tokens"])
        if method.kind == "zero-shot" and method.prompts != "id_direct":
            items = self.item_text_states()[0]
        else:
            item_emb = self.sasrec.item_embeddings().detach().float() if method.use_id else None
            _log(f"{method.name}: encoding {self.dataset.num_items:,} items")
            items = tower.encode_batched(self.item_prompts(method.prompts), "item", item_emb,
                                         int(llm["batch_size"]), int(llm["item_max_tokens"]),
                                         progress=self.progress)
        if method.kind == "trained" and self.cfg["llm"]["standardize"]:
            if self._user_sigma(method) == "item":  # the users' text-only mean; the trained items' sigma
                tower.set_standardization(items, self.user_standardization_states(method.prompts), user_sigma="item")
            else:
                prompts, hist = self.stats_prompts(method.prompts)
                emb = self.user_id_embeddings(hist) if method.use_id else None
                u_states = tower.encode_batched(prompts, "user", emb, int(llm["batch_size"]), budget, progress=False)
                tower.set_standardization(items, u_states)
        if method.kind == "zero-shot":
            users = self.zero_shot_user_states(tower, method)
        else:
            user_emb = self.user_id_embeddings(self.eval_histories) if method.use_id else None
            users = tower.encode_batched([p.text for p in self.eval_prompts(method)], "user", user_emb,
                                         int(llm["batch_size"]), budget, progress=self.progress)
        return tower.score(users, items)

    def zero_shot_user_states(self, tower, method: Method) -> torch.Tensor:
        """The evaluation users' raw states ``(U, H)`` through a zero-shot ``tower`` (no soft prompt: they
        depend on the prompt kind alone), encoded once per run and cached on disk, so late fusion
        reuses ID Translation's instead of running the LLM over the same prompts again."""
        from rarec_lite.files import load_checkpoint, save_checkpoint

        path = self.out / "cache" / f"eval_user_states_{method.prompts}.safetensors"
        if path.exists():
            return load_checkpoint(path)[0]["users"]
        llm = self.cfg["llm"]
        users = tower.encode_batched([p.text for p in self.eval_prompts(method)], "user", None,
                                     int(llm["batch_size"]), int(llm["user_max_tokens"]), progress=self.progress)
        if distributed.is_main():
            save_checkpoint(path, {"users": users}, {"kind": "eval_user_states", "prompts": method.prompts})
        distributed.barrier()
        return users

    def step0(self, tower, method: "Method") -> dict:
        """Metrics of the untrained aligned towers (closed gate): what training starts from.

        The user tower runs for real on the evaluation users; the item tower's catalogue is taken
        from the text-only states, after checking on 256 items that the closed gate changes them by
        no more than ``max_item_deviation`` (relative, max over items)."""
        from rarec_lite.metrics import metrics_from_ranks

        llm, budget = self.cfg["llm"], int(self.cfg["llm"]["user_max_tokens"])
        if method.prompts == "id_direct":
            return {}
        items = self.item_text_states()[0]
        probe = np.sort(np.random.default_rng([self.seed, 5]).choice(len(items), size=min(256, len(items)),
                                                                       replace=False))
        probe_emb = self.sasrec.item_embeddings().detach().float()[probe] if method.use_id else None
        prompts = self.item_prompts(method.prompts)
        got = tower.encode_batched([prompts[i] for i in probe], "item", probe_emb,
                                   int(llm["batch_size"]), int(llm["item_max_tokens"]), progress=False)
        deviation = float(((got - items[probe]).norm(dim=1) / items[probe].norm(dim=1)).max())
        user_emb = self.user_id_embeddings(self.eval_histories) if method.use_id else None
        users = tower.encode_batched([p.text for p in self.eval_prompts(method)], "user", user_emb,
                                     int(llm["batch_size"]), budget, progress=False)
        ranks, tied = self.rank(tower.score(users, items))
        out = {k: v for k, v in metrics_from_ranks(ranks, [10, 100], tied=tied).items() if k != "MRR"}
        out["max_item_deviation"] = deviation
        _log(f"{method.name}: step 0 (closed gate) HR@100 {out['HR@100']:.4f} NDCG@10 {out['NDCG@10']:.4f}; "
             f"item states within {deviation:.1e} of text-only")
        return out


def _metrics_entry(method: Method, facts: dict, ks) -> dict:
    from rarec_lite.metrics import metrics_from_ranks

    ranks, tied = np.asarray(facts["ranks"]), np.asarray(facts["tied"])
    entry = {"label": method.label, "kind": method.kind, "protocol": "full-ranking", "ties": "expected",
             "users": int(len(ranks))}
    entry.update(metrics_from_ranks(ranks, ks, tied=tied))
    entry.update({k: v for k, v in facts.items() if k not in ("ranks", "tied", "losses")})
    return entry


def run_pipeline(config: str | Path | dict = "cpu-quick", out: str | Path = ".", progress: bool = True,
                 add_methods: list[str] | None = None, dataset: str | None = None) -> dict:
    """Run (or resume) every stage of a config; return the ``metrics.json`` content.

    Args:
        config: a config name (``ci-tiny``, ``cpu-quick``, ``gpu-t4``), a ``.toml`` path, or a dict.
        out: results go to ``out/results/<config name>/``.
        progress: tqdm bars.
        add_methods: methods (names of :data:`METHODS`) to run after the config's ``[methods] run``;
            finished ones are reused. Every method is its own stage, so a later call may add
            methods (e.g. the ablations) to a finished run; the report then lists them all.
        dataset: run the config on this dataset instead of its ``[data] dataset`` (any name of
            :func:`rarec_lite.data.catalog.resolve`); results then go to ``out/results/<config name>-<key>/``
            and the config's ``[budgets.<key>]`` token budgets apply (:func:`for_dataset`).

    Writes (atomically) ``metrics.json``, ``report.md``, ``ranks.npz`` (per-user ranks of every
    method, for paired tests), ``figures/*.png``, ``methods/<name>.json`` (one per finished
    method: what makes the run resumable) and ``config.json`` (the resolved config).

    Data-parallel under ``accelerate launch`` / ``torchrun`` (README, "More than one GPU"): the
    catalogue, the evaluation users and every other LLM encoding are sharded over the processes and
    gathered in order, the alignment and SASRec train with averaged gradients, the ranks and
    metrics are computed once on the gathered states, rank 0 writes every file, and
    ``metrics.json`` records ``world_size`` and the items and users each rank encoded.

    Raises:
        FileNotFoundError: no such config, or no raw data (with how to get it).
        ValueError: a malformed config (names the file and key).
        RuntimeError: a launcher set ``WORLD_SIZE > 1`` and the process group cannot start.
    """
    joined = not distributed.world().backend  # a group this call starts, it also ends
    distributed.init()
    try:
        return _run_pipeline(config, out, progress and distributed.is_main(), add_methods, dataset)
    finally:
        if joined:
            distributed.shutdown()


def _run_pipeline(config, out, progress, add_methods, dataset) -> dict:
    """:func:`run_pipeline`'s work, in a process group or not."""
    distributed.ENCODED.clear()  # this call's per-rank counts
    cfg = load_config(config)
    own_dataset = cfg["data"]["dataset"]
    cfg = for_dataset(cfg, dataset)
    if add_methods is not None:
        bad = [m for m in add_methods if m not in METHODS]
        if bad or not add_methods:
            raise ValueError(f"unknown or no method(s) to add: {bad or add_methods} (known: {', '.join(METHODS)})")
        cfg["methods"]["run"] = list(dict.fromkeys([*cfg["methods"]["run"], *add_methods]))
    from rarec_lite.llm import cpu_has_native_bf16, resolve_device, resolve_precision

    requested = str(cfg["llm"]["quantization"])
    # config.json records the precision that runs, not "auto": a later call on a machine where "auto" means another
    # precision is refused below like any other change, instead of mixing bf16 and fp32 rows in one table
    cfg["llm"]["quantization"] = resolve_precision(requested) or "none"
    out_dir = results_dir(cfg, out, own_dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures_ok = _matplotlib_available()
    if not figures_ok:
        _log("matplotlib is not installed (it comes with `pip install rarec-lite[course]`): the run goes on, "
             "figures are skipped, report.md is written without them")
    previous = out_dir / "config.json"
    if previous.exists() and _signature(read_json(previous)) != _signature(cfg) and _has_stages(out_dir):
        old, new = json.loads(_signature(read_json(previous))), json.loads(_signature(cfg))
        flat = lambda c: {f"[{k}] {kk}" if isinstance(v, dict) else k: vv  # noqa: E731
                          for k, v in c.items() for kk, vv in (v.items() if isinstance(v, dict) else [(k, v)])}
        a, b = flat(old), flat(new)
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if len(differ) > 6:
            differ = differ[:6] + [f"and {len(differ) - 6} more"]
        raise ValueError(f"{out_dir} holds results of a different configuration ({previous}; differs in "
                         f"{', '.join(differ) or '?'}); "
                         f"use another --out or delete that directory")
    if distributed.is_main():
        atomic_write_json(previous, cfg)
    torch.manual_seed(cfg["seed"])
    started = time.time()
    _log(f"config {cfg['name']}: {cfg['description']} -> {out_dir}")
    if requested == "auto":
        _log(f"[llm] quantization = \"auto\": {cfg['llm']['quantization'].replace('none', 'fp32')} on this machine "
             f"(bf16 on CPUs with native bf16, fp32 on other CPUs, NF4 on a GPU)")
        if cfg["llm"]["quantization"] == "none" and resolve_device() == "cpu":
            _log("this CPU has no native bf16, so the LLM stages run in fp32, the slowest of the CPU paths: "
                 "cpu-quick's took 15.3 min on a 2-core CPU forced to fp32 against 6.5 min in bf16 (README, Results)")
    elif requested.lower() == "bf16" and resolve_device() == "cpu" and not cpu_has_native_bf16():
        _log("WARNING: [llm] quantization = \"bf16\" on a CPU without native bf16: bf16 is emulated there and "
             "usually slower than fp32; \"auto\" picks fp32 on such a CPU")

    run = Experiment(cfg, out_dir, progress)
    run.load_data()
    _check_same_data(out_dir, run.dataset)
    run.load_sasrec()
    ks = [int(k) for k in cfg["eval"]["ks"]]
    entries: dict[str, dict] = {}
    ranks: dict[str, np.ndarray] = {}
    tied: dict[str, np.ndarray] = {}
    losses: dict[str, dict] = {}
    for name in cfg["methods"]["run"]:
        method = METHODS[name]
        done = out_dir / "methods" / f"{name}.json"
        saved = read_json(done) if done.exists() else None
        if saved is not None and saved["entry"].get("ties") == "expected":
            _log(f"{name}: reusing {done}")
        else:  # new, or written before tie counts were kept (those ranks cannot be converted): rerun
            _log(f"{name}: {method.label}")
            facts = run.run_method(method)
            saved = {"entry": _metrics_entry(method, facts, ks), "ranks": np.asarray(facts["ranks"]).tolist(),
                     "tied": np.asarray(facts["tied"]).tolist(), "losses": facts.get("losses")}
            if distributed.is_main():
                atomic_write_json(done, saved)
            e = saved["entry"]
            _log(f"{name}: HR@10 {e['HR@10']:.4f}  HR@100 {e.get('HR@100', float('nan')):.4f}  "
                 f"NDCG@10 {e['NDCG@10']:.4f}")
        entries[name], ranks[name], tied[name] = saved["entry"], np.asarray(saved["ranks"]), np.asarray(saved["tied"])
        if saved.get("losses"):
            losses[name] = saved["losses"]
        distributed.barrier()  # every rank decides on the next method after this one's file is written

    encoded = distributed.gather_objects(dict(distributed.ENCODED))
    if not distributed.is_main():  # the metrics, the report and the figures: once, on rank 0; the others read them
        distributed.barrier()
        return {**read_json(out_dir / "metrics.json"), "results_dir": str(out_dir)}
    w = distributed.world()
    parallel = {"world_size": w.size, "backend": w.backend or "none",
                "encoded_per_rank": [{"rank": r, "items": c.get("item", 0), "users": c.get("user", 0)}
                                     for r, c in enumerate(encoded)]}

    _add_confidence_intervals(entries, ranks, tied, cfg)
    result = {
        "config": cfg["name"], "description": cfg["description"], "protocol": "full-ranking, leave-one-out",
        "ties": "expected",
        "dataset": {"name": run.dataset.name, "users": run.dataset.num_users, "items": run.dataset.num_items,
                    "eval_users": int(len(run.eval_users))},
        "token_budgets": {k: cfg["llm"][k] for k in BUDGET_KEYS},
        "backbone": _backbone_facts(run), "methods": entries,
        "scoring": {"pooling": run.pooling or "backbone default", "standardize": bool(cfg["llm"]["standardize"]),
                    "item_norm": bool(cfg["llm"]["standardize"]) and bool(cfg["llm"]["item_norm"]),  # needs z
                    "user_statistics": str(cfg["alignment"]["user_statistics"])},
        "alignment_start": {k: cfg["alignment"][k] for k in ("attention", "reparam_init", "instruction_softmax",
                                                             "last_layer_gate")},
        "world_size": w.size, "data_parallel": parallel,
        "calls": _record_call(out_dir, time.time() - started, w.size),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
    }
    atomic_write_json(out_dir / "metrics.json", result)
    with_ranks = out_dir / "ranks.npz"
    np.savez_compressed(with_ranks.with_suffix(".tmp.npz"), users=run.eval_users, **ranks,
                        **{f"{n}_tied": t for n, t in tied.items()})
    with_ranks.with_suffix(".tmp.npz").replace(with_ranks)
    figures = _figures(out_dir / "figures", entries, losses, run.dataset.name, cfg["train"]["rank_loss"],
                       int(cfg["train"]["batch_size"])) if figures_ok else []
    atomic_write_text(out_dir / "report.md", format_report(result, figures))
    _log(f"done in {time.time() - started:.0f} s; report: {out_dir / 'report.md'}")
    distributed.barrier()  # the other ranks return what rank 0 wrote
    return {**result, "results_dir": str(out_dir)}


def _matplotlib_available() -> bool:
    """Whether the figures can be drawn (matplotlib is in the ``course`` extra, not a core dependency)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _has_stages(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds anything a resumed run would reuse (finished methods, caches,
    training checkpoints): only then does a different config clash with it. A run that failed
    before any stage finished leaves nothing to protect, so its corrected retry just goes on."""
    return any((out_dir / sub).is_dir() and any((out_dir / sub).iterdir()) for sub in ("methods", "cache", "train"))


def _signature(cfg: dict) -> str:
    """What must match to resume a run: the whole config but the list of methods (each method
    is a stage of its own), the free-text description and ``[budgets]`` (the budgets in force are
    in ``[llm]``). An empty ``[data] raw_dir`` is left out, so runs from before that key resume."""
    sig = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("methods", "description", "budgets")}
    if isinstance(sig.get("data"), dict) and not sig["data"].get("raw_dir"):
        sig["data"].pop("raw_dir", None)
    return json.dumps(sig, sort_keys=True)


def _record_call(out_dir: Path, seconds: float, world_size: int = 1) -> list[dict]:
    """Append this call's wall time and peak memory to ``calls.json``; return every call so far.

    A resumed run reuses earlier calls' stages, so the report adds their times up and takes
    the largest peak, instead of describing only the last (possibly instant) call."""
    path = out_dir / "calls.json"
    calls = read_json(path) if path.exists() else []
    calls.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_seconds": round(seconds, 1),
                  "peak_rss_mib": round(_peak_rss_mb(), 1), "world_size": world_size})
    atomic_write_json(path, calls)
    return calls


def data_signature(dataset) -> dict:
    """What identifies a dataset's content: name, sizes and a SHA-256 of every user's item sequence."""
    digest = hashlib.sha256()
    for seq in dataset.sequences:
        digest.update(np.asarray(seq, dtype=np.int64).tobytes())
        digest.update(b"|")
    return {"name": dataset.name, "users": dataset.num_users, "items": dataset.num_items,
            "sequences_sha256": digest.hexdigest()}


def _check_same_data(out_dir: Path, dataset) -> None:
    """Refuse to resume on other data than the results were made from (e.g. the synthetic fallback
    first, the real mirror later): every reused stage would silently belong to the old data."""
    path = out_dir / "data.json"
    current = data_signature(dataset)
    if path.exists() and _has_stages(out_dir):
        before = read_json(path)
        if before != current:
            raise ValueError(f"{out_dir} holds results computed on other data ({before['name']}: "
                             f"{before['users']:,} users, {before['items']:,} items; now {current['name']}: "
                             f"{current['users']:,} users, {current['items']:,} items); delete that directory "
                             f"or use another --out")
    elif distributed.is_main():
        atomic_write_json(path, current)


def _backbone_facts(run: Experiment) -> dict | None:
    """The backbone's facts for the report, kept in ``backbone.json`` so a fully resumed run
    (which never loads the LLM) still reports them."""
    path = run.out / "backbone.json"
    if run._backbone is None:
        return read_json(path) if path.exists() else None
    info = run._backbone.info
    facts = {"name": info.name, "architecture": info.architecture, "layers": info.num_layers,
             "layers_total": getattr(info, "num_layers_total", info.num_layers), "hidden": info.hidden_size,
             "quantization": info.quantization, "weight_mib": info.weight_bytes / 2**20,
             "parameters": info.num_parameters, "device": info.device}
    atomic_write_json(path, facts)
    return facts


COMPARE_WITH = ("sasrec", "tfidf_knn", "id_translation", "late_fusion")
"""Every method is compared, paired on the same users, with each of these (when it ran)."""


def _add_confidence_intervals(entries: dict, ranks: dict, tied: dict, cfg: dict) -> None:
    """95% bootstrap CIs of NDCG@10 and HR@100 per method (``ci95_<metric>``), and the paired
    bootstrap CI and sign-flip p-value of each method minus SASRec (``vs_sasrec_<metric>``), minus
    TF-IDF kNN (``vs_tfidf_knn_<metric>``), minus zero-shot ID Translation (``vs_id_translation_<metric>``) and,
    when it ran, minus the late fusion of SASRec and ID Translation (``vs_late_fusion_<metric>``)."""
    from rarec_lite.metrics import paired_bootstrap, per_user_metric

    n_boot, seed = int(cfg["eval"]["bootstrap_resamples"]), cfg["seed"]
    for name, r in ranks.items():
        for metric in ("NDCG@10", "HR@100"):
            if metric not in entries[name]:
                continue
            values = per_user_metric(r, metric, tied[name])
            # the CI of mean(a - 0) is the bootstrap CI of mean(a)
            own = paired_bootstrap(values, np.zeros_like(values), num_resamples=n_boot, seed=seed)
            entries[name][f"ci95_{metric}"] = [own.ci_low, own.ci_high]
            for other in COMPARE_WITH:
                if name == other or other not in ranks:
                    continue
                cmp = paired_bootstrap(values, per_user_metric(ranks[other], metric, tied[other]),
                                       num_resamples=n_boot, seed=seed)
                entries[name][f"vs_{other}_{metric}"] = {"diff": cmp.mean_diff, "ci_low": cmp.ci_low,
                                                         "ci_high": cmp.ci_high, "p_value": cmp.p_value}


def _figures(fig_dir: Path, entries: dict, losses: dict, dataset: str, rank_loss: str, batch_size: int) -> list[str]:
    """Metric bars with 95% bootstrap CIs, and the training curves (``plots.loss_panels``, as notebook 06
    draws them), titled with the dataset. Returns the paths written."""
    import matplotlib.pyplot as plt  # headless machines fall back to the Agg backend by themselves

    from rarec_lite import plots
    from rarec_lite.data import label

    written = []
    table = {e["label"]: {m: (e[m], *e[f"ci95_{m}"]) for m in ("NDCG@10", "HR@100") if f"ci95_{m}" in e}
             for e in entries.values()}
    ax = plots.metric_bars(table, metrics=("NDCG@10", "HR@100"))
    if dataset:
        ax.set_title(f"Test metrics with 95% CI: {label(dataset)}")
    plots.save(ax, fig_dir / "metrics.png")
    plt.close(ax.figure)
    written.append("figures/metrics.png")
    if losses:  # one row per trained method: its ranking loss and (when it trained with it) InfoNCE, own axes
        fig, axes = plt.subplots(len(losses), 2, figsize=(9.2, 3.9 * len(losses)), squeeze=False)
        refs = plots.loss_references(rank_loss, batch_size)
        names = {"bpr": "BPR" if rank_loss == "bpr" else "sampled softmax", "infonce": "InfoNCE (mean over layers)"}
        for row, (name, curve) in zip(axes, losses.items()):
            keys = ["bpr"] + (["infonce"] if any(v for v in curve["infonce"]) else [])
            title = METHODS[name].label  # two lines: the method, then the loss (long labels do not collide)
            plots.loss_panels({f"{title}\n{names[k]}": curve[k] for k in keys},
                              references={f"{title}\n{names[k]}": refs[k] for k in keys if k in refs},
                              smooth=max(1, len(curve["bpr"]) // 5), axes=row[:len(keys)])
            for ax in row[len(keys):]:
                ax.axis("off")
            for ax in row[:len(keys)]:
                ax.title.set_fontsize(9)
        if dataset:
            fig.suptitle(f"Training losses: {label(dataset)}", fontsize=10)
        fig.tight_layout()
        plots.save(axes[0][0], fig_dir / "training.png")
        plt.close(fig)
        written.append("figures/training.png")
    return written


def format_report(result: dict, figures: list[str] = ()) -> str:
    """The Markdown report: the comparison table, efficiency, CIs against SASRec."""
    from rarec_lite.data import label

    ds, bb = result["dataset"], result.get("backbone") or {}
    lines = [f"# Results: {result['config']} on {label(ds.get('name'))}", "", result["description"], "",
             ("Data: toy (the synthetic toy dataset: its numbers mean nothing)." if ds.get("name") == "toy"
              else f"Data: {label(ds.get('name'))} (`{ds.get('name', '?')}`)."), "",
             f"Protocol: {result['protocol']}; {ds['eval_users']:,} test users ranked against all "
             f"{ds['items']:,} items ({ds['users']:,} users in the data), their own history masked; ties: "
             + ("expected (exact expectation over a uniformly random order of the items tied with the target)."
                if result.get("ties") == "expected" else "pessimistic (a tied target ranks last among its ties)."),
             ""]
    if bb:
        lines += [f"Backbone: {bb['name']} ({bb['architecture']}, {bb['layers']} of {bb['layers_total']} layers, "
                  f"hidden {bb['hidden']}, {bb['quantization'] or 'fp32'}, {bb['weight_mib']:.0f} MiB of weights, "
                  f"{bb['device']}).", ""]
    sc = result.get("scoring")
    if sc:
        lines += [f"LLM scores: {sc['pooling']} pooling of the final states; "
                  + ("dot product of standardised states (each tower's own fixed statistics: the catalogue's for "
                     "items, training users' prompts for users, recomputed after training"
                     + ("; an aligned user tower keeps its text-only mean and takes the items' sigma"
                        if sc.get("user_statistics") == "text" else "")
                     + ("; each standardised item state rescaled to length sqrt(H), so every user's ranking is by "
                        "cosine" if sc.get("item_norm") else "; the item states' own lengths kept ([llm] item_norm = "
                        "false)") + "; see README)."
                     if sc["standardize"] else "raw dot product."), ""]
    st = result.get("alignment_start")
    if st and any(e.get("kind") == "trained" for e in result["methods"].values()):
        lines += [f"Aligned methods start from: {st['attention']} attention, the last layer's map "
                  f"{'isometric (SASRec geometry through the frozen path)' if st['reparam_init'] == 'isometric' else 'random (tied)'}"
                  f", its ID gate at {st['last_layer_gate']}, the contextual instruction in "
                  f"{'a softmax with gates of its own (closed)' if st['instruction_softmax'] == 'own' else 'the ID slot softmax'}"
                  f" ([alignment] in config.json; README, Results points 8 and 9).", ""]
    cols = ["HR@10", "HR@20", "HR@50", "HR@100", "NDCG@10", "NDCG@100", "MRR"]
    lines.append("| method | " + " | ".join(cols) + " | NDCG@10 vs SASRec (95% CI) | prompt tokens | "
                 "soft-prompt slots/layer | trainable params | train samples | train s |")
    lines.append("|---|" + "---:|" * (len(cols) + 6))
    for name, e in result["methods"].items():
        row = [f"{e[c]:.4f}" if c in e else "–" for c in cols]
        ci = e.get("vs_sasrec_NDCG@10")
        ci_txt = (f"{ci['diff']:+.4f} [{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}], p={ci['p_value']:.3g}"
                  if ci else "–")
        tokens = e.get("prompt_tokens", 0)
        needed = e.get("prompt_tokens_needed")
        tok_txt = f"{tokens:.0f}" + (f" (needs {needed:.0f})" if needed and needed > tokens + 0.5 else "")
        if e.get("kind") == "baseline":
            tok_txt = "–"  # no prompt at all
        dash = lambda v, fmt: fmt.format(v) if v else "–"  # noqa: E731 (nothing of the kind, not zero)
        lines.append(f"| {e['label']} | " + " | ".join(row) + f" | {ci_txt} | {tok_txt} | "
                     f"{dash(e.get('soft_prompt_tokens', 0), '{}')} | {dash(e.get('trainable_params', 0), '{:,}')} | "
                     f"{dash(e.get('train_samples', 0), '{:,}')} | {dash(e.get('train_seconds', 0), '{:.1f}')} |")
    pairs = [(name, e) for name, e in result["methods"].items() if any(k.startswith("vs_") for k in e)]
    if pairs:
        bases = [b for b in COMPARE_WITH if b in result["methods"]]  # the baselines this run has
        lines += ["", "Paired differences on the same users (method minus the column's baseline): mean, 95% "
                  "bootstrap CI, sign-flip p-value.", "",
                  "| method | " + " | ".join(f"{m} − {METHODS[b].label}" for b in bases for m in ("HR@100", "NDCG@10"))
                  + " |",
                  "|---|" + "---|" * (2 * len(bases))]
        for name, e in pairs:
            cells = []
            for b in bases:
                for m in ("HR@100", "NDCG@10"):
                    c = e.get(f"vs_{b}_{m}")
                    cells.append(f"{c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] p={c['p_value']:.3g}"
                                 if c else "–")
            lines.append(f"| {e['label']} | " + " | ".join(cells) + " |")
    starts = [(e, e["step0"]) for e in result["methods"].values() if e.get("step0")]
    if starts:
        lines += ["", "Where training starts (step 0: untrained soft prompts behind a closed gate) and where it ends:", ""]
        for e, s0 in starts:
            gate = ", ".join(f"{k} {v + 0.0:+.2f}" if isinstance(v, (int, float))
                             else f"{k} [{', '.join(f'{x + 0.0:+.2f}' for x in v)}]"
                             for k, v in (e.get("gate") or {}).items())
            lines.append(f"- {e['label']}: HR@100 {s0['HR@100']:.4f} -> {e['HR@100']:.4f}, NDCG@10 "
                         f"{s0['NDCG@10']:.4f} -> {e['NDCG@10']:.4f} (step-0 item states within "
                         f"{s0['max_item_deviation']:.1e} of text-only; learned gate {gate or '–'})")
    budgets = [(e, e["budget"]) for e in result["methods"].values() if e.get("budget")]
    if budgets:
        tb = result.get("token_budgets", {})
        lines += ["", f"Token budgets ([llm] user_max_tokens = {tb.get('user_max_tokens', '?')}, item_max_tokens = "
                  f"{tb.get('item_max_tokens', '?')}): what survives of the evaluation users' prompts.", ""]
        items = next((b["items"] for _, b in budgets if b.get("items")), None)
        if items:
            lines.append(f"- item prompts: {items['tokens_needed']:.1f} tokens needed on average; "
                         f"{items['over_budget_share']:.1%} of the {items['prompts']:,} item texts cut, keeping "
                         f"{items['words_kept_share']:.0%} of their words")
        for e, b in budgets:
            u = b["users"]
            lines.append(f"- {e['label']}: {u['tokens_needed']:.0f} tokens needed, {u['tokens_kept']:.0f} kept; "
                         f"{u['items_kept']:.2f} of {u['items_wanted']:.2f} history items kept whole; "
                         f"{u['lost_item_share']:.1%} of the prompts lost one or more")
    calls = result.get("calls", [])
    if calls:
        lines += ["", f"Wall time: {sum(c['wall_seconds'] for c in calls) / 60:.1f} min over {len(calls)} "
                  f"call(s) of the pipeline; peak memory (process RSS): "
                  f"{max(c['peak_rss_mib'] for c in calls):.0f} MiB.", ""]
    dp = result.get("data_parallel")
    if dp:
        per_rank = "; ".join(f"rank {c['rank']} {c['items']:,} items, {c['users']:,} users" for c in dp["encoded_per_rank"])
        lines += [(f"Processes: {dp['world_size']} ({dp['backend']}, data-parallel); " if dp["world_size"] > 1
                   else "Processes: 1; ")
                  + f"texts encoded without gradient in the last call (catalogue, evaluation and statistics users, "
                  f"caches, training negatives): {per_rank}."
                  + (" Ranks and metrics computed once, on the gathered states; peak memory above is rank 0's."
                     if dp["world_size"] > 1 else ""), ""]
    for fig in figures:
        lines.append(f"![{fig}]({fig})")
    return "\n".join(lines) + "\n"

