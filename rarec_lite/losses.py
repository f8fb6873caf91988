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
  loss) applies it per LLM layer between the *contextualised ID representation* (``a``: the
  ID part of that layer's soft prompt) and the text-only representation (``b``) of the same
  user or item, with the other users/items of the batch as negatives. A soft prompt that
  carries nothing cannot lower it (all ``a_i`` equal gives ``log B``).
* Sampled softmax (:func:`sampled_softmax_loss`): an optional ranking loss over the same
  negatives, closer to what full-ranking HR@K / NDCG@K reward.

We use **cosine** similarity in InfoNCE (not the raw dot product): hidden states of
different layers have very different norms, and cosine makes one temperature ``tau`` mean
the same thing at every layer.

Duplicated items in a batch (two users with the same target) would be false negatives;
pass ``item_ids`` / ``ids`` and such pairs are left out of the negatives (and an item present
twice is one negative, not two). Both ranking losses also take ``extra_items``: item-tower
states of uniformly sampled catalogue items, cached without gradient, so a step sees hundreds
of negatives instead of ``B - 1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["bpr_loss", "sampled_softmax_loss", "info_nce", "alignment_loss"]


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


def _negative_mask(ids: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """(B, B) bool: True where column j is a negative for row i.

    Without ids: every ``j != i``. With ids: ``j`` is a negative for ``i`` when its id differs from
    ``ids[i]`` (a column with the row's own id is the same user/item, not a negative) **and** it is
    the first column holding that id (an item that appears twice in the batch is one negative, not
    two). So a row's candidates are its positive plus one column per *distinct* other id, and
    all-equal logits give ``log(number of distinct ids)``: ids [7, 3, 7] -> ln 2 for every row.
    """
    negative = ~torch.eye(batch, dtype=torch.bool, device=device)
    if ids is not None:
        ids = torch.as_tensor(ids, device=device)
        if ids.shape != (batch,):
            raise ValueError(f"ids must have shape ({batch},); got {tuple(ids.shape)}")
        same = ids[:, None] == ids[None, :]
        first = same.int().argmax(dim=0) == torch.arange(batch, device=device)  # column j is its id's first
        negative &= ~same & first[None, :]
    return negative


def _extra_negative_mask(ids: torch.Tensor | None, extra_ids: torch.Tensor | None, batch: int,
                         extra: int, device) -> torch.Tensor:
    """(B, N) bool: cached extra item ``n`` is a negative for row ``i`` unless it is row i's own item."""
    keep = torch.ones(batch, extra, dtype=torch.bool, device=device)
    if ids is not None and extra_ids is not None:
        ids, extra_ids = torch.as_tensor(ids, device=device), torch.as_tensor(extra_ids, device=device)
        if extra_ids.shape != (extra,):
            raise ValueError(f"extra_ids must have shape ({extra},); got {tuple(extra_ids.shape)}")
        keep &= ids[:, None] != extra_ids[None, :]
    return keep


def _scores_with_extra(user, item, item_ids, scale, extra_items, extra_ids):
    """Scaled scores ``(B, B + N)`` and the matching negative mask (in-batch first, then the extras)."""
    _check_pair(user, item, ("user", "item"))
    if not scale > 0:
        raise ValueError(f"scale must be > 0; got {scale}")
    B = user.shape[0]
    scores = scale * (user @ item.T)  # (B, B): s_ij
    negative = _negative_mask(item_ids, B, scores.device)
    if extra_items is not None and extra_items.shape[0] > 0:
        if extra_items.dim() != 2 or extra_items.shape[1] != user.shape[1]:
            raise ValueError(f"extra_items must be (N, {user.shape[1]}); got {tuple(extra_items.shape)}")
        extra = scale * (user @ extra_items.to(user.dtype).T)  # (B, N)
        scores = torch.cat([scores, extra], dim=1)
        negative = torch.cat([negative, _extra_negative_mask(item_ids, extra_ids, B, extra.shape[1],
                                                             scores.device)], dim=1)
    return scores, negative


def bpr_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor | None = None,
             scale: float = 1.0, extra_items: torch.Tensor | None = None,
             extra_ids: torch.Tensor | None = None) -> torch.Tensor:
    """BPR over in-batch (and optional cached) negatives: mean over pairs of ``-log sigmoid(s_ii - s_ij)``.

    Args:
        user: (B, H) user-tower vectors.
        item: (B, H) item-tower vectors; row ``i`` is user ``i``'s positive (target) item.
        item_ids: optional (B,) ids of the items; a column with row ``i``'s own id is not a
            negative for ``i`` (it is the same item), and an item present twice counts once.
        scale: ``c > 0`` in ``s_ij = c * <user_i, item_j>``. A positive constant changes no
            ranking, only how soon the sigmoid saturates: LLM hidden states have norms in the
            tens, so raw dot products differ by hundreds and BPR sits in its linear tail;
            for standardised states (``<z, z> ~ H``) the trainer uses ``c = 1/H``
            (:class:`rarec_lite.train.TrainConfig` ``score_scale``).
        extra_items: optional (N, H) more negatives, e.g. item-tower states of uniformly sampled
            catalogue items encoded without gradient (:mod:`rarec_lite.train`); the user tower
            learns from all of them.
        extra_ids: (N,) their ids (an extra equal to row ``i``'s target is not its negative).

    Returns:
        Scalar tensor (nats).

    Raises:
        ValueError: shapes differ, are not 2-D, ``B < 2``, or no pair has a negative.

    Source: Rendle et al. 2009, Eq. 3; RA-Rec (Yu et al. 2024) trains its two towers with it.
    """
    scores, negative = _scores_with_extra(user, item, item_ids, scale, extra_items, extra_ids)
    if not negative.any():
        raise ValueError("bpr_loss: no negative pair in the batch (all item_ids equal)")
    diff = scores.diagonal()[:, None] - scores  # s_ii - s_ij (diagonal of the (B, B) block)
    return -F.logsigmoid(diff[negative]).mean()


def sampled_softmax_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor | None = None,
                         scale: float = 1.0, extra_items: torch.Tensor | None = None,
                         extra_ids: torch.Tensor | None = None, log_q: torch.Tensor | None = None,
                         extra_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """Sampled softmax: ``-log softmax(s_i.)[i]`` over the positive and every negative of row ``i``.

    The same candidates as :func:`bpr_loss` (in-batch targets, deduplicated, plus ``extra_items``),
    but one cross-entropy per row: it rewards putting the target *above all* negatives, which
    is what HR@K / NDCG@K over the full catalogue measure (BPR's mean over pairs rewards AUC).
    Uniformly sampled extras need no logQ correction (their log-probability is a constant); the
    in-batch negatives follow the training targets' distribution, which data construction makes
    close to uniform over popularity buckets (Sec. 3 of RA-Rec; Yi et al. 2019 for logQ).

    **logQ correction** (Yi et al. 2019, "Sampling-bias-corrected neural modeling", Eq. 3): when the
    extras are drawn with probability ``q_j`` (e.g. proportional to popularity, so that the candidates
    look like the full catalogue's hard part), every candidate column's logit becomes
    ``s_ij - log q_j``; the in-batch columns get ``log_q`` (B,), the extras ``extra_log_q`` (N,). The
    trainer applies the popularity distribution to both (:class:`rarec_lite.train.TrainConfig`
    ``negative_sampling``); constant offsets cancel, so ``q`` need not be normalised.

    Returns:
        Scalar tensor (nats); ``log(1 + negatives)`` when all (corrected) logits are equal.

    Raises:
        ValueError: as :func:`bpr_loss`; ``log_q`` / ``extra_log_q`` given alone or of the wrong shape.
    """
    scores, negative = _scores_with_extra(user, item, item_ids, scale, extra_items, extra_ids)
    B = scores.shape[0]
    if (log_q is None and extra_log_q is not None) or (log_q is not None and scores.shape[1] > B and extra_log_q is None):
        raise ValueError("sampled_softmax_loss: give log_q (B,) together with extra_log_q (N,) when there are extras")
    if log_q is not None:
        correction = torch.as_tensor(log_q, dtype=scores.dtype, device=scores.device)
        if scores.shape[1] > B:
            correction = torch.cat([correction, torch.as_tensor(extra_log_q, dtype=scores.dtype, device=scores.device)])
        if correction.shape != (scores.shape[1],):
            raise ValueError(f"log_q + extra_log_q must give one value per candidate column ({scores.shape[1]}); "
                             f"got {tuple(correction.shape)}")
        scores = scores - correction[None, :]
    if not negative.any():
        raise ValueError("sampled_softmax_loss: no negative in the batch (all item_ids equal)")
    keep = negative.clone()
    keep[:, :B] |= torch.eye(B, dtype=torch.bool, device=scores.device)
    logits = scores.masked_fill(~keep, float("-inf"))
    return F.cross_entropy(logits, torch.arange(B, device=scores.device))


def info_nce(
    a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1, ids: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE: ``a_i`` must pick ``b_i`` among ``b_1..b_B`` (cosine similarity / temperature).

    ``loss = mean_i -log( exp(cos(a_i,b_i)/tau) / sum_j exp(cos(a_i,b_j)/tau) )``. One
    direction only (``a`` queries, ``b`` keys), as in CPC.

    Args:
        a: (B, H) queries (RA-Rec: the layer's ID-side representation, what the soft prompt carries).
        b: (B, H) keys (RA-Rec: text-only representation of the same users/items at that layer).
        temperature: ``tau > 0`` (dimensionless).
        ids: optional (B,) ids; a column with row ``i``'s id (other than ``i``) leaves ``i``'s
            denominator, and a repeated id counts once (ids [7, 3, 7], equal logits -> ln 2).

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
        keep = _negative_mask(ids, logits.shape[0], logits.device)
        keep |= torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(~keep, float("-inf"))
    targets = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, targets)


def alignment_loss(
    user: torch.Tensor,
    item: torch.Tensor,
    user_id_layers: Sequence[torch.Tensor] = (),
    user_text_layers: Sequence[torch.Tensor] = (),
    item_id_layers: Sequence[torch.Tensor] = (),
    item_text_layers: Sequence[torch.Tensor] = (),
    lam: float = 0.1,
    temperature: float = 0.1,
    item_ids: torch.Tensor | None = None,
    score_scale: float = 1.0,
    user_ids: torch.Tensor | None = None,
    extra_items: torch.Tensor | None = None,
    extra_ids: torch.Tensor | None = None,
    rank_loss: str = "bpr",
    log_q: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """RA-Rec's training objective: ``ranking loss + lam * InfoNCE`` (InfoNCE averaged over layers and towers).

    Args:
        user, item: (B, H) scored states of the two towers (pooled final states, standardised
            as the evaluation scores them).
        user_id_layers: per layer ``l``, (B, H) the user's **ID-side representation** ``d^(l)``:
            what the layer's soft prompt carries (:meth:`rarec_lite.alignment.RAAlignment.id_representations`).
        user_text_layers: per layer, (B, H) the text-only representation of the same users at
            that layer (cached; :class:`rarec_lite.train.TextCache`).
        item_id_layers, item_text_layers: the same for the item tower.
        lam: weight of InfoNCE; ``lam = 0`` is the "w/o InfoNCE" ablation (InfoNCE is then
            not computed and reported as 0).
        temperature: InfoNCE temperature ``tau``.
        item_ids: optional (B,) target ids (duplicates are not negatives, in every loss).
        score_scale: ``scale`` of :func:`bpr_loss`.
        user_ids: optional (B,) user ids for the user-side InfoNCE.
        extra_items, extra_ids: cached extra negatives of the ranking loss (see :func:`bpr_loss`).
        rank_loss: ``"bpr"`` (the paper's) or ``"softmax"`` (:func:`sampled_softmax_loss`).
        log_q, extra_log_q: the softmax's logQ correction (see :func:`sampled_softmax_loss`); ``"softmax"`` only.

    Returns:
        ``{"bpr", "infonce", "total"}`` scalar tensors; ``bpr`` is the ranking loss (BPR or
        sampled softmax), ``total = bpr + lam * infonce``, ``infonce = mean over the 2 * L
        (tower, layer) terms``.

    Because the ID side is the soft prompt itself, InfoNCE is ``log B`` for a soft prompt that
    carries nothing (every user's ``d^(l)`` equal) and falls only when the reparameterization
    maps each ID embedding to something that picks out *that* user's/item's text representation.

    Raises:
        ValueError: ``lam > 0`` but no layers given, layer lists of different lengths, an
            unknown ``rank_loss``.

    Source: RA-Rec (Yu et al. 2024), Sec. 3, training objective of the alignment module.
    """
    if rank_loss == "bpr":
        if log_q is not None or extra_log_q is not None:
            raise ValueError("the logQ correction (log_q) is for rank_loss='softmax'; BPR has none")
        bpr = bpr_loss(user, item, item_ids, score_scale, extra_items, extra_ids)
    elif rank_loss == "softmax":
        bpr = sampled_softmax_loss(user, item, item_ids, score_scale, extra_items, extra_ids, log_q, extra_log_q)
    else:
        raise ValueError(f"rank_loss must be 'bpr' or 'softmax'; got {rank_loss!r}")
    if lam == 0:
        zero = bpr.new_zeros(())
        return {"bpr": bpr, "infonce": zero, "total": bpr}
    pairs = [(user_id_layers, user_text_layers, user_ids, "user"), (item_id_layers, item_text_layers, item_ids, "item")]
    terms = []
    for id_side, text, ids, name in pairs:
        if len(id_side) != len(text):
            raise ValueError(f"{name}: {len(id_side)} ID-side layers but {len(text)} text-only layers")
        terms += [info_nce(d, t.to(d.dtype), temperature, ids) for d, t in zip(id_side, text)]
    if not terms:
        raise ValueError("lam > 0 needs per-layer states (user_id_layers/item_id_layers and their text-only pairs)")
    nce = torch.stack(terms).mean()
    return {"bpr": bpr, "infonce": nce, "total": bpr + lam * nce}
