"""Readers of the raw Amazon review releases: 2014, 2018 and 2023 (reviews + metadata).

================  ======================================================  ===========================
release           files                                                   reader
================  ======================================================  ===========================
``amazon2014``    ``reviews_<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz``     :func:`read_reviews_2014`,
                  (metadata lines are Python literals, not JSON)          :func:`read_meta_2014`
``amazon2018``    ``<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz``             :func:`read_reviews_2018`,
                                                                          :func:`read_meta_2018`
``amazon2023``    ``<Cat>.jsonl.gz`` + ``meta_<Cat>.jsonl.gz``             :func:`read_reviews_2023`,
                                                                          :func:`read_meta_2023`
================  ======================================================  ===========================

Sources: McAuley et al. (SIGIR'15) and He & McAuley (WWW'16) for 2014; Ni, Li & McAuley (EMNLP'19)
for 2018; Hou et al. 2024 (arXiv 2403.03952) for 2023. ``<Cat>`` is the release's category name
(:mod:`rarec_lite.data.catalog`). Reviews give one row per interaction (``user``, ``item``,
``timestamp``, ``order``); metadata one row per item (``asin``, ``title``, ``brand``, ``categories``).
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from ._io import _BadLines, _clean, _interactions_frame, _iter_lines, _meta_frame, _paths_from, _require_str


def _read_review_json(path, user_keys, item_keys, time_keys, skip_bad_lines) -> pd.DataFrame:
    path = Path(path)
    bad = _BadLines(path, skip_bad_lines)
    users, items, times = [], [], []
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(lineno, f"malformed JSON ({exc.msg}, column {exc.colno})")
            continue
        if not isinstance(rec, dict):
            bad(lineno, f"expected a JSON object, got {type(rec).__name__}")
            continue
        try:
            user = _require_str(rec, user_keys)
            item = _require_str(rec, item_keys)
        except KeyError as exc:
            bad(lineno, f"missing or empty field {exc.args[0]}")
            continue
        stamp = next((rec[k] for k in time_keys if k in rec), None)
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float, str)):
            bad(lineno, f"missing or non-numeric timestamp field {' or '.join(map(repr, time_keys))}")
            continue
        try:
            stamp = int(stamp)
        except ValueError:
            bad(lineno, f"timestamp {stamp!r} is not an integer")
            continue
        users.append(user)
        items.append(item)
        times.append(stamp)
    return _interactions_frame(path, users, items, times, bad)


def read_reviews_2014(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read a 2014 Amazon review file (``reviews_<Cat>_5.json.gz``; one JSON object a line).

    Source: McAuley et al., SIGIR'15 / He & McAuley, WWW'16 (fields ``reviewerID``, ``asin``,
    ``unixReviewTime`` in seconds, day granularity).

    Returns:
        DataFrame with columns ``user`` (str), ``item`` (str ASIN), ``timestamp`` (int64,
        seconds), ``order`` (int64, 0-based position in the file; breaks timestamp ties).

    Raises:
        ValueError: malformed line (``file:line``) unless ``skip_bad_lines``; empty or
            truncated gzip; no interaction in the file.
    """
    return _read_review_json(path, ("reviewerID",), ("asin",), ("unixReviewTime",), skip_bad_lines)


