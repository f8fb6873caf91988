"""Evaluation shared by every method of the course: leave-one-out, full ranking, HR@K / NDCG@K / MRR.

The protocol (Kang & McAuley 2018, Sec. IV-B; RA-Rec, Yu et al. 2024, Sec. 4.1) is
leave-one-out: each user has exactly one held-out target item and a history. A method
gives every item of the catalogue a score; the user's own history items are removed from
the ranking (their score is set to ``-inf``, the target never is); the target's **0-based
rank** is the number of other items scored at least as high as it. From the ranks:

* ``HR@K``   = fraction of users with ``rank < K`` (hit ratio, a.k.a. Recall@K with one target);
* ``NDCG@K`` = mean of ``1 / log2(rank + 2)`` when ``rank < K``, else 0 (one relevant item,
  so the ideal DCG is 1);
* ``MRR``    = mean of ``1 / (rank + 1)`` (over the full ranking, no cut-off).

Two protocols are offered:

``"full-ranking"``
    the target against every item of the catalogue not in the history (the honest one,
    Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020);
``"sampled-100"``
    the target against 100 items drawn uniformly among the items the user has not seen
    (the protocol of the original SASRec paper). It inflates every number, so it is always
    labelled ``"sampled-100"`` in :class:`EvalResult` and in every table printed from it.

Per-user ranks are kept so that two methods can be compared on the same users with
:func:`paired_bootstrap` (a confidence interval and a significance test; the RA-Rec paper
reports neither).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

DEFAULT_KS = (10, 20, 50, 100)
FULL = "full-ranking"
SAMPLED = "sampled-100"


# ----------------------------------------------------------------------------- ranks


def _as_float_tensor(scores) -> torch.Tensor:
    t = torch.as_tensor(scores)
    if t.dim() != 2:
        raise ValueError(f"scores must be a (users, items) matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _mask_history(scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray] | None) -> None:
    """In place: ``scores[u, exclude[u]] = -inf`` for every user, then restore the targets' scores."""
    if exclude is None:
        return
    if len(exclude) != scores.shape[0]:
        raise ValueError(f"exclude has {len(exclude)} entries for {scores.shape[0]} users")
    lengths = [len(e) for e in exclude]
    if sum(lengths) == 0:
        return
    rows = np.repeat(np.arange(len(exclude)), lengths)
    cols = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
    if cols.min() < 0 or cols.max() >= scores.shape[1]:
        bad = int(np.flatnonzero((cols < 0) | (cols >= scores.shape[1]))[0])
        raise ValueError(
            f"exclude: user {int(rows[bad])} has item id {int(cols[bad])} outside 0..{scores.shape[1] - 1}"
        )
    users = torch.arange(scores.shape[0])
    target_scores = scores[users, targets].clone()
    scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
    scores[users, targets] = target_scores  # the target itself is never masked


def _check_targets(targets, num_users: int, num_items: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets), dtype=torch.int64).reshape(-1)
    if t.numel() != num_users:
        raise ValueError(f"targets has {t.numel()} entries for {num_users} users (rows of scores)")
    if num_users and (int(t.min()) < 0 or int(t.max()) >= num_items):
        bad = int(torch.nonzero((t < 0) | (t >= num_items))[0])
        raise ValueError(f"targets[{bad}] = {int(t[bad])} is outside the item ids 0..{num_items - 1}")
    return t


def full_ranking_ranks(scores, targets, exclude: Sequence[np.ndarray] | None = None, *, inplace: bool = False) -> np.ndarray:
    """0-based rank of each user's target among all items, history masked, pessimistic ties.

    Args:
        scores: ``(U, I)`` float tensor or array, higher = more relevant.
        targets: ``(U,)`` int, the held-out item of each user (ids ``0..I-1``).
        exclude: ``U`` arrays of item ids to remove from the ranking (the user's history);
            their score becomes ``-inf``. The target is never removed, even if it is listed.
        inplace: allow writing the ``-inf`` mask into ``scores`` (saves a copy; evaluation
            loops use it).

    Returns:
        ``(U,)`` int64 ranks: ``rank[u] = #{items j != target : score[u, j] >= score[u, target]}``.

    Ties are **pessimistic**: the target ranks below every item tied with it. A model that
    gives every item the same score (a constant scorer, a collapsed embedding, a bug that
    zeroes the logits) therefore gets rank ``I - 1 - len(history)`` and metrics of ~0.
    With optimistic ties it would get rank 0 and look perfect; with "average" ties it would
    look like a random model. Only the pessimistic rule can never reward a degenerate model.

    Raises:
        ValueError: wrong shapes, item ids out of range, or a NaN score for a target.
    """
    s = _as_float_tensor(scores)
    if not inplace:
        s = s.clone()
    num_users, num_items = s.shape
    t = _check_targets(targets, num_users, num_items)
    _mask_history(s, t, exclude)
    target_scores = s[torch.arange(num_users), t]
    if torch.isnan(target_scores).any():
        bad = int(torch.nonzero(torch.isnan(target_scores))[0])
        raise ValueError(f"the score of user {bad}'s target is NaN; cannot rank it")
    # >= counts the target itself once, so subtract it. NaN scores of other items compare False
    # (they rank below the target): the caller's NaNs only hurt the caller's own model.
    ranks = (s >= target_scores[:, None]).sum(dim=1) - 1
    return ranks.to(torch.int64).numpy()


