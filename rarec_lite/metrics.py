"""Evaluation shared by every method of the course: leave-one-out, full ranking, HR@K / NDCG@K / MRR.

The protocol (Kang & McAuley 2018, Sec. IV-B; RA-Rec, Yu et al. 2024, Sec. 4.1) is
leave-one-out: each user has exactly one held-out target item and a history. A method
gives every item of the catalogue a score; the user's own history items are removed from
the ranking (masked: they are neither above, below nor tied with the target; the target
itself is never masked). For each user we count, among the remaining candidates,

* ``g`` ("greater") = the other items scored **strictly higher** than the target, and
* ``t`` ("tied")    = the other items scored **exactly equal** to the target.

The target's 0-based rank is ``g`` when it wins every tie and ``g + t`` when it loses every
tie. From a 0-based rank ``r``:

* ``HR@K``   = ``[r < K]`` (hit ratio, a.k.a. Recall@K with one target);
* ``NDCG@K`` = ``[r < K] / log2(r + 2)`` (one relevant item, so the ideal DCG is 1);
* ``MRR``    = ``1 / (r + 1)`` (over the full ranking, no cut-off),

each averaged over users.

Ties: two rules, every result and table says which one it used
---------------------------------------------------------------
``ties="expected"`` (the default)
    The tied items are put in a **uniformly random order** and the metric is its **exact
    expectation** over that order (no tie order is ever sampled): the rank is ``g + U`` with
    ``U`` uniform on ``{0, ..., t}``, so

    * ``E[HR@K]   = clip((K - g) / (t + 1), 0, 1)``,
    * ``E[NDCG@K] = (1 / (t + 1)) * sum_{u=0..t} [g + u < K] / log2(g + u + 2)`` (at most ``K`` terms),
    * ``E[MRR]    = (1 / (t + 1)) * sum_{u=0..t} 1 / (g + u + 1) = (H(g + t + 1) - H(g)) / (t + 1)``
      with ``H`` the harmonic numbers (computed to float64 accuracy, see :func:`_harmonic_diff`).

    This is the tie-aware measure of McSherry & Najork, "Computing Information Retrieval
    Performance Measures Efficiently in the Presence of Tied Scores" (ECIR 2008): the average
    of the metric over all orderings of the tied items. A model that scores every item the
    same (a constant scorer, a collapsed embedding) gets **exactly chance**, e.g.
    ``HR@K = K / N`` with ``N`` the number of candidates, neither rewarded nor punished.
``ties="pessimistic"``
    The target ranks below every item tied with it: rank ``g + t``. A constant scorer gets
    rank ``N - 1`` and metrics of ~0. Kept as an option (it was this package's only rule).

Why expected is the default: ties are not rare here. The 23,033 Clothing items have only
5,988 distinct texts, so a method that sees only text gives the target the same score as
every look-alike, while a method with ID input breaks those ties. The pessimistic rule
ranks the target last among its look-alikes and so charges text-only methods for ties the
ID methods never have: zero-shot ID Translation measured HR@100 0.049 under the pessimistic
rule vs 0.055 under the random tie order (this repository's issue 12, item 6). An
optimistic rule (target first among its ties) would instead reward degenerate scorers: a
constant scorer would look perfect. That is not hypothetical: Sun et al., "A Re-evaluation
of Knowledge Graph Completion Methods" (ACL 2020) found several published models whose
saturated outputs tied many candidates and whose reported gains came from an evaluation
that put the target first among ties. The expected rule is the neutral one between them.

Storage: with ``ties="expected"``, :class:`EvalResult` keeps ``ranks`` = ``g`` and
``tied`` = ``t`` per user; with ``ties="pessimistic"``, ``ranks`` = ``g + t`` and ``tied`` = 0.
In both cases the metrics are the expectation over ranks ``ranks + U``, ``U`` uniform on
``{0..tied}``, so :func:`per_user_metric` / :func:`metrics_from_ranks` need only the pair
``(ranks, tied)`` (``tied=None`` means no spread: plain ranks), never the rule's name.

Two protocols are offered:

``"full-ranking"``
    the target against every item of the catalogue not in the history (the honest one,
    Krichene & Rendle, "On Sampled Metrics for Item Recommendation", KDD 2020);
``"sampled-100"``
    the target against 100 items drawn uniformly among the items the user has not seen
    (the protocol of the original SASRec paper). It inflates every number, so it is always
    labelled ``"sampled-100"`` in :class:`EvalResult` and in every table printed from it.
    Ties among the sampled candidates follow the same two rules.

Per-user values are kept so that two methods can be compared on the same users with
:func:`paired_bootstrap` (a confidence interval and a significance test; the RA-Rec paper
reports neither); under ``ties="expected"`` a user's value is its expected metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

DEFAULT_KS = (10, 20, 50, 100)
FULL = "full-ranking"
SAMPLED = "sampled-100"
EXPECTED = "expected"
PESSIMISTIC = "pessimistic"
TIES = (EXPECTED, PESSIMISTIC)


def _check_ties(ties: str) -> str:
    if ties not in TIES:
        raise ValueError(f"unknown ties rule {ties!r}: use 'expected' or 'pessimistic'")
    return ties


class RankTies(NamedTuple):
    """Per-user tie-aware rank counts (from :func:`full_ranking_rank_ties` / :func:`sampled_rank_ties`).

    A tuple ``(greater, tied)``, so ``g, t = full_ranking_rank_ties(...)`` works, and it can be
    passed as ``ranks`` to :func:`per_user_metric` / :func:`metrics_from_ranks`.

    Attributes:
        greater: ``(U,)`` int64, other non-masked candidates scored strictly higher than the target.
        tied: ``(U,)`` int64, other non-masked candidates scored exactly equal to the target.
    """

    greater: np.ndarray
    tied: np.ndarray

    @property
    def pessimistic(self) -> np.ndarray:
        """``(U,)`` int64 ranks when the target loses every tie: ``greater + tied``."""
        return self.greater + self.tied


# ----------------------------------------------------------------------------- ranks


def _as_float_tensor(scores) -> torch.Tensor:
    t = torch.as_tensor(scores)
    if t.dim() != 2:
        raise ValueError(f"scores must be a (users, items) matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float32)
    return t


def _history_pairs(exclude: Sequence[np.ndarray] | None, targets: torch.Tensor, num_users: int,
                   num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)``: every distinct ``(user, item)`` of ``exclude`` whose item is not the user's target.

    Raises:
        ValueError: ``exclude`` has the wrong length or an item id outside ``0..I-1`` (names the user).
    """
    empty = torch.empty(0, dtype=torch.int64)
    if exclude is None:
        return empty, empty
    if len(exclude) != num_users:
        raise ValueError(f"exclude has {len(exclude)} entries for {num_users} users")
    lengths = [len(e) for e in exclude]
    if sum(lengths) == 0:
        return empty, empty
    rows = np.repeat(np.arange(len(exclude)), lengths)
    cols = np.concatenate([np.asarray(e, dtype=np.int64).reshape(-1) for e in exclude])
    if cols.min() < 0 or cols.max() >= num_items:
        bad = int(np.flatnonzero((cols < 0) | (cols >= num_items))[0])
        raise ValueError(f"exclude: user {int(rows[bad])} has item id {int(cols[bad])} outside 0..{num_items - 1}")
    pairs = np.unique(rows * num_items + cols)  # an item listed twice is removed once
    rows, cols = pairs // num_items, pairs % num_items
    keep = cols != targets.numpy()[rows]  # the target itself is never removed
    return torch.from_numpy(rows[keep]), torch.from_numpy(cols[keep])


