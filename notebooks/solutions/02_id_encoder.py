"""Solution: HR@K and NDCG@K for one user under full ranking (notebook 02)."""
import numpy as np


def _rank(scores, target, history):
    """0-based rank of the target: items (not in the history) scoring at least as high as it."""
    scores = np.asarray(scores, dtype=float)
    others = np.ones(len(scores), dtype=bool)
    others[list(history)] = False
    others[target] = False
    return int(np.sum(scores[others] >= scores[target]))


def hr_at_k(scores, target, history, k):
    return 1 if _rank(scores, target, history) < k else 0


def ndcg_at_k(scores, target, history, k):
    r = _rank(scores, target, history)
    return 1.0 / np.log2(r + 2) if r < k else 0.0
