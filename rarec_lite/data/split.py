"""From interactions to sequences: chronological order, k-core filter, leave-one-out split.

Order (:func:`sort_chronologically`): per user by ``timestamp``; items reviewed at the same
timestamp (2014/2018 reviews have day granularity) are ordered by their raw item id, so the
result does not depend on the order of the rows in the file. Layouts without timestamps (OpenP5,
LC-Rec) use the position in the user's line as timestamp, which keeps their order exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd




def k_core(interactions: pd.DataFrame, k: int = 5, user_col: str = "user", item_col: str = "item") -> pd.DataFrame:
    """Iterative k-core: drop users and items with fewer than ``k`` interactions until none is left.

    One pass is not enough: dropping a rare item can push a user below ``k``, which can push
    another item below ``k``, and so on. The loop stops at the fixed point where every user
    and every item has at least ``k`` rows (He & McAuley, WWW'16, "5-core").

    Args:
        interactions: one row per interaction; other columns are carried along.
        k: minimum count for users and items (``k <= 1`` returns the input unchanged).

    Returns:
        The surviving rows in their original order; ``attrs["k_core_rounds"]`` holds the
        number of filtering rounds.
    """
    if k <= 1:
        return interactions
    df = interactions
    rounds = 0
    while True:
        user_counts = df[user_col].map(df[user_col].value_counts())
        item_counts = df[item_col].map(df[item_col].value_counts())
        keep = (user_counts >= k) & (item_counts >= k)
        if bool(keep.all()):
            break
        df = df[keep.to_numpy()]
        rounds += 1
    df = df.copy()
    df.attrs["k_core_rounds"] = rounds
    return df


def sort_chronologically(interactions: pd.DataFrame) -> pd.DataFrame:
    """Sort rows by (user, timestamp, item): chronological per user, same-time items by raw item id.

    Amazon 2014 and 2018 timestamps have day granularity, so same-day items are common. Their
    order in the file is not a chronology (and changes when a file is re-exported), so ties are
    broken by the raw item id (ASIN), a key that does not depend on row order: rows (C, day 100),
    (A, day 200), (B, day 100) give [B, C, A] in any file order. Files without timestamps
    (OpenP5, LC-Rec) have no ties: their timestamp is the position in the user's line.

    Returns:
        The rows in that order, index reset (``order``, the file position, is carried along).
    """
    return interactions.sort_values(["user", "timestamp", "item"], kind="stable").reset_index(drop=True)


@dataclass
class LeaveOneOut:
    """Leave-one-out split (Kang & McAuley, SASRec, ICDM'18; RA-Rec Sec. 5.1).

    For user ``u`` with sequence ``s``: ``train[u] = s[:-2]``; validation predicts
    ``valid_target[u] = s[-2]`` from ``valid_history[u] = s[:-2]``; test predicts
    ``test_target[u] = s[-1]`` from ``test_history[u] = s[:-1]``.

    Fields: ``train``, ``valid_history``, ``test_history``: lists of ``np.ndarray[int64]``
    (one per user, chronological); ``valid_target``, ``test_target``: ``np.ndarray[int64]``
    of shape (U,).
    """

    train: list[np.ndarray]
    valid_history: list[np.ndarray]
    valid_target: np.ndarray
    test_history: list[np.ndarray]
    test_target: np.ndarray


def leave_one_out(sequences: Sequence[np.ndarray]) -> LeaveOneOut:
    """Split chronological sequences leave-one-out (see :class:`LeaveOneOut`).

    Raises:
        ValueError: a sequence shorter than 3 (names the user index).
    """
    for u, seq in enumerate(sequences):
        if len(seq) < 3:
            raise ValueError(f"user {u}: sequence of length {len(seq)}; leave-one-out needs at least 3 items")
    train = [np.asarray(s[:-2], dtype=np.int64) for s in sequences]
    return LeaveOneOut(
        train=train,
        valid_history=train,
        valid_target=np.array([s[-2] for s in sequences], dtype=np.int64),
        test_history=[np.asarray(s[:-1], dtype=np.int64) for s in sequences],
        test_target=np.array([s[-1] for s in sequences], dtype=np.int64),
    )