#: users compared with their targets at a time: the ``(64, I)`` comparison masks stay in the CPU's
#: cache, about 10x faster than one ``(U, I)`` pass on Clothing's 23,033 items (bench/bench_sasrec.py, part 3)
RANK_ROWS = 64


def _check_targets(targets, num_users: int, num_items: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets), dtype=torch.int64).reshape(-1)
    if t.numel() != num_users:
        raise ValueError(f"targets has {t.numel()} entries for {num_users} users (rows of scores)")
    if num_users and (int(t.min()) < 0 or int(t.max()) >= num_items):
        bad = int(torch.nonzero((t < 0) | (t >= num_items))[0])
        raise ValueError(f"targets[{bad}] = {int(t[bad])} is outside the item ids 0..{num_items - 1}")
    return t


def full_ranking_rank_ties(scores, targets, exclude: Sequence[np.ndarray] | None = None) -> RankTies:
    """Tie-aware counts for each user's target among all items, history masked.

    Args:
        scores: ``(U, I)`` float tensor or array, higher = more relevant. Never written.
        targets: ``(U,)`` int, the held-out item of each user (ids ``0..I-1``).
        exclude: ``U`` arrays of item ids to remove from the ranking (the user's history).
            A removed item counts neither as higher nor as tied, whatever the target's score.
            The target is never removed, even if it is listed.

    Returns:
        :class:`RankTies` ``(greater, tied)``, each ``(U,)`` int64:
        ``greater[u] = #{j not masked, j != target : score[u, j] > score[u, target]}`` and
        ``tied[u] = #{j not masked, j != target : score[u, j] == score[u, target]}``.
        The target's rank is ``greater + U``, ``U`` uniform on ``{0..tied}`` under the
        expected rule, ``greater + tied`` under the pessimistic one (module docstring).
        NaN scores of other items compare False: they rank below the target (a caller's NaNs
        only hurt the caller's own model).

    Every item is counted first (``RANK_ROWS`` users at a time), then each removed item's own
    comparison is subtracted: exact integer counts, with no copy of ``scores``.

    Raises:
        ValueError: wrong shapes, item ids out of range, or a NaN score for a target.
    """
    s = _as_float_tensor(scores)
    num_users, num_items = s.shape
    t = _check_targets(targets, num_users, num_items)
    rows, cols = _history_pairs(exclude, t, num_users, num_items)
    target_scores = s[torch.arange(num_users), t]
    if torch.isnan(target_scores).any():
        bad = int(torch.nonzero(torch.isnan(target_scores))[0])
        raise ValueError(f"the score of user {bad}'s target is NaN; cannot rank it")
    col = target_scores[:, None]
    greater = torch.empty(num_users, dtype=torch.int64)
    tied = torch.empty(num_users, dtype=torch.int64)
    for lo in range(0, num_users, RANK_ROWS):
        block, c = s[lo:lo + RANK_ROWS], col[lo:lo + RANK_ROWS]
        greater[lo:lo + RANK_ROWS] = (block > c).sum(1, dtype=torch.int32)
        tied[lo:lo + RANK_ROWS] = (block == c).sum(1, dtype=torch.int32) - 1  # == counts the target once
    if len(rows):
        removed, at = s[rows, cols], target_scores[rows]
        greater -= torch.bincount(rows, weights=(removed > at).double(), minlength=num_users).long()
        tied -= torch.bincount(rows, weights=(removed == at).double(), minlength=num_users).long()
    return RankTies(greater.numpy(), tied.numpy())


