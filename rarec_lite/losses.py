"""The two losses of RA-Rec's alignment training: BPR and InfoNCE.

Both use **in-batch negatives**: in a batch of ``B`` (user, target item) pairs, pair ``i``
is the positive for user ``i`` and the other ``B - 1`` targets are its negatives. That is
why both losses need ``B >= 2`` (a batch of one has no negative) and raise otherwise.

* BPR (Rendle et al. 2009, "BPR: Bayesian Personalized Ranking from Implicit Feedback",
  Eq. 3): ``-log sigmoid(s_ui - s_uj)`` for a positive ``i`` and a negative ``j``, with
  ``s = <user, item>`` the dot-product score of the two towers.
* InfoNCE (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
  Coding", Eq. 4; in the cosine form with temperature of SimCLR, Chen et al. 2020, Eq. 1):
  ``-log softmax_j(cos(a_i, b_j) / tau)[i]``. RA-Rec (Yu et al. 2024, Sec. 3, alignment
  loss) applies it per LLM layer between the hybrid-prompt representation (``a``) and the
  text-only representation (``b``) of the same user or item.

We use **cosine** similarity in InfoNCE (not the raw dot product): hidden states of
different layers have very different norms, and cosine makes one temperature ``tau`` mean
the same thing at every layer.

Duplicated items in a batch (two users with the same target) would be false negatives;
pass ``item_ids`` / ``ids`` and such pairs are left out of the negatives.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "info_nce", "alignment_loss"]


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"{names[0]} and {names[1]} must be 2-D (B, H); got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} must have the same shape")
    if a.shape[0] < 2:
        raise ValueError(
            f"in-batch negatives need a batch of at least 2 pairs; got B={a.shape[0]} "
            "(use batch_size >= 2 and drop a last batch of one)"
        )


def _same_id_mask(ids: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """(B, B) bool: True where j is a negative for i (j != i and, if ids given, ids differ)."""
    negative = ~torch.eye(batch, dtype=torch.bool, device=device)
    if ids is not None:
        ids = torch.as_tensor(ids, device=device)
        if ids.shape != (batch,):
            raise ValueError(f"ids must have shape ({batch},); got {tuple(ids.shape)}")
        negative &= ids[:, None] != ids[None, :]
    return negative


def bpr_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor | None = None,
             scale: float = 1.0) -> torch.Tensor:
    """BPR over in-batch negatives: mean over pairs (i, j != i) of ``-log sigmoid(s_ii - s_ij)``.

    Args:
        user: (B, H) user-tower vectors.
        item: (B, H) item-tower vectors; row ``i`` is user ``i``'s positive (target) item.
        item_ids: optional (B,) ids of the items; a ``j`` with the same id as ``i`` is not
            used as a negative for ``i`` (it is the same item).
        scale: ``c > 0`` in ``s_ij = c * <user_i, item_j>``. A positive constant changes no
            ranking, only how soon the sigmoid saturates: LLM hidden states have norms in the
            tens, so raw dot products differ by hundreds and BPR sits in its linear tail;
            ``c = 1/sqrt(H)`` (as in scaled dot-product attention) keeps it in its useful range.

    Returns:
        Scalar tensor (nats). Scores are scaled dot products ``s_ij = c * <user_i, item_j>``.

    Raises:
        ValueError: shapes differ, are not 2-D, ``B < 2``, or every pair is a duplicate.

    Source: Rendle et al. 2009, Eq. 3; RA-Rec (Yu et al. 2024) trains its two towers with it.
    """
    _check_pair(user, item, ("user", "item"))
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")
    scores = scale * (user @ item.T)  # (B, B): s_ij
    negative = _same_id_mask(item_ids, scores.shape[0], scores.device)
    if not negative.any():
        raise ValueError("bpr_loss: no negative pair in the batch (all item_ids equal)")
    diff = scores.diagonal()[:, None] - scores  # s_ii - s_ij
    return -F.logsigmoid(diff[negative]).mean()


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE: ``a_i`` must pick ``b_i`` among ``b_1..b_B`` (cosine similarity / temperature).

    ``loss = mean_i -log( exp(cos(a_i,b_i)/tau) / sum_j exp(cos(a_i,b_j)/tau) )``. One
    direction only (``a`` queries, ``b`` keys), as in CPC.

    Args:
        a: (B, H) queries (RA-Rec: hybrid-prompt representation at one layer).
        b: (B, H) keys (RA-Rec: text-only representation of the same users/items).
        temperature: ``tau > 0`` (dimensionless).
        ids: optional (B,) ids; a ``j`` with ``ids[j] == ids[i]``, ``j != i`` is removed from
            ``i``'s denominator (it is the same user/item, not a negative).

    Returns:
        Scalar tensor (nats); ``log B`` for uninformative (all-equal) similarities.

    Raises:
        ValueError: shapes differ, are not 2-D, ``B < 2``, or ``temperature <= 0``.

    Source: van den Oord et al. 2018, Eq. 4; cosine + temperature as in SimCLR (Chen et al.
    2020, Eq. 1); per-layer use: RA-Rec (Yu et al. 2024), alignment loss.
    """
    _check_pair(a, b, ("a", "b"))
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature  # (B, B)
    if ids is not None:
        keep = _same_id_mask(ids, logits.shape[0], logits.device)
        keep |= torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


