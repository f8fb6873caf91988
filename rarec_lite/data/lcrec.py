"""Readers of the LC-Rec layout: ``<Name>.inter.json`` + ``<Name>.item.json``.

Many public LLM-recommendation repositories (LC-Rec, Zheng et al. ICDE'24; LETTER, Wang et al.
CIKM'24; and their successors) ship the Amazon categories this way:

- ``<Name>.inter.json``: ``{"<user id>": [<item id>, ...], ...}``, each list in time order,
  oldest first (there are no timestamps);
- ``<Name>.item.json``: ``{"<item id>": {"title": ..., "brand": ..., "categories": ...,
  "description": ...}, ...}``; ``categories`` is one comma-joined path, root first
  (``"Industrial & Scientific,Fasteners,Screws"``; a node may itself contain ``", "``, as in
  ``"Tapes, Adhesives & Sealants"``, so only a comma *not* followed by a space separates nodes).

Ids are usually contiguous integers written as strings; the raw reviewer ids and ASINs are not kept.
JSON has no line numbers for keys, so errors name the file, the line where the key is written, and
the key.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd

from ._io import _BadLines, _clean, _interactions_frame, _meta_frame

INTER_SUFFIX, ITEM_SUFFIX = ".inter.json", ".item.json"
_NODE_SEPARATOR = re.compile(r",(?! )")


def _line_of(text: str, key: str, occurrence: int = 1) -> int | None:
    """The 1-based line where ``"key":`` is written for the ``occurrence``-th time (``None`` if not found)."""
    pattern = re.compile(r'"' + re.escape(key) + r'"\s*:')
    for n, match in enumerate(pattern.finditer(text), start=1):
        if n == occurrence:
            return text.count("\n", 0, match.start()) + 1
    return None


def _where(path: Path, text: str, key: str, occurrence: int = 1) -> str:
    line = _line_of(text, key, occurrence)
    return f"{path}:{line}" if line is not None else str(path)


def _load_object(path: Path, what: str) -> tuple[list[tuple[str, object]], str]:
    """The top-level JSON object of ``path`` as ``(key, value)`` pairs in file order, and the text.

    Raises:
        FileNotFoundError: no file. ValueError: not UTF-8, malformed JSON (file:line:column),
        not an object, or a key that appears twice (file:line of the second, and the key).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not text.strip():
        raise ValueError(f"{path}: empty file")
    try:
        top = json.loads(text, object_pairs_hook=lambda pairs: pairs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from exc
    if not isinstance(top, list) or (top and not isinstance(top[0], tuple)):
        raise ValueError(f"{path}: expected a JSON object {{{what}}} at the top level, got {type(top).__name__}")
    seen: dict[str, int] = {}
    for key, _ in top:
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            raise ValueError(f"{_where(path, text, key, 2)}: duplicate id {key!r} (first at line "
                             f"{_line_of(text, key)}); every id must appear once")
    return top, text


def read_lcrec_interactions(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read ``<Name>.inter.json``: one chronological item list per user.

    The file has no timestamps: ``timestamp`` is the 0-based position in the user's list, so the
    file's order is kept exactly (as for :func:`rarec_lite.data.openp5.read_user_sequences`).

    Returns:
        DataFrame with ``user`` (str), ``item`` (str id), ``timestamp`` (int64 position),
        ``order`` (int64 file position).

    Raises:
        ValueError: ``file:line`` naming the user for a sequence that is not a non-empty list of
            item ids (strings or integers), unless ``skip_bad_lines`` (then counted and skipped);
            a duplicate user id (always); malformed JSON; no interaction.
    """
    path = Path(path)
    pairs, text = _load_object(path, '"user": [item, ...]')
    bad = _BadLines(path, skip_bad_lines)
    users, items, times = [], [], []
    for user, seq in pairs:
        if isinstance(seq, list) and seq and all(isinstance(x, tuple) for x in seq):
            seq = None  # a list of objects
        ok = isinstance(seq, list) and seq and all(
            (isinstance(x, str) and x.strip()) or (isinstance(x, int) and not isinstance(x, bool)) for x in seq)
        if not ok:
            got = "an empty list" if seq == [] else (
                "a list with a non-id element" if isinstance(seq, list) else
                f"{'an object' if isinstance(seq, (tuple, list)) else type(seq).__name__} ({str(seq)[:40]})")
            bad(_line_of(text, user) or 0, f"user {user!r}: the sequence must be a non-empty list of item ids, got {got}")
            continue
        users.extend([user] * len(seq))
        items.extend(str(x).strip() for x in seq)
        times.extend(range(len(seq)))
    return _interactions_frame(path, users, items, times, bad)


def split_categories(value) -> list[list[str]]:
    """An LC-Rec ``categories`` string as one path: ``"A,B, C,D"`` gives ``[["A", "B, C", "D"]]``
    (a comma followed by a space belongs to the node). A list is taken as one path. ``[]`` when empty."""
    if value is None:
        return []
    if isinstance(value, list):
        nodes = [str(v) for v in value]
    elif isinstance(value, str):
        nodes = _NODE_SEPARATOR.split(value)
    else:
        raise TypeError(f"categories must be a string or a list, got {type(value).__name__}")
    nodes = [n.strip() for n in nodes if n.strip()]
    return [nodes] if nodes else []


def read_lcrec_items(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read ``<Name>.item.json``: one record per item id.

    A missing or empty ``title`` is allowed (the item text then falls back to brand and category,
    and :func:`rarec_lite.data.text.build_item_texts` counts it); ``description`` is not used.

    Returns:
        DataFrame as :func:`rarec_lite.data.amazon.read_meta_2014`: ``asin`` (the item id),
        ``title``, ``brand`` (HTML entities unescaped, tags removed), ``categories`` (one path).

    Raises:
        ValueError: ``file:line`` naming the item and field for a record that is not an object, or
            a ``title``/``brand``/``categories`` of the wrong type, unless ``skip_bad_lines``; a
            duplicate item id (always); malformed JSON.
    """
    path = Path(path)
    pairs, text = _load_object(path, '"item": {"title": ..., ...}')
    bad = _BadLines(path, skip_bad_lines)
    rows: dict[str, tuple] = {}
    for item, rec in pairs:
        line = _line_of(text, item) or 0
        if not isinstance(rec, list) or (rec and not isinstance(rec[0], tuple)):
            bad(line, f"item {item!r}: expected an object with a title, got {type(rec).__name__}")
            continue
        rec = dict(rec)
        wrong = [f for f in ("title", "brand") if rec.get(f) is not None and not isinstance(rec[f], str)]
        if wrong:
            bad(line, f"item {item!r}: field {wrong[0]!r} must be a string, got {type(rec[wrong[0]]).__name__}")
            continue
        try:
            cats = split_categories(rec.get("categories"))
        except TypeError as exc:
            bad(line, f"item {item!r}: field 'categories': {exc}")
            continue
        rows[item] = (_clean(rec.get("title")), _clean(rec.get("brand")), cats)
    return _meta_frame(path, rows, bad)


def check_items_known(interactions: pd.DataFrame, items: pd.DataFrame, inter_path, item_path) -> None:
    """Every item of ``<Name>.inter.json`` must have a record in ``<Name>.item.json``.

    Raises:
        ValueError: names the first missing item id, a user that has it, both files, and how many
            item ids are missing in all.
    """
    known = set(items["asin"])
    missing = interactions.loc[~interactions["item"].isin(known)]
    if len(missing):
        first = missing.iloc[0]
        n = missing["item"].nunique()
        raise ValueError(f"{inter_path}: item {first['item']!r} (in the sequence of user {first['user']!r}) has "
                         f"no record in {item_path}" + (f"; {n} item ids are missing in all" if n > 1 else ""))