def full_ranking_ranks(scores, targets, exclude: Sequence[np.ndarray] | None = None, *, ties: str = PESSIMISTIC):
    """0-based rank of each user's target among all items, history masked.

    Args:
        scores, targets, exclude: as in :func:`full_ranking_rank_ties`.
        ties: ``"pessimistic"`` (default here, for backward compatibility) or ``"expected"``.

    Returns:
        ``ties="pessimistic"``: ``(U,)`` int64 ranks
        ``rank[u] = #{items j != target, not masked : score[u, j] >= score[u, target]}``: the
        target ranks below every item tied with it (a constant scorer gets rank
        ``I - 1 - len(history)`` and metrics of ~0).
        ``ties="expected"``: the :class:`RankTies` ``(greater, tied)`` of
        :func:`full_ranking_rank_ties`, to pass to :func:`metrics_from_ranks` /
        :func:`per_user_metric` (a single integer rank cannot carry the expectation).

    Raises:
        ValueError: wrong shapes, item ids out of range, a NaN score for a target, unknown ``ties``.
    """
    _check_ties(ties)
    counts = full_ranking_rank_ties(scores, targets, exclude)
    return counts.pessimistic if ties == PESSIMISTIC else counts


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


def sampled_rank_ties(scores, targets, negatives: np.ndarray) -> RankTies:
    """Tie-aware counts of the target among itself and its sampled negatives ("sampled-100").

    Args:
        scores: ``(U, I)`` scores over the whole catalogue.
        targets: ``(U,)`` target item ids.
        negatives: ``(U, N)`` item ids from :func:`sample_negatives` (never the target, never history).

    Returns:
        :class:`RankTies`: ``greater`` = negatives scored strictly higher than the target,
        ``tied`` = negatives scored exactly equal (both ``(U,)`` int64, ``greater + tied <= N``).

    Raises:
        ValueError: wrong shapes or a NaN score for a target.
    """
    s = _as_float_tensor(scores)
    num_users, num_items = s.shape
    t = _check_targets(targets, num_users, num_items)
    neg = torch.as_tensor(np.asarray(negatives), dtype=torch.int64)
    if neg.dim() != 2 or neg.shape[0] != num_users:
        raise ValueError(f"negatives must be ({num_users}, N), got shape {tuple(neg.shape)}")
    target_scores = s[torch.arange(num_users), t]
    if torch.isnan(target_scores).any():
        raise ValueError("a target's score is NaN; cannot rank it")
    neg_scores = s.gather(1, neg)
    col = target_scores[:, None]
    greater = (neg_scores > col).sum(dim=1).to(torch.int64).numpy()
    tied = (neg_scores == col).sum(dim=1).to(torch.int64).numpy()
    return RankTies(greater, tied)


