"""Training samples for the alignment module: making them, denoising them, diversifying them.

RA-Rec (Yu et al. 2024, Sec. 3, "efficient data construction") trains the alignment module on a
small, clean and varied sample instead of every interaction:

* :func:`make_samples` takes each user's **validation** pair (history ``s[:-2]``, target
  ``s[-2]``; ``part="valid"``, the pipeline's default) or cuts the **train** sequence ``s[:-2]``
  into (history, next item) samples (``part="train"``). The test target ``s[-1]`` is never used.

  **Why validation pairs.** The frozen SASRec is trained on ``s[:-2]``: every next item inside it
  was one of SASRec's own training targets, which it has memorised (on 2,400 such samples
  SASRec's HR@100 was 0.231 vs 0.030 on test users, RA-Rec issue, item 4). An aligner trained
  there learns to trust an ID signal ~8x stronger than at test time. ``s[-2]`` is only used by
  SASRec for early stopping, never as a training target, so on validation pairs the ID
  embeddings are exactly as informative as at test time (:mod:`rarec_lite.sasrec` documents
  the split).
* :func:`denoise` drops samples whose target shares no word with the history: such a target is
  unpredictable from the text side and only adds noise.
* :func:`diversify` picks ``n`` samples uniformly over buckets of history length (the user
  side) and of target popularity (the item side), so short and long users, head and tail items
  are all represented.

Each step is switchable (call it or not) and returns a report of counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["Sample", "STOP_WORDS", "make_samples", "words", "denoise", "quantile_buckets", "diversify",
           "item_popularity"]


@dataclass(frozen=True)
class Sample:
    """One training sample: ``user``'s ``history`` (item ids, oldest first) and the next item ``target``."""

    user: int
    history: tuple[int, ...]
    target: int


def make_samples(split: Any, max_per_user: int | None = 5, min_history: int = 1, seed: int = 0,
                 max_history: int | None = None, part: str = "train") -> list[Sample]:
    """Training samples of the alignment from a leave-one-out split.

    ``part="valid"``: one sample per user, ``Sample(u, valid_history[-max_history:], valid_target)``
    (users whose history is shorter than ``min_history`` are skipped). ``part="train"``: for a
    train sequence ``s`` (already without the valid and test items), every position
    ``t >= min_history`` gives ``Sample(u, s[max(0, t - max_history):t], s[t])``; with
    ``max_per_user`` at most that many positions per user are drawn (uniformly, ``seed``).

    Args:
        split: a :class:`rarec_lite.data.LeaveOneOut` (``part="valid"`` needs one), or a list of
            per-user train sequences (index = user id).
        part: ``"valid"`` or ``"train"`` (see the module docstring for why the pipeline uses
            ``"valid"``).
        max_per_user: cap per user (``None`` = every position).
        min_history: shortest history (>= 1).
        seed: RNG seed of the per-user draw.
        max_history: keep only the last ``max_history`` items of a history (``None`` = all).

    Returns:
        Samples ordered by user, then position.

    Raises:
        ValueError: ``min_history < 1``, ``max_per_user < 1``, an unknown ``part``, or
            ``part="valid"`` without a split.
    """
    if part not in ("train", "valid"):
        raise ValueError(f"part must be 'train' or 'valid'; got {part!r}")
    if part == "valid":
        if not hasattr(split, "valid_target"):
            raise ValueError("part='valid' needs a LeaveOneOut split (with valid_history / valid_target)")
        out = []
        for user, (hist, target) in enumerate(zip(split.valid_history, split.valid_target)):
            hist = np.asarray(hist, dtype=np.int64)
            if len(hist) < min_history:
                continue
            if max_history is not None:
                hist = hist[-max_history:]
            out.append(Sample(user, tuple(int(x) for x in hist), int(target)))
        return out
    if min_history < 1:
        raise ValueError(f"min_history must be >= 1; got {min_history}")
    if max_per_user is not None and max_per_user < 1:
        raise ValueError(f"max_per_user must be >= 1 or None; got {max_per_user}")
    train = split.train if hasattr(split, "train") else split
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    for user, seq in enumerate(train):
        seq = np.asarray(seq, dtype=np.int64)
        positions = np.arange(min_history, len(seq))
        if max_per_user is not None and len(positions) > max_per_user:
            positions = np.sort(rng.choice(positions, size=max_per_user, replace=False))
        for t in positions:
            start = 0 if max_history is None else max(0, t - max_history)
            samples.append(Sample(user, tuple(int(x) for x in seq[start:t]), int(seq[t])))
    return samples