def sample_negatives(
    exclude: Sequence[np.ndarray], targets, num_items: int, num_negatives: int = 100, seed: int = 0
) -> np.ndarray:
    """Draw ``num_negatives`` distinct items per user, uniformly among the items it has not seen.

    "Not seen" means not in ``exclude[u]`` (the history) and not the target. Seeded: the same
    ``seed`` gives the same negatives, so two methods are ranked against the same candidates.

    Returns:
        ``(U, num_negatives)`` int64 item ids.

    Raises:
        ValueError: a user has fewer than ``num_negatives`` unseen items.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    out = np.empty((len(targets), num_negatives), dtype=np.int64)
    for u, target in enumerate(targets):
        seen = set(np.asarray(exclude[u]).tolist()) | {int(target)}
        if num_items - len(seen) < num_negatives:
            raise ValueError(f"user {u} has only {num_items - len(seen)} unseen items, needs {num_negatives} negatives")
        chosen: list[int] = []
        taken: set[int] = set()
        while len(chosen) < num_negatives:  # rejection sampling: histories are tiny next to the catalogue
            for j in rng.integers(0, num_items, size=2 * num_negatives).tolist():
                if j not in seen and j not in taken:
                    taken.add(j)
                    chosen.append(j)
                    if len(chosen) == num_negatives:
                        break
        out[u] = chosen
    return out


def sampled_ranks(scores, targets, negatives: np.ndarray) -> np.ndarray:
    """0-based rank of the target among itself and its sampled negatives ("sampled-100").

    Args:
        scores: ``(U, I)`` scores over the whole catalogue.
        targets: ``(U,)`` target item ids.
        negatives: ``(U, N)`` item ids from :func:`sample_negatives` (never the target, never history).

    Returns:
        ``(U,)`` int64 ranks in ``0..N``, pessimistic ties (see :func:`full_ranking_ranks`).
    """
    s = _as_float_tensor(scores)
    num_users, num_items = s.shape
    t = _check_targets(targets, num_users, num_items)
    neg = torch.as_tensor(np.asarray(negatives), dtype=torch.int64)
    if neg.shape[0] != num_users:
        raise ValueError(f"negatives has {neg.shape[0]} rows for {num_users} users")
    target_scores = s[torch.arange(num_users), t]
    if torch.isnan(target_scores).any():
        raise ValueError("a target's score is NaN; cannot rank it")
    neg_scores = s.gather(1, neg)
    return (neg_scores >= target_scores[:, None]).sum(dim=1).to(torch.int64).numpy()


# ----------------------------------------------------------------------------- metrics


def per_user_metric(ranks: np.ndarray, name: str) -> np.ndarray:
    """One user-level metric from 0-based ranks: ``"HR@K"``, ``"NDCG@K"`` or ``"MRR"``.

    Returns:
        ``(U,)`` float64 values whose mean is the reported metric.

    Raises:
        ValueError: an unknown metric name.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if name == "MRR":
        return 1.0 / (ranks + 1.0)
    kind, _, k = name.partition("@")
    if not k.isdigit() or kind not in ("HR", "NDCG"):
        raise ValueError(f"unknown metric {name!r}: use 'HR@K', 'NDCG@K' or 'MRR'")
    hit = ranks < int(k)
    if kind == "HR":
        return hit.astype(np.float64)
    return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """``HR@K`` and ``NDCG@K`` for every K in ``ks``, and ``MRR``, averaged over users.

    Args:
        ranks: ``(U,)`` 0-based ranks (from :func:`full_ranking_ranks` or :func:`sampled_ranks`).

    Returns:
        ``{"HR@10": ..., "NDCG@10": ..., ..., "MRR": ...}`` (floats in [0, 1]).

    Raises:
        ValueError: no users, or a negative rank.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.size == 0:
        raise ValueError("no ranks to average (0 users)")
    if ranks.min() < 0:
        raise ValueError(f"ranks must be >= 0, got {int(ranks.min())}")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(per_user_metric(ranks, f"HR@{k}").mean())
        out[f"NDCG@{k}"] = float(per_user_metric(ranks, f"NDCG@{k}").mean())
    out["MRR"] = float(per_user_metric(ranks, "MRR").mean())
    return out


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: ``{"HR@K", "NDCG@K", "MRR"}`` averaged over users.
        ranks: ``(U,)`` int64 0-based rank of each user's target (keep it for paired tests).
        protocol: ``"full-ranking"`` or ``"sampled-100"``; every printout carries it.
        num_users: number of users evaluated.
        ks: the cut-offs used.
    """

    metrics: dict
    ranks: np.ndarray
    protocol: str
    num_users: int
    ks: tuple = field(default=DEFAULT_KS)

    def per_user(self, name: str) -> np.ndarray:
        """``(U,)`` values of one metric per user, e.g. ``result.per_user("NDCG@10")``."""
        return per_user_metric(self.ranks, name)

    def to_dict(self) -> dict:
        """JSON-ready summary: ``{"protocol", "num_users", **metrics}``."""
        return {"protocol": self.protocol, "num_users": self.num_users, **self.metrics}

    def __str__(self) -> str:
        return format_metrics({"": self}, ks=self.ks)


