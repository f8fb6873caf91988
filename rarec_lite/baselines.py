"""Two baselines every recommender must beat: popularity and item-text nearest neighbours.

Both follow the scorer interface of :func:`rarec_lite.metrics.evaluate`:
``.fit(...)`` then ``.score(histories) -> (B, I)`` float32 tensor, higher = more relevant.

``MostPop``
    Every user gets the same list: items ranked by how often they occur in the training
    part of the sequences (the classic non-personalised baseline, e.g. Rendle et al. 2009,
    "BPR", Sec. 6). Only history items are removed, by the evaluation.
``ItemTextKNN``
    Content-based nearest neighbours: each item is a TF-IDF vector of its text (brand and
    category words on Clothing); a user's profile is the recency-weighted sum of the vectors
    of its last ``k_recent`` items; a candidate's score is its cosine similarity to that
    profile (Lops, de Gemmis & Semeraro, "Content-based Recommender Systems", 2011). Ties,
    frequent with category words, are broken by popularity.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

import numpy as np
import torch


def late_fusion(scores: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                eps: float = 1e-12) -> torch.Tensor:
    """Late (score-level) fusion: ``sum_k w_k * (S_k - mean_row(S_k)) / std_row(S_k)``.

    Args:
        scores: K score matrices, each ``(B, I)`` (users x catalogue items, higher = more relevant),
            e.g. SASRec's and zero-shot ID Translation's scores of the same users.
        weights: K non-negative weights (default: 1 each, i.e. equal weight after normalisation;
            nothing is tuned).
        eps: a row whose standard deviation is below ``eps`` (a constant scorer) contributes 0.

    Returns:
        ``(B, I)`` float32 fused scores. Each row is normalised on its own (mean 0 and standard
        deviation 1 over all ``I`` items, population std), so scorers on different scales (a
        cosine / temperature and an LLM dot product) count equally; per row a positive affine map
        of one scorer does not change the fused ranking.

    Raises:
        ValueError: no matrices, matrices of different shapes or not 2-D, a wrong number of weights,
            or a negative weight.

    Source: CombSUM (Fox & Shaw 1994, "Combination of multiple searches") with z-score
    normalisation (Montague & Aslam 2001, "Relevance score normalization for metasearch").
    """
    if len(scores) == 0:
        raise ValueError("late_fusion: no score matrices")
    shape = tuple(scores[0].shape)
    for k, s in enumerate(scores):
        if s.dim() != 2 or tuple(s.shape) != shape:
            raise ValueError(f"late_fusion: score matrix {k} has shape {tuple(s.shape)}; expected 2-D {shape}")
    weights = [1.0] * len(scores) if weights is None else [float(w) for w in weights]
    if len(weights) != len(scores):
        raise ValueError(f"late_fusion: {len(weights)} weights for {len(scores)} score matrices")
    if any(w < 0 for w in weights):
        raise ValueError(f"late_fusion: weights must be >= 0; got {weights}")
    out = torch.zeros(shape, dtype=torch.float32)
    for w, s in zip(weights, scores):
        s = s.detach().float().cpu()
        std = s.std(dim=1, keepdim=True, unbiased=False)
        z = (s - s.mean(dim=1, keepdim=True)) / std.clamp_min(eps)
        out += w * torch.where(std < eps, torch.zeros_like(z), z)
    return out


def item_popularity(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """``(I,)`` int64 number of occurrences of each item in ``sequences``.

    Raises:
        ValueError: an item id outside ``0..num_items-1`` (names the sequence).
    """
    counts = np.zeros(num_items, dtype=np.int64)
    for u, s in enumerate(sequences):
        s = np.asarray(s, dtype=np.int64)
        if s.size and (s.min() < 0 or s.max() >= num_items):
            raise ValueError(f"sequence {u} has an item id outside 0..{num_items - 1}")
        np.add.at(counts, s, 1)
    return counts


class MostPop:
    """Most-popular baseline: ``score[u, i] = count of item i in the training sequences``."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, train_sequences: Sequence[np.ndarray], num_items: int) -> "MostPop":
        """Count items in ``train_sequences`` (the ``s[:-2]`` parts of leave-one-out). Returns self."""
        self.counts = item_popularity(train_sequences, num_items)
        self._row = torch.from_numpy(self.counts.astype(np.float32))
        return self

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, I)`` float32: the popularity row repeated for each history (a fresh copy).

        Raises:
            RuntimeError: called before :meth:`fit`.
        """
        if self.counts is None:
            raise RuntimeError("MostPop.score called before fit")
        return self._row.repeat(len(histories), 1)

    __call__ = score


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens, plus each ``" | "``-separated field as one phrase token.

    ``"Nike | Men | Running Shoes"`` -> ``["nike", "men", "running", "shoes", "[men]",
    "[running shoes]", "[nike]"]`` (phrase tokens keep "running shoes" apart from
    "shoes" elsewhere). Order is not meaningful.
    """
    text = text.lower()
    words = _WORD.findall(text)
    phrases = {f"[{p.strip()}]" for p in text.split("|") if p.strip()} if "|" in text else set()
    return words + sorted(phrases)