STOP_WORDS = frozenset(
    "a an and the of for in on with to by at from or & s amp".split()
)
"""Words that never count as shared (plus, in :func:`denoise`, words in too many item texts)."""

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> set[str]:
    """Lower-cased alphanumeric word tokens of ``text`` (``"T-Shirts & Tops"`` -> {t, shirts, tops})."""
    return set(_WORD.findall(text.lower()))


def denoise(samples: Sequence[Sample], item_text: Sequence[str], stop_words: Iterable[str] = STOP_WORDS,
            max_doc_freq: float | None = 0.5) -> tuple[list[Sample], dict]:
    """Drop samples whose target text shares no word with the history's texts.

    Words are lower-cased alphanumeric tokens (:func:`words`) minus ``stop_words`` and minus
    every word found in more than ``max_doc_freq`` of all item texts. On Amazon Clothing the
    item text is brand + category path, and every path starts with "Clothing, Shoes &
    Jewelry": without the document-frequency rule every sample would share "clothing".

    Args:
        samples: training samples.
        item_text: text of every item (index = item id).
        stop_words: words ignored.
        max_doc_freq: fraction in (0, 1]; ``None`` keeps every word but the stop words.

    Returns:
        ``(kept, report)``; report = ``{"before", "kept", "dropped", "ignored_words"}``
        (``ignored_words``: the frequent words dropped by ``max_doc_freq``, sorted).

    Raises:
        ValueError: a sample's item id is outside ``item_text``; ``max_doc_freq`` not in (0, 1].

    Source: RA-Rec (Yu et al. 2024), Sec. 3 data construction (denoising).
    """
    if max_doc_freq is not None and not 0 < max_doc_freq <= 1:
        raise ValueError(f"max_doc_freq must be in (0, 1] or None; got {max_doc_freq}")
    item_words = [words(t) for t in item_text]
    ignored = set(stop_words)
    frequent: set[str] = set()
    if max_doc_freq is not None and item_words:
        counts: dict[str, int] = {}
        for ws in item_words:
            for w in ws:
                counts[w] = counts.get(w, 0) + 1
        frequent = {w for w, c in counts.items() if c > max_doc_freq * len(item_words)}
        ignored |= frequent
    kept = []
    for k, s in enumerate(samples):
        for i in (*s.history, s.target):
            if not 0 <= i < len(item_words):
                raise ValueError(f"samples[{k}] (user {s.user}): item id {i} outside item_text (size {len(item_words)})")
        target = item_words[s.target] - ignored
        history = set().union(*(item_words[i] for i in s.history)) - ignored if s.history else set()
        if target & history:
            kept.append(s)
    report = {"before": len(samples), "kept": len(kept), "dropped": len(samples) - len(kept),
              "ignored_words": sorted(frequent)}
    return kept, report


def item_popularity(train_sequences: Iterable[Sequence[int]], num_items: int) -> np.ndarray:
    """(I,) int64 count of each item in the train sequences (leave-one-out train part only)."""
    pop = np.zeros(num_items, dtype=np.int64)
    for seq in train_sequences:
        np.add.at(pop, np.asarray(seq, dtype=np.int64), 1)
    return pop


def quantile_buckets(values: np.ndarray, num_buckets: int) -> np.ndarray:
    """Quantile bucket of every value, ties kept together: (N,) int64 in ``[0, num_buckets)``.

    Value ``v`` goes to bucket ``floor(num_buckets * midrank(v) / N)``, where ``midrank`` is the
    mean 0-based rank of the values equal to ``v``. Equal values always share a bucket, and a
    tie group lands where its middle falls: e.g. history lengths ``[1]*6 + [5]*4`` with 2
    buckets give ``1 -> 0`` (midrank 2.5) and ``5 -> 1`` (midrank 7.5). Heavy ties can leave
    a bucket empty.
    """
    values = np.asarray(values)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts
    midrank = start + (counts - 1) / 2.0
    buckets = np.floor(num_buckets * midrank / len(values)).astype(np.int64)
    return np.minimum(buckets, num_buckets - 1)[inverse.reshape(-1)]