def alignment_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    user_layers: Sequence[torch.Tensor] = (),
    user_text_layers: Sequence[torch.Tensor] = (),
    item_layers: Sequence[torch.Tensor] = (),
    item_text_layers: Sequence[torch.Tensor] = (),
    lam: float = 0.1,
    temperature: float = 0.1,
    item_ids: torch.Tensor | None = None,
    score_scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """RA-Rec's training objective: ``BPR + lam * InfoNCE`` (InfoNCE averaged over layers and towers).

    Args:
        user, item: (B, H) pooled final states of the two towers (hybrid prompts).
        user_layers: per layer, (B, H) pooled states of the user tower (hybrid prompt).
        user_text_layers: per layer, (B, H) pooled states of the same users' text-only prompt.
        item_layers, item_text_layers: the same for the item tower.
        lam: weight of InfoNCE; ``lam = 0`` is the "w/o InfoNCE" ablation (InfoNCE is then
            not computed and reported as 0).
        temperature: InfoNCE temperature ``tau``.
        item_ids: optional (B,) target ids (duplicates are not negatives, in both losses).
        score_scale: ``scale`` of :func:`bpr_loss`.

    Returns:
        ``{"bpr", "infonce", "total"}`` scalar tensors; ``total = bpr + lam * infonce``,
        ``infonce = mean over the 2 * L (tower, layer) terms``.

    Raises:
        ValueError: ``lam > 0`` but no layers given, or layer lists of different lengths.

    Source: RA-Rec (Yu et al. 2024), training objective of the alignment module.
    """
    bpr = bpr_loss(user, item, item_ids, score_scale)
    if lam == 0:
        zero = bpr.new_zeros(())
        return {"bpr": bpr, "infonce": zero, "total": bpr}
    pairs = [(user_layers, user_text_layers, "user"), (item_layers, item_text_layers, "item")]
    terms = []
    for hybrid, text, name in pairs:
        if len(hybrid) != len(text):
            raise ValueError(f"{name}: {len(hybrid)} hybrid layers but {len(text)} text-only layers")
        ids = item_ids if name == "item" else None
        terms += [info_nce(h, t.to(h.dtype), temperature, ids) for h, t in zip(hybrid, text)]
    if not terms:
        raise ValueError("lam > 0 needs per-layer states (user_layers/item_layers and their text-only pairs)")
    nce = torch.stack(terms).mean()
    return {"bpr": bpr, "infonce": nce, "total": bpr + lam * nce}