class ItemTextKNN:
    """Item-text nearest neighbours over TF-IDF vectors (scipy sparse matrices; scipy is a declared dependency).

    Args:
        k_recent: how many of the user's most recent items form its profile.
        decay: weight of the ``j``-th most recent item is ``decay ** j`` (``j = 0`` newest).
        min_df: ignore tokens found in fewer items.
    """

    def __init__(self, k_recent: int = 5, decay: float = 0.7, min_df: int = 2) -> None:
        self.k_recent, self.decay, self.min_df = k_recent, decay, min_df
        self.matrix = None  # (I, V) scipy CSR, rows L2-normalised
        self.vocabulary: dict[str, int] = {}

    def fit(self, item_text: Sequence[str], train_sequences: Sequence[np.ndarray] | None = None) -> "ItemTextKNN":
        """Build the ``(I, V)`` TF-IDF matrix; popularity from ``train_sequences`` breaks ties.

        ``idf = log((1 + I) / (1 + df)) + 1`` (smoothed), ``tf`` = raw count; rows L2-normalised.
        Items with empty text get a zero row (score 0 except for the tie-break).

        Returns:
            self.
        """
        import scipy.sparse as sp

        docs = [tokenize(t or "") for t in item_text]
        num_items = len(docs)
        df = Counter(tok for doc in docs for tok in set(doc))
        vocab = sorted(t for t, c in df.items() if c >= self.min_df)
        self.vocabulary = {t: j for j, t in enumerate(vocab)}
        idf = np.array([math.log((1 + num_items) / (1 + df[t])) + 1.0 for t in vocab])
        rows, cols, vals = [], [], []
        for i, doc in enumerate(docs):
            for tok, tf in Counter(t for t in doc if t in self.vocabulary).items():
                j = self.vocabulary[tok]
                rows.append(i)
                cols.append(j)
                vals.append(tf * idf[j])
        m = sp.csr_matrix((vals, (rows, cols)), shape=(num_items, len(vocab)), dtype=np.float64)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        self.matrix = sp.diags(1.0 / norms) @ m
        self.matrix = self.matrix.tocsr()
        pop = (item_popularity(train_sequences, num_items) if train_sequences is not None
               else np.zeros(num_items, dtype=np.int64))
        # strictly below the smallest possible gap between two distinct cosine sums we care about
        self._tie_break = torch.from_numpy((1e-6 * pop / max(pop.max(), 1)).astype(np.float32))
        return self

    def profile(self, histories: Sequence[np.ndarray]):
        """``(B, V)`` sparse user profiles: recency-weighted sums of the last ``k_recent`` item rows."""
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for b, h in enumerate(histories):
            recent = np.asarray(h, dtype=np.int64)[-self.k_recent:][::-1]  # newest first
            for j, item in enumerate(recent):
                rows.append(b)
                cols.append(int(item))
                vals.append(self.decay ** j)
        weights = sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), self.matrix.shape[0]))
        return weights @ self.matrix

    def score(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, I)`` float32: ``cos``-weighted similarity of every item to each user's profile.

        Raises:
            RuntimeError: called before :meth:`fit`.
        """
        if self.matrix is None:
            raise RuntimeError("ItemTextKNN.score called before fit")
        profile = self.profile(histories).toarray()  # (B, V) dense: a profile touches many tokens
        sims = np.asarray(self.matrix @ profile.T, dtype=np.float32).T  # (I, V) @ (V, B) -> (B, I)
        return torch.from_numpy(sims) + self._tie_break

    __call__ = score