def format_metrics(results: dict, ks: Sequence[int] = (10, 100)) -> str:
    """A plain-text table, one row per named :class:`EvalResult` (or metrics dict), protocol shown."""
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]
    width = max([len(str(n)) for n in results] + [6])
    lines = [f"{'method':<{width}}  {'protocol':<12}  " + "  ".join(f"{c:>8}" for c in cols)]
    for name, res in results.items():
        metrics = res.metrics if isinstance(res, EvalResult) else res
        protocol = res.protocol if isinstance(res, EvalResult) else metrics.get("protocol", "?")
        row = "  ".join(f"{metrics[c]:8.4f}" if c in metrics else f"{'-':>8}" for c in cols)
        lines.append(f"{str(name):<{width}}  {protocol:<12}  {row}")
    return "\n".join(lines)


def evaluate(
    score_fn: Callable[[list], object],
    histories: Sequence[np.ndarray],
    targets,
    num_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 1024,
    *,
    protocol: str = FULL,
    exclude: Sequence[np.ndarray] | None = None,
    num_negatives: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Score users in batches and compute leave-one-out metrics.

    Args:
        score_fn: called with a list of ``B`` histories (int arrays) **and** the batch's user
            indices as keyword ``users`` if it accepts it; returns ``(B, I)`` scores (tensor or array).
        histories: ``U`` arrays of item ids, the model's input (and, by default, the masked items).
        targets: ``(U,)`` held-out items.
        num_items: ``I``, the catalogue size; ``score_fn`` must return ``I`` columns.
        ks: cut-offs for HR@K / NDCG@K.
        batch_size: users per call of ``score_fn``.
        protocol: ``"full-ranking"`` (default) or ``"sampled-100"`` (uniform unseen negatives,
            ``num_negatives`` of them, drawn with ``seed``; labelled ``"sampled-<N>"``).
        exclude: items to mask per user; default ``histories``.
        progress: show a tqdm bar.

    Returns:
        :class:`EvalResult` with the metrics, the per-user ranks and the protocol label.

    Raises:
        ValueError: lengths disagree, ``score_fn`` returns the wrong shape, or an unknown protocol.
    """
    import inspect

    if protocol not in (FULL, SAMPLED) and not protocol.startswith("sampled-"):
        raise ValueError(f"unknown protocol {protocol!r}: use 'full-ranking' or 'sampled-100'")
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if len(histories) != len(targets):
        raise ValueError(f"{len(histories)} histories but {len(targets)} targets")
    exclude = histories if exclude is None else exclude
    sampled = protocol != FULL
    if sampled:
        protocol = f"sampled-{num_negatives}"
        negatives = sample_negatives(exclude, targets, num_items, num_negatives, seed)
    try:
        wants_users = "users" in inspect.signature(score_fn).parameters
    except (TypeError, ValueError):
        wants_users = False

    starts = range(0, len(targets), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"evaluate ({protocol})", unit="batch")
    ranks = np.empty(len(targets), dtype=np.int64)
    with torch.no_grad():
        for start in starts:
            stop = min(start + batch_size, len(targets))
            batch = list(histories[start:stop])
            scores = score_fn(batch, users=np.arange(start, stop)) if wants_users else score_fn(batch)
            scores = _as_float_tensor(scores)
            if tuple(scores.shape) != (stop - start, num_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)} for {stop - start} users, expected "
                    f"({stop - start}, {num_items})"
                )
            if sampled:
                ranks[start:stop] = sampled_ranks(scores, targets[start:stop], negatives[start:stop])
            else:
                # not in place: score_fn may hand back a view of its own state (MostPop does)
                ranks[start:stop] = full_ranking_ranks(scores, targets[start:stop], list(exclude[start:stop]))
    return EvalResult(metrics_from_ranks(ranks, ks), ranks, protocol, len(targets), tuple(ks))


# ----------------------------------------------------------------------------- significance


@dataclass
class PairedComparison:
    """Result of :func:`paired_bootstrap` for per-user values ``a`` and ``b`` (difference ``a - b``).

    Attributes:
        mean_diff: ``mean(a - b)``.
        ci_low, ci_high: percentile bootstrap confidence interval of ``mean(a - b)``.
        ci: its level (e.g. 0.95).
        p_value: two-sided p-value of the paired sign-flip permutation test of "no difference".
        num_users, num_resamples: sizes used.
    """

    mean_diff: float
    ci_low: float
    ci_high: float
    ci: float
    p_value: float
    num_users: int
    num_resamples: int

    def __str__(self) -> str:
        return (
            f"diff {self.mean_diff:+.4f}  {int(self.ci * 100)}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}]  "
            f"p = {self.p_value:.4g}  (paired, {self.num_users} users, {self.num_resamples} resamples)"
        )


def sample_users(num_users: int, n: int | None, seed: int = 0) -> np.ndarray:
    """A fixed evaluation sample: ``n`` distinct users of ``0..num_users-1``, sorted (all when ``n`` is None or larger).

    Every method is evaluated on the same sample, so per-user results can be paired.

    Returns:
        ``(min(n, num_users),)`` int64 user indices.
    """
    if n is None or n <= 0 or n >= num_users:
        return np.arange(num_users, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=n, replace=False)).astype(np.int64)


def paired_bootstrap(
    per_user_a, per_user_b, num_resamples: int = 1000, seed: int = 0, ci: float = 0.95, chunk: int = 100
) -> PairedComparison:
    """Compare two methods evaluated on the same users: CI of the mean difference and a p-value.

    * **Confidence interval**: paired bootstrap (Efron & Tibshirani 1993, ch. 13): resample
      users with replacement ``num_resamples`` times, take the mean of ``a - b`` in each
      resample, report the ``(1 - ci)/2`` and ``(1 + ci)/2`` percentiles.
    * **p-value**: paired sign-flip (permutation) test (Fisher's randomisation test; see
      Smucker, Allan & Carterette, CIKM 2007, for IR evaluation): under "no difference" the
      sign of each user's difference is exchangeable, so flip each sign at random and count
      how often ``|mean|`` reaches the observed one. ``p = (1 + count) / (1 + num_resamples)``,
      so it is never 0: its smallest value is ``1 / (1 + num_resamples)``.

    Args:
        per_user_a, per_user_b: ``(U,)`` per-user values (e.g. ``EvalResult.per_user("NDCG@10")``)
            on the **same users in the same order**.

    Returns:
        :class:`PairedComparison`.

    Raises:
        ValueError: different lengths, no users, or ``ci`` outside (0, 1).
    """
    a = np.asarray(per_user_a, dtype=np.float64).reshape(-1)
    b = np.asarray(per_user_b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same users: {a.size} values vs {b.size}")
    if a.size == 0:
        raise ValueError("paired comparison of 0 users")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    d = a - b
    n = d.size
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    boot = np.empty(num_resamples)
    extreme = 0
    for start in range(0, num_resamples, chunk):
        m = min(chunk, num_resamples - start)
        idx = rng.integers(0, n, size=(m, n))
        boot[start : start + m] = d[idx].mean(axis=1)
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        flipped = (signs * d).mean(axis=1)
        # a small tolerance so that the observed assignment itself (all +1) counts as extreme
        extreme += int((np.abs(flipped) >= abs(observed) - 1e-12).sum())
    lo, hi = np.quantile(boot, [(1 - ci) / 2, (1 + ci) / 2])
    return PairedComparison(
        mean_diff=observed,
        ci_low=float(lo),
        ci_high=float(hi),
        ci=ci,
        p_value=(1 + extreme) / (1 + num_resamples),
        num_users=n,
        num_resamples=num_resamples,
    )


def ndcg_at(rank: int, k: int) -> float:
    """NDCG@k of one user whose target has 0-based ``rank`` (for lessons: ``1/log2(rank+2)``)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
