"""Dataset statistics: counts, sequence lengths, popularity concentration (Gini, top shares)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

def gini(counts) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, towards 1 = concentrated).

    ``G = sum_i (2i - n - 1) x_(i) / (n * sum x)`` with ``x_(1) <= ... <= x_(n)``, i from 1.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(np.sum((2 * i - n - 1) * x) / (n * x.sum()))


def top_share(counts, fraction: float) -> float:
    """Share of all interactions that go to the top ``fraction`` of items (at least one item)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    if x.sum() == 0:
        return 0.0
    top = max(1, int(round(fraction * x.size)))
    return float(x[:top].sum() / x.sum())


def _summary(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "min": int(v.min()), "max": int(v.max()), "mean": round(float(v.mean()), 4), "median": float(np.median(v)),
        "percentiles": {f"p{p}": float(np.percentile(v, p)) for p in (10, 25, 75, 90, 95, 99)},
    }


def compute_stats(sequences: Sequence[np.ndarray], num_items: int) -> dict:
    """Counts, sequence-length summary and item-popularity summary (over all interactions)."""
    lengths = np.array([len(s) for s in sequences])
    pop = np.bincount(np.concatenate(sequences), minlength=num_items)
    return {
        "users": int(len(sequences)),
        "items": int(num_items),
        "interactions": int(lengths.sum()),
        "density": float(lengths.sum() / (len(sequences) * num_items)),
        "sequence_length": _summary(lengths),
        "item_popularity": {
            **_summary(pop),
            "gini": round(gini(pop), 4),
            "top1pct_share": round(top_share(pop, 0.01), 4),
            "top10pct_share": round(top_share(pop, 0.10), 4),
        },
    }