def sampled_ranks(scores, targets, negatives: np.ndarray, *, ties: str = PESSIMISTIC):
    """0-based rank of the target among itself and its sampled negatives ("sampled-100").

    Args:
        scores, targets, negatives: as in :func:`sampled_rank_ties`.
        ties: ``"pessimistic"`` (default here, for backward compatibility) or ``"expected"``.

    Returns:
        ``ties="pessimistic"``: ``(U,)`` int64 ranks in ``0..N``, the target below its ties;
        ``ties="expected"``: the :class:`RankTies` of :func:`sampled_rank_ties`.
    """
    _check_ties(ties)
    counts = sampled_rank_ties(scores, targets, negatives)
    return counts.pessimistic if ties == PESSIMISTIC else counts


# ----------------------------------------------------------------------------- metrics


_HARMONIC_DIRECT = 128  # below this, harmonic sums are summed term by term


def _harmonic_diff(a, b) -> np.ndarray:
    """``H(b) - H(a) = sum_{r=a+1..b} 1/r`` for int arrays ``0 <= a <= b``, to float64 accuracy.

    Terms ``r <= 128`` are summed directly. Above, ``H(b) - H(c) = psi(b+1) - psi(c+1)`` is
    computed from the asymptotic series of the digamma function (Abramowitz & Stegun 6.3.18),
    each term written as a difference that does not cancel
    (``log1p(d/x) + d/(2xy) + d(x+y)/(12x^2y^2) + ...``, ``x = c+1``, ``y = b+1``, ``d = y - x``);
    for ``x >= 129`` the truncated terms are below ``1e-18`` relative. (Subtracting two
    digamma values directly would lose up to 1e-11 relative when ``b - a`` is small.)

    Returns:
        ``(n,)`` float64.
    """
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.shape != b.shape or (a.size and ((a < 0).any() or (b < a).any())):
        raise ValueError("_harmonic_diff needs 0 <= a <= b, arrays of one shape")
    out = np.zeros(a.shape, dtype=np.float64)
    m = _HARMONIC_DIRECT
    r = np.arange(1, m + 1, dtype=np.int64)
    inv = 1.0 / r.astype(np.float64)
    lo, hi = a, np.minimum(b, m)
    direct = np.flatnonzero(hi > lo)
    for start in range(0, direct.size, 8192):
        idx = direct[start : start + 8192]
        mask = (r[None, :] > lo[idx, None]) & (r[None, :] <= hi[idx, None])
        out[idx] += np.where(mask, inv[None, :], 0.0).sum(axis=1)
    big = b > m
    if big.any():
        x = np.maximum(a[big], m).astype(np.float64) + 1.0
        y = b[big].astype(np.float64) + 1.0
        d = y - x  # exact: integers far below 2**53
        out[big] += (
            np.log1p(d / x)
            + d / (2.0 * x * y)
            + d * (x + y) / (12.0 * x * x * y * y)
            + (1.0 / y**4 - 1.0 / x**4) / 120.0
            - (1.0 / y**6 - 1.0 / x**6) / 252.0
        )
    return out


