"""Training the RA-Rec alignment module: BPR + lambda * InfoNCE, resumable.

Read :func:`train_alignment` top to bottom; it is the whole loop:

1. take a batch of :class:`~rarec_lite.sampling.Sample` (user history -> target item);
2. user tower: the hybrid prompt of the sample + the frozen SASRec embedding of its history;
   item tower: the target's text prompt + the target's frozen SASRec item embedding; the pooled
   final states go through the tower's fixed standardisation when it has one
   (:meth:`rarec_lite.alignment.TwoTower.set_standardization`), as in the evaluation;
3. loss = BPR over in-batch negatives + lambda * InfoNCE, per layer, between each tower's
   hybrid representation and the cached text-only representation of the same user / item
   (:func:`rarec_lite.losses.alignment_loss`);
4. AdamW step on the alignment parameters only (the LLM and SASRec are frozen);
5. every ``checkpoint_every`` steps and at the end, an atomic checkpoint
   (``out_dir/checkpoint.safetensors``: parameters, AdamW state, step, RNG state, losses).
   Calling the function again with the same ``out_dir`` resumes exactly where it stopped.

Source: RA-Rec (Yu et al. 2024, arXiv 2402.04527), Sec. 3 (training objective).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from rarec_lite.files import atomic_write_json, load_checkpoint, save_checkpoint
from rarec_lite.losses import alignment_loss
from rarec_lite.sampling import Sample

__all__ = ["TrainConfig", "TrainResult", "TextCache", "build_text_cache", "train_alignment", "CHECKPOINT_NAME"]

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
        lam: weight lambda of InfoNCE (0 = the "w/o InfoNCE" ablation).
        temperature: InfoNCE temperature tau.
        score_scale: BPR's score is ``score_scale * <u, v>``; ``None`` = ``1/sqrt(H)``
            (see :func:`rarec_lite.losses.bpr_loss`; no ranking changes, only the training dynamics).
        seed: seed of the batch order (epoch ``e`` uses ``seed * 100003 + e``).
        max_user_tokens: user prompts are truncated to this many tokens.
        max_item_tokens: item prompts are truncated to this many tokens.
        grad_clip: max global gradient norm (``None`` = no clipping).
        log_every: steps between progress-bar loss updates.
        checkpoint_every: steps between checkpoints (one is always written at the end).
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

    # fields that must match to resume a checkpoint (the others may change, e.g. more steps)
    RESUME_KEYS = ("batch_size", "lr", "weight_decay", "lam", "temperature", "score_scale", "seed",
                   "max_user_tokens", "max_item_tokens", "grad_clip")

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
        user_layers: (N, L, H) pooled states of each sample's text-only user prompt, row k =
            ``samples[k]``.
        item_layers: (M, L, H) pooled states of the text-only item prompts of ``item_ids``.
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
          num_samples: int) -> None:
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
    meta = {"step": step, "seconds": seconds, "history": history, "config": dataclasses.asdict(cfg),
            "num_samples": num_samples, "param_groups": opt["param_groups"], "optim_scalars": scalars}
    save_checkpoint(path, tensors, meta)


def _load(path: Path, alignment, optimizer, cfg: TrainConfig, num_samples: int) -> tuple[int, dict, float]:
    tensors, meta = load_checkpoint(path)
    old = meta.get("config", {})
    changed = [k for k in TrainConfig.RESUME_KEYS if old.get(k) != getattr(cfg, k)]
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
    return int(meta["step"]), meta["history"], float(meta["seconds"])


# ------------------------------------------------------------------------------------- the loop
def train_alignment(tower, samples: Sequence[Sample], user_prompts: Sequence[str], item_prompts: Sequence[str],
                    user_id_emb_fn: Callable[[Sequence[Sample]], torch.Tensor] | torch.Tensor | None,
                    item_id_emb: torch.Tensor | None, text_cache: TextCache | None, cfg: TrainConfig,
                    out_dir: str | Path, progress: bool | None = None) -> TrainResult:
    """Train ``tower.alignment`` with BPR + lambda * InfoNCE; resume from ``out_dir/checkpoint.safetensors``.

    Args:
        tower: :class:`rarec_lite.alignment.TwoTower` with an alignment module (the only
            part that trains).
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

    Returns:
        :class:`TrainResult` (losses of every step so far, seconds, steps, trainable params).

    Raises:
        ValueError: no alignment; fewer than 2 samples; prompt/sample counts differ; missing
            ID embeddings or text cache; a checkpoint written with a different config.
        RuntimeError: a backbone parameter would be optimised (it must be frozen).
    """
    from tqdm.auto import tqdm

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
        if text_cache is None:
            raise ValueError("cfg.lam > 0 needs a text_cache (build_text_cache)")
        if text_cache.user_layers.shape[0] != n:
            raise ValueError(f"text_cache has {text_cache.user_layers.shape[0]} users for {n} samples")
    batch_size = min(cfg.batch_size, n)
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2; got {cfg.batch_size}")

    # only the alignment parameters train; the LLM (and SASRec, whose outputs we detach) stay frozen
    params = [p for p in alignment.parameters() if p.requires_grad]
    frozen = {id(p) for p in tower.backbone.model.parameters()}
    if frozen & {id(p) for p in params} or any(p.requires_grad for p in tower.backbone.model.parameters()):
        raise RuntimeError("a backbone parameter requires grad or is in the optimizer; the LLM must be frozen")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    out_dir = Path(out_dir)
    ckpt = out_dir / CHECKPOINT_NAME
    step, history, seconds = 0, {"bpr": [], "infonce": [], "total": []}, 0.0
    if ckpt.exists():
        step, history, seconds = _load(ckpt, alignment, optimizer, cfg, n)
    resumed_from = step
    total_steps = cfg.total_steps(n)
    score_scale = cfg.score_scale if cfg.score_scale is not None else tower.backbone.info.hidden_size ** -0.5
    tower.backbone.model.eval()  # no dropout in the frozen LLM
    alignment.train()

    bar = tqdm(total=total_steps, initial=step, desc="align", unit="step",
               disable=not (progress if progress is not None else total_steps > 20))
    while step < total_steps:
        t0 = time.perf_counter()
        idx = _batch_indices(step, n, batch_size, cfg.seed)
        batch = [samples[i] for i in idx]
        targets = [s.target for s in batch]

        # frozen ID embeddings (no gradient flows into SASRec)
        user_emb = item_emb = None
        if alignment.use_id:
            user_emb = (user_id_emb_fn[idx] if torch.is_tensor(user_id_emb_fn) else user_id_emb_fn(batch)).detach()
            item_emb = item_id_emb[targets].detach()

        # the two towers, with every layer's pooled state for InfoNCE
        u, u_layers = tower.encode_users([user_prompts[i] for i in idx], user_emb, per_layer=True,
                                         max_tokens=cfg.max_user_tokens)
        v, v_layers = tower.encode_items([item_prompts[t] for t in targets], item_emb, per_layer=True,
                                         max_tokens=cfg.max_item_tokens)
        u_text = v_text = ()
        if cfg.lam > 0:
            u_text = text_cache.user_layers[idx].unbind(1)  # L tensors (B, H)
            v_text = text_cache.items(targets).unbind(1)
        # BPR scores exactly what the evaluation ranks by: tower.score = <z(u), z(v)>
        losses = alignment_loss(tower.standardize(u), tower.standardize(v), u_layers, u_text, v_layers, v_text,
                                cfg.lam, cfg.temperature,
                                item_ids=torch.tensor(targets), score_scale=score_scale)

        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()

        step += 1
        seconds += time.perf_counter() - t0
        for key in history:
            history[key].append(float(losses[key].detach()))
        bar.update(1)
        if step % cfg.log_every == 0 or step == total_steps:
            bar.set_postfix(bpr=f"{history['bpr'][-1]:.3f}", nce=f"{history['infonce'][-1]:.3f}")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            _save(ckpt, alignment, optimizer, step, history, seconds, cfg, n)
    bar.close()

    result = TrainResult(history["bpr"], history["infonce"], history["total"], seconds, step,
                         alignment.num_trainable(), n, resumed_from, str(ckpt))
    atomic_write_json(out_dir / "train_result.json", result.as_dict())
    return result


def load_alignment(alignment, out_dir: str | Path) -> int:
    """Load trained parameters from ``out_dir/checkpoint.safetensors`` into ``alignment``; return the step."""
    tensors, meta = load_checkpoint(Path(out_dir) / CHECKPOINT_NAME)
    alignment.load_state_dict({k[len("alignment."):]: v for k, v in tensors.items() if k.startswith("alignment.")})
    return int(meta.get("step", 0))