def _ranges(values: np.ndarray, buckets: np.ndarray, num_buckets: int) -> list:
    return [[int(values[buckets == b].min()), int(values[buckets == b].max())] if (buckets == b).any() else None
            for b in range(num_buckets)]


def diversify(samples: Sequence[Sample], n: int, item_popularity: np.ndarray, num_buckets: int = 4,
              seed: int = 0) -> tuple[list[Sample], dict]:
    """Choose ``n`` samples spread uniformly over a 2-D grid of buckets.

    Axis 1: quantile bucket (:func:`quantile_buckets`) of the history length (user side);
    axis 2: quantile bucket of the target item's train popularity (item side); ``num_buckets`` per axis, so up to
    ``num_buckets ** 2`` cells. Each non-empty cell gets ``n / #cells`` samples drawn
    without replacement; a cell with fewer samples gives all it has and the rest is shared
    by the other cells (water-filling), so exactly ``min(n, len(samples))`` are chosen.

    Args:
        samples: candidates.
        n: how many to choose (>= 1).
        item_popularity: (I,) interaction count per item (train part only).
        num_buckets: buckets per axis (>= 1).
        seed: RNG seed.

    Returns:
        ``(chosen, report)``; chosen keeps the input order. Report: ``before``, ``chosen``,
        ``length_ranges``, ``popularity_ranges`` ([min, max] of each bucket, ``None`` when
        empty), and per-cell and per-axis counts before/after
        (``cells_before``/``cells_after``: ``num_buckets x num_buckets`` nested lists, rows =
        length bucket, columns = popularity bucket).

    Raises:
        ValueError: ``n < 1`` or ``num_buckets < 1``; a target outside ``item_popularity``.

    Source: RA-Rec (Yu et al. 2024), Sec. 3 data construction (diversity).
    """
    if n < 1 or num_buckets < 1:
        raise ValueError(f"n and num_buckets must be >= 1; got n={n}, num_buckets={num_buckets}")
    pop = np.asarray(item_popularity)
    targets = np.array([s.target for s in samples], dtype=np.int64)
    if len(targets) and (targets.min() < 0 or targets.max() >= len(pop)):
        raise ValueError(f"a sample target is outside item_popularity (size {len(pop)})")
    lengths = np.array([len(s.history) for s in samples], dtype=np.int64)
    target_pop = pop[targets] if len(targets) else targets
    len_b = quantile_buckets(lengths, num_buckets)
    pop_b = quantile_buckets(target_pop, num_buckets)
    cell = len_b * num_buckets + pop_b
    members = [np.flatnonzero(cell == c) for c in range(num_buckets * num_buckets)]

    # water-filling: equal quota per cell, small cells give away what they cannot fill
    quota = np.zeros(len(members), dtype=np.int64)
    remaining = min(n, len(samples))
    open_cells = [c for c in range(len(members)) if len(members[c])]
    while remaining > 0 and open_cells:
        share, extra = divmod(remaining, len(open_cells))
        still_open = []
        for rank, c in enumerate(open_cells):
            want = share + (1 if rank < extra else 0)
            take = min(want, len(members[c]) - quota[c])
            quota[c] += take
            remaining -= take
            if quota[c] < len(members[c]):
                still_open.append(c)
        open_cells = still_open

    rng = np.random.default_rng(seed)
    chosen_idx = np.sort(np.concatenate(
        [rng.choice(m, size=q, replace=False) for m, q in zip(members, quota) if q > 0]
        or [np.array([], dtype=np.int64)]))
    chosen = [samples[i] for i in chosen_idx]

    def grid(counts: np.ndarray) -> list[list[int]]:
        return counts.reshape(num_buckets, num_buckets).tolist()

    before = np.array([len(m) for m in members])
    report = {
        "before": len(samples),
        "chosen": len(chosen),
        "length_ranges": _ranges(lengths, len_b, num_buckets),
        "popularity_ranges": _ranges(target_pop, pop_b, num_buckets),
        "cells_before": grid(before),
        "cells_after": grid(quota),
        "length_buckets_before": np.bincount(len_b, minlength=num_buckets).tolist(),
        "length_buckets_after": np.bincount(len_b[chosen_idx], minlength=num_buckets).tolist(),
        "popularity_buckets_before": np.bincount(pop_b, minlength=num_buckets).tolist(),
        "popularity_buckets_after": np.bincount(pop_b[chosen_idx], minlength=num_buckets).tolist(),
    }
    return chosen, report