def _ranks_and_tied(ranks, tied) -> tuple[np.ndarray, np.ndarray | None]:
    """Normalise ``(ranks, tied)``: ``ranks`` may be a :class:`RankTies` / ``(greater, tied)`` pair."""
    if tied is None and isinstance(ranks, tuple) and len(ranks) == 2 and all(np.ndim(x) >= 1 for x in ranks):
        ranks, tied = ranks
    r = np.asarray(ranks, dtype=np.int64)
    if r.ndim != 1:
        raise ValueError(
            f"ranks must be one per user (1-D), got shape {r.shape}; pass tie counts as tied= "
            f"or as a (greater, tied) pair, not stacked"
        )
    if tied is None:
        return r, None
    t = np.asarray(tied, dtype=np.int64)
    if t.shape != r.shape:
        raise ValueError(f"tied has shape {t.shape}, ranks {r.shape}: one tie count per user")
    if t.size and t.min() < 0:
        raise ValueError(f"tied must be >= 0, got {int(t.min())}")
    return r, t


def _expected_ndcg(g: np.ndarray, t: np.ndarray, k: int) -> np.ndarray:
    """``(1/(t+1)) * sum_{u=0..t} [g+u < k] / log2(g+u+2)``, summed over at most ``k`` terms per user."""
    w = 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)
    cols = np.arange(k, dtype=np.int64)
    out = np.zeros(g.shape, dtype=np.float64)
    hit = np.flatnonzero(g < k)
    step = max(1, (1 << 22) // max(k, 1))
    for start in range(0, hit.size, step):
        idx = hit[start : start + step]
        lo, hi = g[idx, None], g[idx, None] + t[idx, None]
        mask = (cols[None, :] >= lo) & (cols[None, :] <= hi)
        out[idx] = np.where(mask, w[None, :], 0.0).sum(axis=1) / (t[idx] + 1.0)
    return out


def per_user_metric(ranks, name: str, tied=None) -> np.ndarray:
    """One user-level metric: ``"HR@K"``, ``"NDCG@K"`` or ``"MRR"``.

    Args:
        ranks: ``(U,)`` 0-based ranks; with ``tied``, the number of items strictly above the
            target (``greater``). A :class:`RankTies` / ``(greater, tied)`` pair is accepted too.
        name: the metric.
        tied: ``(U,)`` number of other candidates tied with the target, or None (no ties: the
            plain metric of ``ranks``). With it, each value is the **exact expectation** of the
            metric when the target's rank is ``ranks + U``, ``U`` uniform on ``{0..tied}``
            (McSherry & Najork 2008; formulas in the module docstring).

    Returns:
        ``(U,)`` float64 values whose mean is the reported metric.

    Raises:
        ValueError: an unknown metric name, shapes that disagree, negative tie counts.
    """
    g, t = _ranks_and_tied(ranks, tied)
    if name != "MRR":
        kind, _, k = name.partition("@")
        if not k.isdigit() or kind not in ("HR", "NDCG"):
            raise ValueError(f"unknown metric {name!r}: use 'HR@K', 'NDCG@K' or 'MRR'")
        k = int(k)
    if t is None or not t.any():  # plain ranks: the exact old formulas
        if name == "MRR":
            return 1.0 / (g + 1.0)
        hit = g < k
        if kind == "HR":
            return hit.astype(np.float64)
        return np.where(hit, 1.0 / np.log2(g + 2.0), 0.0)
    if name == "MRR":
        return np.where(t == 0, 1.0 / (g + 1.0), _harmonic_diff(g, g + t + 1) / (t + 1.0))
    if kind == "HR":
        return np.clip((k - g) / (t + 1.0), 0.0, 1.0)
    return _expected_ndcg(g, t, k)


def metrics_from_ranks(ranks, ks: Sequence[int] = DEFAULT_KS, tied=None) -> dict[str, float]:
    """``HR@K`` and ``NDCG@K`` for every K in ``ks``, and ``MRR``, averaged over users.

    Args:
        ranks: ``(U,)`` 0-based ranks (from :func:`full_ranking_ranks` or :func:`sampled_ranks`),
            or with ``tied`` the ``greater`` counts; a :class:`RankTies` pair is accepted too.
        ks: the cut-offs.
        tied: ``(U,)`` tie counts for the expected rule (see :func:`per_user_metric`); None = plain ranks.

    Returns:
        ``{"HR@10": ..., "NDCG@10": ..., ..., "MRR": ...}`` (floats in [0, 1]).

    Raises:
        ValueError: no users, a negative rank, or bad tie counts.
    """
    g, t = _ranks_and_tied(ranks, tied)
    if g.size == 0:
        raise ValueError("no ranks to average (0 users)")
    if g.min() < 0:
        raise ValueError(f"ranks must be >= 0, got {int(g.min())}")
    out: dict[str, float] = {}
    for k in ks:
        out[f"HR@{k}"] = float(per_user_metric(g, f"HR@{k}", t).mean())
        out[f"NDCG@{k}"] = float(per_user_metric(g, f"NDCG@{k}", t).mean())
    out["MRR"] = float(per_user_metric(g, "MRR", t).mean())
    return out


@dataclass
class EvalResult:
    """What :func:`evaluate` returns.

    Attributes:
        metrics: ``{"HR@K", "NDCG@K", "MRR"}`` averaged over users.
        ranks: ``(U,)`` int64. ``ties="expected"``: items scored strictly above each user's
            target (``greater``); ``ties="pessimistic"``: the pessimistic 0-based rank.
        protocol: ``"full-ranking"`` or ``"sampled-100"``; every printout carries it.
        num_users: number of users evaluated.
        ks: the cut-offs used.
        tied: ``(U,)`` int64 other candidates tied with the target (``ties="expected"``);
            zeros under ``"pessimistic"`` (the ties are already in ``ranks``). The metrics are
            the expectation over ranks ``ranks + U``, ``U`` uniform on ``{0..tied}``.
        ties: ``"expected"`` or ``"pessimistic"``; every printout carries it. Left out, it is
            ``"expected"`` when ``tied`` is given and ``"pessimistic"`` otherwise (old callers).
    """

    metrics: dict
    ranks: np.ndarray
    protocol: str
    num_users: int
    ks: tuple = field(default=DEFAULT_KS)
    tied: np.ndarray | None = None
    ties: str | None = None

    def __post_init__(self) -> None:
        if self.ties is None:
            self.ties = PESSIMISTIC if self.tied is None else EXPECTED
        _check_ties(self.ties)
        self.ranks = np.asarray(self.ranks, dtype=np.int64)
        self.tied = np.zeros_like(self.ranks) if self.tied is None else np.asarray(self.tied, dtype=np.int64)
        if self.tied.shape != self.ranks.shape:
            raise ValueError(f"tied has shape {self.tied.shape}, ranks {self.ranks.shape}")

    @property
    def pessimistic_ranks(self) -> np.ndarray:
        """``(U,)`` int64 0-based ranks with the target below all its ties (either rule)."""
        return self.ranks + self.tied

    @property
    def expected_ranks(self) -> np.ndarray:
        """``(U,)`` float64 expected 0-based rank under a random tie order (``ranks + tied / 2``)."""
        return self.ranks + self.tied / 2.0

    def per_user(self, name: str) -> np.ndarray:
        """``(U,)`` values of one metric per user, e.g. ``result.per_user("NDCG@10")`` (for
        :func:`paired_bootstrap`; under ``ties="expected"`` each is the user's expected value)."""
        return per_user_metric(self.ranks, name, self.tied)

    def to_dict(self) -> dict:
        """JSON-ready summary: ``{"protocol", "ties", "num_users", **metrics}``."""
        return {"protocol": self.protocol, "ties": self.ties, "num_users": self.num_users, **self.metrics}

    def __str__(self) -> str:
        return format_metrics({"": self}, ks=self.ks)


def format_metrics(results: dict, ks: Sequence[int] = (10, 100)) -> str:
    """A plain-text table, one row per named :class:`EvalResult` (or metrics dict), protocol and
    tie rule shown (a dict without a ``"ties"`` key shows ``?``)."""
    cols = [f"HR@{k}" for k in ks] + [f"NDCG@{k}" for k in ks] + ["MRR"]
    width = max([len(str(n)) for n in results] + [6])
    lines = [f"{'method':<{width}}  {'protocol':<12}  {'ties':<11}  " + "  ".join(f"{c:>8}" for c in cols)]
    for name, res in results.items():
        metrics = res.metrics if isinstance(res, EvalResult) else res
        protocol = res.protocol if isinstance(res, EvalResult) else metrics.get("protocol", "?")
        ties = res.ties if isinstance(res, EvalResult) else metrics.get("ties", "?")
        row = "  ".join(f"{metrics[c]:8.4f}" if c in metrics else f"{'-':>8}" for c in cols)
        lines.append(f"{str(name):<{width}}  {protocol:<12}  {ties:<11}  {row}")
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
    ties: str = EXPECTED,
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
        ties: ``"expected"`` (default: exact expectation under a uniformly random order of the
            items tied with the target) or ``"pessimistic"`` (target below all its ties).

    Returns:
        :class:`EvalResult` with the metrics, the per-user counts (``ranks``, ``tied``), the
        protocol and the tie rule.

    Raises:
        ValueError: lengths disagree, ``score_fn`` returns the wrong shape, or an unknown protocol
        or tie rule.
    """
    import inspect

    if protocol not in (FULL, SAMPLED) and not protocol.startswith("sampled-"):
        raise ValueError(f"unknown protocol {protocol!r}: use 'full-ranking' or 'sampled-100'")
    _check_ties(ties)
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
        from rarec_lite.progress import tqdm

        starts = tqdm(starts, desc=f"evaluate ({protocol})", unit="batch")
    greater = np.empty(len(targets), dtype=np.int64)
    tied = np.empty(len(targets), dtype=np.int64)
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
                counts = sampled_rank_ties(scores, targets[start:stop], negatives[start:stop])
            else:
                counts = full_ranking_rank_ties(scores, targets[start:stop], list(exclude[start:stop]))
            greater[start:stop], tied[start:stop] = counts
    if ties == PESSIMISTIC:
        greater, tied = greater + tied, np.zeros_like(tied)
    return EvalResult(metrics_from_ranks(greater, ks, tied), greater, protocol, len(targets), tuple(ks), tied, ties)


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
        per_user_a, per_user_b: ``(U,)`` per-user values (e.g. ``EvalResult.per_user("NDCG@10")``
            or ``per_user_metric(ranks, "NDCG@10", tied)``; under ``ties="expected"`` these are
            per-user expectations, fractional values) on the **same users in the same order**,
            computed with the **same tie rule** for both methods.

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
