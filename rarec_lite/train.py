"""Training the RA-Rec alignment module: ranking loss + lambda * InfoNCE, resumable.

Read :func:`train_alignment` top to bottom; it is the whole loop:

1. take a batch of :class:`~rarec_lite.sampling.Sample` (user history -> target item);
2. **fresh negatives**: draw ``negatives`` catalogue items (seeded by the step; uniformly, or by popularity
   with the softmax's logQ correction: ``TrainConfig.negative_sampling``) and encode them through the
   *current* item tower without gradient;
3. user tower: the hybrid prompt of the sample + the frozen SASRec embedding of its history;
   item tower: the target's text prompt + the target's frozen SASRec item embedding; the pooled
   final states go through each tower's standardisation when it has one
   (:meth:`rarec_lite.alignment.TwoTower.set_standardization`), as in the evaluation;
4. loss = ranking loss (BPR, or sampled softmax) over the in-batch targets **and** the fresh
   negatives + lambda * InfoNCE, per layer, between each tower's ID-side representation (what
   the soft prompt carries) and the cached text-only representation of the same user / item
   (:meth:`rarec_lite.alignment.TwoTower.loss`, the objective, read it there);
5. AdamW step on the alignment parameters only (the LLM and SASRec are frozen), learning rate
   with linear warm-up and cosine decay; after the first step, a **gradient guard**: every
   trainable tensor must have received a finite, non-zero gradient, else a clear error
   (a frozen 4-bit layer that silently passes no gradient trains nothing);
6. with ``restandardize``: both towers' standardisation statistics follow the towers as they
   train, an exponential moving average (``stats_momentum``) of this step's states (items: the
   uniform negatives, an unbiased sample of the catalogue; users: the batch), so the loss scores
   what the evaluation will (it recomputes the statistics of the trained towers);
7. every ``checkpoint_every`` steps and at the end, an atomic checkpoint
   (``out_dir/checkpoint.safetensors``: parameters, AdamW state, step, RNG state, losses and the
   statistics). Calling the function again with the same ``out_dir`` resumes exactly where it stopped.

**Data-parallel** (``accelerate launch`` / ``torchrun``, :mod:`rarec_lite.distributed`): every rank
draws the same batch and the same negatives, runs its LLM copy on its share of them
(:meth:`rarec_lite.alignment.TwoTower.loss`, :meth:`~rarec_lite.alignment.TwoTower.encode_batched`),
the gradients are averaged over the ranks, and every rank keeps identical parameters, optimizer
state and statistics; rank 0 writes the checkpoint. Nothing in it depends on the number of
processes, so a run resumes with another one. The result equals one process's up to floating-point
summation order (a batch split over ranks pads to other lengths).

**Why the negatives are encoded at every step, not cached.** An earlier version kept a cache of
negative item states refreshed every 50 steps. The towers learned to tell a fresh item state from
a stale one (the soft prompt moves every item state while the gate opens): on Clothing the
sampled-softmax loss fell from 6.8 to 3.1 within 50 steps and jumped back to 6.8 after each
refresh, BPR likewise (0.08 -> 0.73), and the test ranking got *worse* than at step 0. Fresh
negatives cost one no-gradient forward pass of ``negatives`` short item prompts per step.

Source: RA-Rec (Yu et al. 2024, arXiv 2402.04527), Sec. 3 (training objective).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from rarec_lite import distributed
from rarec_lite.files import atomic_write_json, load_checkpoint, save_checkpoint
from rarec_lite.sampling import Sample

__all__ = ["TrainConfig", "TrainResult", "TextCache", "build_text_cache", "train_alignment", "check_gradients",
           "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.safetensors"


@dataclass
class TrainConfig:
    """Hyper-parameters of the alignment training.

    Attributes:
        steps: optimisation steps (ignored when ``epochs`` is set).
        epochs: passes over the samples; ``steps = ceil(epochs * (N // batch_size))``.
        batch_size: samples per step (>= 2: the losses use in-batch negatives); the last
            incomplete batch of an epoch is dropped.
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        lam: weight lambda of InfoNCE (0 = the "w/o InfoNCE" ablation). InfoNCE compares, per
            layer, the ID-side representation centred on its batch mean with the text-only one
            centred on the cache's mean, both divided by the text's per-dimension standard
            deviation (a few massive-activation dimensions would otherwise decide every cosine).
            Centring the ID side in the batch keeps the floor at ``log B`` for an empty soft prompt;
            standardising it with the text's mean instead started every run above ``log B`` and
            barely fell (measured on the Clothing cache: 3.31 -> 2.91 in 150 steps vs 2.82 -> 2.54).
        temperature: InfoNCE temperature tau.
        score_scale: the ranking loss scores ``score_scale * <u, v>``; ``None`` = ``1/H``
            (see :func:`rarec_lite.losses.bpr_loss`; no ranking changes, only the training dynamics).
            Standardised states have ``<z, z> ~ H``, so ``1/H`` keeps a matched pair's logit near 1;
            with ``1/sqrt(H)`` the zero-shot logits spanned tens of nats, the sampled softmax started
            at 12 nats (above the uniform guess) and its linear stand-in on Clothing reached HR@100
            0.0595 vs 0.0645 with ``1/H`` (150 steps).
        seed: seed of the batch order (epoch ``e`` uses ``seed * 100003 + e``).
        max_user_tokens: user prompts are truncated to this many tokens.
        max_item_tokens: item prompts are truncated to this many tokens.
        grad_clip: max global gradient norm (``None`` = no clipping).
        log_every: steps between progress-bar loss updates.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        rank_loss: ``"bpr"`` (the paper's) or ``"softmax"`` (sampled softmax, :mod:`rarec_lite.losses`).
        negatives: catalogue items drawn at every step (``negative_sampling``), encoded by the current
            item tower without gradient, used as extra negatives of every row (0 = in-batch only).
            64 is enough: a linear stand-in of the towers on the cached Clothing states reached
            HR@100 0.1065 with 64, 0.1085 with 512, 0.0985 with in-batch negatives only.
        restandardize: let both towers' standardisation statistics follow the training (an
            exponential moving average of each step's states; only when the tower is standardised;
            item statistics need ``negatives >= 2``).
        stats_momentum: weight of the old statistics in that moving average.
        warmup: share of the steps with a linear learning-rate warm-up (then cosine decay to 0;
            ``schedule="constant"`` keeps ``lr``).
        schedule: ``"cosine"`` or ``"constant"``.
        gate_lr_scale: the learned gates (per layer and tower with the gated attention, one scalar per
            tower with the joint one; :class:`rarec_lite.alignment.RAAlignment`)
            train with ``lr * gate_lr_scale`` (steps of ``lr`` would barely move a gate).
        gate_warmup: share of the steps over which the gate's offset rises linearly from the
            module's ``gate_init`` (the zero-shot model) to 0.
        negative_sampling: ``"uniform"`` (without replacement) or ``"popularity"``: drawn with
            replacement with probability proportional to the item's training-interaction count + 1
            (``train_alignment``'s ``item_popularity``), with the logQ correction on every candidate
            column of the sampled softmax (``rank_loss="softmax"`` only; Yi et al. 2019). Uniform
            negatives are mostly long-tail items, easy to tell from a target; on a last-layer probe
            (README "Results", RA-Rec point 6) BPR against them made full ranking worse while its loss fell,
            and the popularity-drawn softmax with logQ was the first objective under which training helped.
            With ``negatives = 0`` only the in-batch targets' columns get the correction.
    """

    steps: int = 100
    epochs: float | None = None
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    lam: float = 0.1
    temperature: float = 0.1
    score_scale: float | None = None
    seed: int = 0
    max_user_tokens: int = 64
    max_item_tokens: int = 24
    grad_clip: float | None = 1.0
    log_every: int = 10
    checkpoint_every: int = 50
    rank_loss: str = "bpr"
    negatives: int = 0
    restandardize: bool = True
    stats_momentum: float = 0.95
    warmup: float = 0.1
    schedule: str = "cosine"
    gate_lr_scale: float = 10.0
    gate_warmup: float = 0.3
    negative_sampling: str = "uniform"

    def __post_init__(self):
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"negative_sampling must be 'uniform' or 'popularity'; got {self.negative_sampling!r}")
        if self.negative_sampling == "popularity" and self.rank_loss != "softmax":
            raise ValueError("negative_sampling='popularity' needs rank_loss='softmax' (its logQ correction is a "
                             f"softmax's; got rank_loss={self.rank_loss!r})")

    # fields that must match to resume a checkpoint (the others may change; more steps are allowed,
    # and then the lr schedule and the gate warm-up follow the new total)
    RESUME_KEYS = ("batch_size", "lr", "weight_decay", "lam", "temperature", "score_scale", "seed",
                   "max_user_tokens", "max_item_tokens", "grad_clip", "rank_loss", "negatives",
                   "restandardize", "stats_momentum", "warmup", "schedule", "gate_lr_scale", "gate_warmup",
                   "negative_sampling")

    def lr_factor(self, step: int, total: int) -> float:
        """Multiplier of ``lr`` at 0-based ``step`` of ``total``: linear warm-up over
        ``warmup * total`` steps, then cosine decay to 0 (``schedule="cosine"``), or 1."""
        if self.schedule == "constant":
            return 1.0
        warm = max(1, int(round(self.warmup * total)))
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def gate_offset(self, step: int, total: int, gate_init: float | None) -> float:
        """The gate's offset at 0-based ``step``: ``gate_init`` at step 0, linearly to 0 at
        ``gate_warmup * total`` steps, then 0 (0 when there is no gate)."""
        if gate_init is None:
            return 0.0
        warm = self.gate_warmup * total
        return 0.0 if warm <= 0 or step >= warm else gate_init * (1.0 - step / warm)

    def total_steps(self, num_samples: int) -> int:
        """Steps to run for ``num_samples`` samples."""
        if self.epochs is None:
            return int(self.steps)
        per_epoch = num_samples // min(self.batch_size, num_samples)
        return int(math.ceil(self.epochs * per_epoch))


@dataclass
class TrainResult:
    """What a training run did: per-step losses (nats), time, size.

    Attributes:
        bpr, infonce, total: one float per step, from step 1 (includes steps before a resume).
        seconds: wall-clock seconds spent in training steps (summed over resumes).
        steps: steps done.
        trainable_params: trainable scalars of the alignment module.
        samples_used: distinct training samples.
        resumed_from: the step the last call started at (0 = fresh).
        checkpoint: path of the final checkpoint.
    """

    bpr: list[float]
    infonce: list[float]
    total: list[float]
    seconds: float
    steps: int
    trainable_params: int
    samples_used: int
    resumed_from: int = 0
    checkpoint: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TextCache:
    """Text-only per-layer representations (InfoNCE's fixed side), computed once.

    Attributes:
        user_layers: (N, L, H) pooled states of each sample's text-only user prompt at the
            input of every layer (:meth:`rarec_lite.alignment.TwoTower.encode`), row k = ``samples[k]``.
        item_layers: (M, L, H) the same for the text-only item prompts of ``item_ids``.
        item_ids: (M,) int64 item ids of the rows of ``item_layers``.
    """

    user_layers: torch.Tensor
    item_layers: torch.Tensor
    item_ids: torch.Tensor
    _row: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._row = {int(i): r for r, i in enumerate(self.item_ids.tolist())}

    def items(self, ids: Sequence[int]) -> torch.Tensor:
        """(B, L, H) cached states of items ``ids``; ``KeyError`` names a missing item."""
        try:
            rows = [self._row[int(i)] for i in ids]
        except KeyError as exc:
            raise KeyError(f"item {exc.args[0]} is not in the text cache") from None
        return self.item_layers[rows]

    def layer_stats(self, side: str, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer mean and standard deviation ``(L, H)`` each of the ``"user"`` or ``"item"``
        rows: InfoNCE compares standardised states at each layer (a few massive-activation
        dimensions would otherwise make every cosine close to 1)."""
        x = (self.user_layers if side == "user" else self.item_layers).float()
        if x.shape[0] < 2:
            return x.mean(0), torch.ones_like(x[0])
        return x.mean(0), x.std(0).clamp_min(eps)

    def save(self, path: str | Path) -> Path:
        """Atomic safetensors file."""
        return save_checkpoint(path, {"user_layers": self.user_layers, "item_layers": self.item_layers,
                                      "item_ids": self.item_ids}, {"kind": "text_cache"})

    @classmethod
    def load(cls, path: str | Path) -> "TextCache":
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") != "text_cache":
            raise ValueError(f"{path}: not a text cache (metadata kind={meta.get('kind')!r})")
        return cls(tensors["user_layers"], tensors["item_layers"], tensors["item_ids"])


def build_text_cache(tower, user_texts: Sequence[str], item_texts: Sequence[str], item_ids: Sequence[int],
                     batch_size: int = 64, max_user_tokens: int | None = 64, max_item_tokens: int | None = 24,
                     progress: bool | None = None) -> TextCache:
    """Encode the text-only prompts once (no soft prompt) and keep every layer's pooled state.

    Args:
        tower: a :class:`rarec_lite.alignment.TwoTower` (its alignment is not used).
        user_texts: one text-only user prompt per training sample (e.g. the ID Translation
            prompt of the sample's history: the user as the LLM reads it from text alone).
        item_texts: text-only prompts of ``item_ids`` (the item text prompt).
        item_ids: the items to cache (the samples' targets suffice).

    Returns:
        :class:`TextCache` with float16 (N, L, H) and (M, L, H) tensors.
    """
    if len(item_texts) != len(item_ids):
        raise ValueError(f"{len(item_texts)} item texts for {len(item_ids)} item ids")
    _, users = tower.encode_text_only(list(user_texts), "user", True, batch_size, max_user_tokens, progress)
    _, items = tower.encode_text_only(list(item_texts), "item", True, batch_size, max_item_tokens, progress)
    return TextCache(users, items, torch.as_tensor(list(item_ids), dtype=torch.int64))


# ------------------------------------------------------------------------------------- helpers
def _batch_indices(step: int, num_samples: int, batch_size: int, seed: int) -> list[int]:
    """Sample indices of step ``step`` (0-based): epoch ``step // per_epoch`` is a fresh
    permutation seeded by ``(seed, epoch)``, so the order depends on the step only (exact resume)."""
    per_epoch = num_samples // batch_size
    epoch, pos = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(num_samples, generator=gen)
    return perm[pos * batch_size:(pos + 1) * batch_size].tolist()


def _save(path: Path, alignment, optimizer, step: int, history: dict, seconds: float, cfg: TrainConfig,
          num_samples: int, stats: dict[str, torch.Tensor]) -> None:
    tensors = {f"alignment.{k}": v for k, v in alignment.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"stats.{k}": v.contiguous() for k, v in stats.items()})
    meta = {"step": step, "seconds": seconds, "history": history, "config": dataclasses.asdict(cfg),
            "num_samples": num_samples, "total_steps": cfg.total_steps(num_samples),
            "param_groups": opt["param_groups"], "optim_scalars": scalars}
    save_checkpoint(path, tensors, meta)


# resume keys added after checkpoints were written: their value in an older checkpoint
_ADDED_LATER = {"negative_sampling": "uniform"}


def _load(path: Path, alignment, optimizer, cfg: TrainConfig, num_samples: int) -> tuple[int, dict, float, dict]:
    tensors, meta = load_checkpoint(path)
    old = meta.get("config", {})
    changed = [k for k in TrainConfig.RESUME_KEYS if old.get(k, _ADDED_LATER.get(k)) != getattr(cfg, k)]
    if changed:
        raise ValueError(f"{path}: cannot resume, config differs in {changed} "
                         f"(checkpoint {[old.get(k) for k in changed]}, now {[getattr(cfg, k) for k in changed]}); "
                         "use a new out_dir")
    if meta.get("num_samples") != num_samples:
        raise ValueError(f"{path}: checkpoint was trained on {meta.get('num_samples')} samples, now {num_samples}")
    prefix = "alignment."
    alignment.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta.get("optim_scalars", {}).items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples into lists
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    torch.set_rng_state(tensors["rng.torch"])
    stats = {k[len("stats."):]: v for k, v in tensors.items() if k.startswith("stats.")}
    return int(meta["step"]), meta["history"], float(meta["seconds"]), stats


def check_gradients(named_params, backbone_info) -> None:
    """The gradient guard: every trainable tensor must have a finite, non-zero gradient.

    Called after the first backward pass of :func:`train_alignment` in which the text can see the soft
    prompt (with the gated attention the warm-up factor is exactly 0 at step 0, so nothing but InfoNCE
    has a gradient there: the guard waits for step 1), leaving out the tensors that sit behind a gate
    that is exactly 0 (:meth:`rarec_lite.alignment.RAAlignment.closed_parameter_names`; they get a
    gradient once their gate moves). A frozen 4-bit layer that
    silently passes no gradient back (bitsandbytes 0.50.2 on CPUs with AVX512-BF16, after a
    forward pass under ``torch.no_grad()``: :func:`rarec_lite.llm.load_backbone` switches that path
    off) would otherwise train nothing while the report still counts the parameters.

    Args:
        named_params: ``(name, parameter)`` pairs of the trainable module.
        backbone_info: the backbone's :class:`rarec_lite.llm.BackboneInfo` (named in the error).

    Raises:
        RuntimeError: names the tensors without gradient, with zero gradient or with NaN/inf, the
            backbone and its quantization, and the likely causes.
    """
    missing, zero, bad = [], [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            bad.append(name)
        elif not p.grad.abs().sum() > 0:
            zero.append(name)
    if missing or zero or bad:
        parts = [f"{what}: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                 for what, names in (("no gradient", missing), ("zero gradient", zero), ("NaN/inf gradient", bad))
                 if names]
        name = getattr(backbone_info, "name", "?")
        quant = getattr(backbone_info, "quantization", None) or "none"
        raise RuntimeError(
            f"gradient guard after the first training step: {'; '.join(parts)} (backbone {name}, quantization {quant}). "
            "Likely causes: a 4-bit layer that passes no gradient back (bitsandbytes' CPU path for AVX512-BF16 "
            "after a no-grad pass: load the backbone with rarec_lite.llm.load_backbone, or use quantization=None), "
            "a detached prefix, or NaNs from fp16 overflow. Nothing was trained.")


def train_alignment(tower, samples: Sequence[Sample], user_prompts: Sequence[str], item_prompts: Sequence[str],
                    user_id_emb_fn: Callable[[Sequence[Sample]], torch.Tensor] | torch.Tensor | None,
                    item_id_emb: torch.Tensor | None, text_cache: TextCache | None, cfg: TrainConfig,
                    out_dir: str | Path, progress: bool | None = None,
                    item_popularity: Sequence[float] | None = None) -> TrainResult:
    """Train ``tower.alignment`` with a ranking loss + lambda * InfoNCE; resume from ``out_dir/checkpoint.safetensors``.

    Args:
        tower: :class:`rarec_lite.alignment.TwoTower` with an alignment module (the only
            part that trains). Its standardisation statistics follow the training in place (a moving average) when
            ``cfg.restandardize`` (and the tower has statistics).
        samples: N training samples (see :mod:`rarec_lite.sampling`).
        user_prompts: N hybrid user prompts, ``user_prompts[k]`` for ``samples[k]``.
        item_prompts: the item prompt of every item (index = item id).
        user_id_emb_fn: frozen user ID embeddings: a callable ``(batch of Samples) -> (B, d)``
            (e.g. SASRec ``encode`` of the padded histories) or an (N, d) tensor aligned with
            ``samples``. ``None`` only with ``use_id=False``.
        item_id_emb: (I, d) frozen SASRec item embeddings; ``None`` only with ``use_id=False``.
        text_cache: text-only representations (:func:`build_text_cache`); ``None`` only when
            ``cfg.lam == 0``.
        cfg: :class:`TrainConfig`.
        out_dir: where the checkpoint and ``train_result.json`` go.
        progress: tqdm bar (default: on when more than 20 steps).
        item_popularity: (I,) training-interaction counts (``Dataset.item_popularity()``); needed by
            ``cfg.negative_sampling="popularity"`` (probability of item ``i``: ``(count_i + 1) / sum``).

    Returns:
        :class:`TrainResult` (losses of every step so far, seconds, steps, trainable params).

    Raises:
        ValueError: no alignment; fewer than 2 samples; prompt/sample counts differ; missing
            ID embeddings or text cache; InfoNCE asked without an ID representation; a
            checkpoint written with a different config; popularity sampling without ``item_popularity``
            (or with one of the wrong length).
        RuntimeError: a backbone parameter would be optimised (it must be frozen), or the
            gradient guard fails (:func:`check_gradients`).
    """
    from rarec_lite.progress import tqdm

    alignment = tower.alignment
    n = len(samples)
    if alignment is None:
        raise ValueError("train_alignment needs a TwoTower with an alignment module (alignment=None is zero-shot)")
    if n < 2:
        raise ValueError(f"need at least 2 samples (in-batch negatives); got {n}")
    if len(user_prompts) != n:
        raise ValueError(f"{len(user_prompts)} user prompts for {n} samples")
    if alignment.use_id and (user_id_emb_fn is None or item_id_emb is None):
        raise ValueError("use_id=True needs user_id_emb_fn and item_id_emb")
    if cfg.lam > 0:
        if not alignment.use_id:
            raise ValueError("InfoNCE (lam > 0) contrasts the ID representation with the text: it needs use_id=True "
                             "(train the no-ID prefix with lam=0)")
        if text_cache is None:
            raise ValueError("cfg.lam > 0 needs a text_cache (build_text_cache)")
        if text_cache.user_layers.shape[0] != n:
            raise ValueError(f"text_cache has {text_cache.user_layers.shape[0]} users for {n} samples")
    batch_size = min(cfg.batch_size, n)
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2; got {cfg.batch_size}")

    # only the alignment parameters train; the LLM (and SASRec, whose outputs we detach) stay frozen
    named = [(k, p) for k, p in alignment.named_parameters() if p.requires_grad]
    frozen = {id(p) for p in tower.backbone.model.parameters()}
    if frozen & {id(p) for _, p in named} or any(p.requires_grad for p in tower.backbone.model.parameters()):
        raise RuntimeError("a backbone parameter requires grad or is in the optimizer; the LLM must be frozen")
    gates = [p for k, p in named if k.startswith("gate.")]
    others = [p for k, p in named if not k.startswith("gate.")]
    groups = [{"params": others, "lr": cfg.lr, "base_lr": cfg.lr}]
    if gates:
        groups.append({"params": gates, "lr": cfg.lr * cfg.gate_lr_scale, "base_lr": cfg.lr * cfg.gate_lr_scale,
                       "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def user_ids_emb(idx: list[int]) -> torch.Tensor | None:
        if not alignment.use_id:
            return None
        emb = user_id_emb_fn[idx] if torch.is_tensor(user_id_emb_fn) else user_id_emb_fn([samples[i] for i in idx])
        return emb.detach()

    num_items = len(item_prompts)
    follow_stats = bool(tower.stats) and cfg.restandardize
    log_p = None  # popularity sampling: log probability of drawing each item (the logQ correction)
    if cfg.negative_sampling == "popularity":
        if item_popularity is None or len(item_popularity) != num_items:
            raise ValueError(f"negative_sampling='popularity' needs item_popularity with one count per item ({num_items}); "
                             f"got {None if item_popularity is None else len(item_popularity)}")
        counts = np.asarray(item_popularity, dtype=np.float64) + 1.0
        sample_p = counts / counts.sum()
        log_p = torch.as_tensor(np.log(sample_p), dtype=torch.float32)

    def fresh_negatives(step: int) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """``negatives`` items drawn as ``cfg.negative_sampling`` says (seeded by the step: the same on
        resume) through the current item tower, no gradient: ``(ids (N,), raw states (N, H))``."""
        if cfg.negatives <= 0:
            return None, None
        rng = np.random.default_rng([cfg.seed, 7919, step])
        if log_p is not None:  # with replacement, proportional to popularity (logQ-corrected in the loss)
            ids = np.sort(rng.choice(num_items, size=cfg.negatives, replace=True, p=sample_p))
        else:
            ids = np.sort(rng.choice(num_items, size=min(cfg.negatives, num_items), replace=False))
        emb = item_id_emb[torch.as_tensor(ids)].detach() if alignment.use_id else None
        states = tower.encode_batched([item_prompts[i] for i in ids], "item", emb, 64, cfg.max_item_tokens,
                                      progress=False)  # no_grad inside
        return torch.as_tensor(ids, dtype=torch.int64), states

    def follow(tower_name: str, states: torch.Tensor) -> None:
        """One moving-average step of ``tower_name``'s statistics towards ``states`` (N >= 2, H)."""
        mu, sigma = tower.stats[tower_name]
        m = cfg.stats_momentum
        states = states.detach().float().cpu()
        var = m * sigma.pow(2) + (1 - m) * states.var(0)
        tower.stats[tower_name] = (m * mu + (1 - m) * states.mean(0), var.sqrt().clamp_min(1e-6))

    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_NAME
    step, history, seconds = 0, {"bpr": [], "infonce": [], "total": []}, 0.0
    if ckpt.exists():
        step, history, seconds, saved = _load(ckpt, alignment, optimizer, cfg, n)
        if "mu_user" in saved:  # the statistics as they were at that step
            tower.stats = {t: (saved[f"mu_{t}"], saved[f"sigma_{t}"]) for t in ("user", "item")}
    resumed_from = step
    total_steps = cfg.total_steps(n)
    score_scale = cfg.score_scale if cfg.score_scale is not None else 1.0 / tower.backbone.info.hidden_size
    if cfg.lam > 0:  # InfoNCE compares per-layer standardised states (fixed: the text side never changes)
        layer_stats = {t: text_cache.layer_stats(t) for t in ("user", "item")}
    tower.backbone.model.eval()  # no dropout in the frozen LLM
    alignment.train()

    bar = tqdm(total=total_steps, initial=step, desc="align", unit="step",
               disable=not (progress if progress is not None else total_steps > 20) or not distributed.is_main())
    checked = False
    while step < total_steps:
        t0 = time.perf_counter()
        alignment.gate_offset = cfg.gate_offset(step, total_steps, alignment.gate_init)
        idx = _batch_indices(step, n, batch_size, cfg.seed)
        targets = [samples[i].target for i in idx]

        # frozen ID embeddings (no gradient flows into SASRec)
        user_emb = user_ids_emb(idx)
        item_emb = item_id_emb[targets].detach() if alignment.use_id else None

        # RA-Rec's objective on this batch: both towers, the ranking loss, InfoNCE (alignment.TwoTower.loss)
        text_layers = None
        if cfg.lam > 0:
            text_layers = (text_cache.user_layers[idx], text_cache.items(targets), layer_stats)
        neg_ids, neg = fresh_negatives(step)
        losses = tower.loss([user_prompts[i] for i in idx], user_emb, [item_prompts[t] for t in targets], item_emb,
                            torch.tensor(targets), torch.tensor([samples[i].user for i in idx]),
                            lam=cfg.lam, temperature=cfg.temperature, score_scale=score_scale,
                            text_layers=text_layers, extra_items=neg, extra_ids=neg_ids,
                            rank_loss=cfg.rank_loss, max_user_tokens=cfg.max_user_tokens,
                            max_item_tokens=cfg.max_item_tokens,
                            log_q=None if log_p is None else log_p[targets],
                            extra_log_q=None if log_p is None or neg_ids is None else log_p[neg_ids])

        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        distributed.all_reduce_gradients([p for _, p in named])  # data-parallel: the whole batch's gradient
        if not checked and alignment.soft_prompt_visible:  # the first step whose soft prompt the text can see
            closed = alignment.closed_parameter_names()
            check_gradients([(k, p) for k, p in named if k not in closed], tower.backbone.info)
            checked = True
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.grad_clip)
        factor = cfg.lr_factor(step, total_steps)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        optimizer.step()
        if follow_stats:  # the statistics follow the towers (item: the negatives; user: the batch)
            if neg is not None and len(neg) >= 2:
                follow("item", neg)
            if tower.user_sigma == "item":  # the user mean stays (text-only), the scale is the items'
                tower.stats["user"] = (tower.stats["user"][0], tower.stats["item"][1].clone())
            else:
                follow("user", losses["user_states"])

        step += 1
        seconds += time.perf_counter() - t0
        for key in history:
            history[key].append(float(losses[key].detach()))
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            bar.set_postfix(loss=f"{history['bpr'][-1]:.3f}", nce=f"{history['infonce'][-1]:.3f}")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            stats = {f"{k}_{t}": v for t in tower.stats for k, v in zip(("mu", "sigma"), tower.stats[t])}
            if distributed.is_main():  # every rank holds the same state: one writes it
                _save(ckpt, alignment, optimizer, step, history, seconds, cfg, n, stats)
            distributed.barrier()
    bar.close()
    alignment.gate_offset = 0.0  # trained: the gate is what was learned

    result = TrainResult(history["bpr"], history["infonce"], history["total"], seconds, step,
                         alignment.num_trainable(), n, resumed_from, str(ckpt))
    if distributed.is_main():
        atomic_write_json(out_dir / "train_result.json", result.as_dict())
    distributed.barrier()
    return result


def load_alignment(alignment, out_dir: str | Path) -> int:
    """Load trained parameters from ``out_dir/checkpoint.safetensors`` into ``alignment``; return the step.

    The gate's warm-up offset is set to the value of that step (0 once the warm-up is over, so a
    finished run's module is open exactly as it was trained).
    """
    tensors, meta = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    alignment.load_state_dict({k[len("alignment."):]: v for k, v in tensors.items() if k.startswith("alignment.")})
    step = int(meta.get("step", 0))
    known = {k: v for k, v in meta.get("config", {}).items() if k in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**known)
    total = int(meta.get("total_steps", cfg.total_steps(int(meta.get("num_samples", 2)))))
    alignment.gate_offset = 0.0 if step >= total else cfg.gate_offset(step, total, alignment.gate_init)
    return step