def read_reviews_2018(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read a 2018 Amazon review file (``<Cat>_5.json.gz``; Ni, Li & McAuley, EMNLP'19).

    Same fields and return value as :func:`read_reviews_2014`.
    """
    return _read_review_json(path, ("reviewerID",), ("asin",), ("unixReviewTime",), skip_bad_lines)


def read_reviews_2023(path: str | os.PathLike, skip_bad_lines: bool = False) -> pd.DataFrame:
    """Read a 2023 Amazon review file (``<Cat>.jsonl.gz``; Hou et al. 2024, "Bridging Language
    and Items for Retrieval and Recommendation", arXiv 2403.03952).

    Items are ``parent_asin`` (falling back to ``asin``), as in the 2023 benchmark;
    ``timestamp`` is in **milliseconds**. Return value as in :func:`read_reviews_2014`.
    """
    return _read_review_json(path, ("user_id",), ("parent_asin", "asin"), ("timestamp",), skip_bad_lines)



# Metadata readers: asin, title, brand, categories (a list of category paths)

_ASIN_LITERAL = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


def _read_meta(path, parse, kind: str, asin_keys, brand_of, categories_of, asins, skip_bad_lines) -> pd.DataFrame:
    path = Path(path)
    bad = _BadLines(path, skip_bad_lines)
    wanted = set(asins) if asins is not None else None
    rows: dict[str, tuple] = {}
    prefilter = wanted is not None and asin_keys[0] == "asin"
    for lineno, line in _iter_lines(path):
        if not line.strip():
            continue
        if prefilter:
            # Cheap pre-filter: a line that plainly names an unwanted ASIN is not parsed at all.
            # A line without a recognisable ASIN is parsed (and so checked) in full.
            match = _ASIN_LITERAL.search(line)
            if match and match.group(1) not in wanted:
                continue
        try:
            rec = parse(line)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            bad(lineno, f"not a {kind} record ({type(exc).__name__}: {str(exc)[:80]}); it is never executed")
            continue
        if not isinstance(rec, dict):
            bad(lineno, f"expected a {kind} dict, got {type(rec).__name__}")
            continue
        try:
            asin = _require_str(rec, asin_keys)
        except KeyError as exc:
            bad(lineno, f"missing or empty field {exc.args[0]}")
            continue
        if wanted is not None and asin not in wanted:
            continue
        try:
            cats = _paths_from(categories_of(rec))
        except TypeError as exc:
            bad(lineno, str(exc))
            continue
        fields = (_clean(rec.get("title")), _clean(brand_of(rec)), cats)
        if asin not in rows:
            rows[asin] = fields
        else:  # a repeated ASIN: the first non-empty value of each field (an empty first title does not win)
            rows[asin] = tuple(old if old else new for old, new in zip(rows[asin], fields))
    return _meta_frame(path, rows, bad)


def read_meta_2014(
    path: str | os.PathLike, asins: Iterable[str] | None = None, skip_bad_lines: bool = False
) -> pd.DataFrame:
    """Read 2014 Amazon metadata (``meta_<Cat>.json.gz``): one **Python literal** dict a line.

    Each line is parsed with :func:`ast.literal_eval`, which accepts only literals: a line
    that is code (e.g. ``__import__('os').system('x')``) is rejected, never executed.

    Args:
        path: the metadata file (gzip or plain).
        asins: if given, keep only these ASINs (lines naming other ASINs are not parsed,
            which makes the 1.5M-line Clothing file fast).
        skip_bad_lines: count and skip malformed lines instead of raising.

    Returns:
        DataFrame with ``asin``, ``title`` (str, "" if absent), ``brand`` (str), ``categories``
        (list of category paths, each a list of node names, root first). HTML entities are
        unescaped and HTML tags removed. A repeated ASIN keeps, field by field, the first
        non-empty value (a first record with an empty title does not hide a later title).

    Raises:
        ValueError: ``file:line`` of a line that is not a literal dict, unless ``skip_bad_lines``;
            empty or truncated gzip.
    """
    return _read_meta(
        path, ast.literal_eval, "Python-literal", ("asin",), lambda r: r.get("brand"),
        lambda r: r.get("categories"), asins, skip_bad_lines,
    )


def read_meta_2018(
    path: str | os.PathLike, asins: Iterable[str] | None = None, skip_bad_lines: bool = False
) -> pd.DataFrame:
    """Read 2018 Amazon metadata (``meta_<Cat>.json.gz``, JSON lines; Ni et al. EMNLP'19).

    Uses the fields ``asin``, ``title``, ``brand`` and ``category`` (one path, root first).
    Returns and raises as :func:`read_meta_2014`.
    """
    return _read_meta(
        path, json.loads, "JSON", ("asin",), lambda r: r.get("brand"),
        lambda r: r.get("category"), asins, skip_bad_lines,
    )


def read_meta_2023(
    path: str | os.PathLike, asins: Iterable[str] | None = None, skip_bad_lines: bool = False
) -> pd.DataFrame:
    """Read 2023 Amazon metadata (``meta_<Cat>.jsonl.gz``; Hou et al. 2024).

    Keyed by ``parent_asin``; brand is ``details["Brand"]`` when present, else ``store``;
    categories is the ``categories`` path. Returns and raises as :func:`read_meta_2014`.
    """

    def brand_of(rec):
        details = rec.get("details")
        if isinstance(details, dict) and isinstance(details.get("Brand"), str) and details["Brand"].strip():
            return details["Brand"]
        return rec.get("store")

    return _read_meta(
        path, json.loads, "JSON", ("parent_asin", "asin"), brand_of,
        lambda r: r.get("categories"), asins, skip_bad_lines,
    )
