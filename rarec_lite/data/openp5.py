"""Readers of the OpenP5 layout: ``user_sequence.txt`` plus an item table (``*.tsv``).

``user_sequence.txt`` (Xu et al., "OpenP5", arXiv 2306.11134) has one line per user,
``<userID> <item_1> ... <item_n>``, items already in chronological order; it has no timestamps
and no item text. The item table is a tab-separated file with a header: ``asin`` plus any of
``title``, ``brand``, ``categories`` (the shared Clothing mirror's ``item_brand_categories.tsv``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ._io import _BadLines, _clean, _interactions_frame, _iter_lines, _meta_frame, _paths_from

#: Preferred name of the OpenP5-style item table.
ITEM_TABLE_NAME = "item_brand_categories.tsv"


def read_user_sequences(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read an OpenP5-style ``user_sequence.txt``: ``<userID> <item_1> ... <item_n>`` a line,
    items already in chronological order (Xu et al., "OpenP5", arXiv 2306.11134).

    The file has no timestamps: ``timestamp`` is the 0-based position in the line, so the
    file's order is kept exactly.

    Returns:
        DataFrame as :func:`read_reviews_2014` (``user``, ``item``, ``timestamp``, ``order``).

    Raises:
        ValueError: ``file:line`` for a line with a user but no item, or a user that appears
            on two lines, unless ``skip_bad_lines``; no interaction in the file.
    """
    path = Path(path)
    bad = _BadLines(path, skip_bad_lines)
    users, items, times = [], [], []
    seen: dict[str, int] = {}
    for lineno, line in _iter_lines(path):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            bad(lineno, f"user {tokens[0]!r} has no items (expected '<userID> <item_1> ... <item_n>')")
            continue
        user = tokens[0]
        if user in seen:
            bad(lineno, f"user {user!r} appears again (first on line {seen[user]})")
            continue
        seen[user] = lineno
        users.extend([user] * (len(tokens) - 1))
        items.extend(tokens[1:])
        times.extend(range(len(tokens) - 1))
    return _interactions_frame(path, users, items, times, bad)


def read_item_table(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read a tab-separated item table with a header: ``asin`` plus any of ``title``,
    ``brand``, ``categories`` (node names joined with ``" | "``, root first; for the shared
    Clothing mirror a flattened union of the item's category paths).

    Returns:
        DataFrame as :func:`rarec_lite.data.amazon.read_meta_2014` (``categories`` holds a one-path
        list); a repeated asin keeps the first non-empty value of each field.

    Raises:
        ValueError: no ``asin`` column (names the file), or ``file:line`` for a row with the
            wrong number of fields or an empty asin, unless ``skip_bad_lines``.
    """
    path = Path(path)
    bad = _BadLines(path, skip_bad_lines)
    rows: dict[str, tuple] = {}
    header = None
    for lineno, line in _iter_lines(path):
        line = line.rstrip("\r\n")
        if header is None:
            header = line.split("\t")
            if "asin" not in header:
                raise ValueError(f"{path}:1: item table header has no 'asin' column (got {header})")
            col = {name: header.index(name) for name in ("asin", "title", "brand", "categories") if name in header}
            continue
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            bad(lineno, f"expected {len(header)} tab-separated fields ({', '.join(header)}), got {len(fields)}")
            continue
        asin = fields[col["asin"]].strip()
        if not asin:
            bad(lineno, "empty asin")
            continue
        get = lambda name: fields[col[name]] if name in col else ""  # noqa: E731
        new = (_clean(get("title")), _clean(get("brand")), _paths_from(get("categories")))
        # a repeated asin: the first non-empty value of each field
        rows[asin] = tuple(old if old else n for old, n in zip(rows[asin], new)) if asin in rows else new
    if header is None:
        raise ValueError(f"{path}: no header line")
    return _meta_frame(path, rows, bad)
