"""Amazon review data: readers, k-core filter, leave-one-out split and item text.

This module turns the public Amazon review files into what every later chapter uses: one
chronological sequence of item ids per user, split leave-one-out, and one short text per
item. The paper (RA-Rec, Yu et al. 2024, arXiv 2402.04527, Sec. 5.1) uses the 2014
Amazon "Clothing, Shoes & Jewelry" 5-core (McAuley et al. SIGIR'15, He & McAuley WWW'16):
39,387 users, 23,033 items, 278,677 interactions.

Raw formats read here (each reader returns a :class:`pandas.DataFrame`):

================  ======================================================  ===========================
format            files                                                   reader
================  ======================================================  ===========================
``amazon2014``    ``reviews_<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz``     :func:`read_reviews_2014`,
                  (metadata lines are Python literals, not JSON)          :func:`read_meta_2014`
``amazon2018``    ``<Cat>_5.json.gz`` + ``meta_<Cat>.json.gz``             :func:`read_reviews_2018`,
                                                                          :func:`read_meta_2018`
``amazon2023``    ``<Cat>.jsonl.gz`` + ``meta_<Cat>.jsonl.gz``             :func:`read_reviews_2023`,
                                                                          :func:`read_meta_2023`
``openp5``        ``user_sequence.txt`` + an item table (``*.tsv`` with   :func:`read_user_sequences`,
                  ``asin`` and optional ``brand``/``categories``/``title``) :func:`read_item_table`
================  ======================================================  ===========================

Every reader fails on a malformed line with ``ValueError("<file>:<line>: ...")``, or counts
and skips such lines when called with ``skip_bad_lines=True`` (the count is in
``df.attrs["bad_lines"]``). Gzip files are recognised by their magic bytes; an empty or
truncated gzip is a ``ValueError`` naming the file.

Pipeline (:func:`prepare`): read -> chronological order (timestamp, then original file order)
-> drop repeated (user, item) pairs (keep the first) -> iterative k-core (:func:`k_core`)
-> contiguous integer ids from 0 (raw ids sorted, kept in ``Dataset.user_ids`` /
``Dataset.item_ids``) -> item text (:func:`build_item_text`) -> parquet files + ``stats.json``.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import os
import re
import shutil
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from . import paths
from .files import atomic_write_json, read_json, sha256_file

#: Version of the processed layout; a cache written with another version is rebuilt.
FORMAT_VERSION = 1

#: Amazon's file-name spelling of each course dataset's category.
CATEGORY_FILE_NAMES = {"cloth": "Clothing_Shoes_and_Jewelry", "book": "Books"}

#: Top-level Amazon categories dropped from item text (every item of the file has them).
ROOT_CATEGORIES = frozenset({"Clothing, Shoes & Jewelry", "Clothing, Shoes and Jewelry", "Books"})

#: Preferred name of the OpenP5-style item table.
ITEM_TABLE_NAME = "item_brand_categories.tsv"

_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------------------
# Reading lines safely
# --------------------------------------------------------------------------------------


def _iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` (1-based) from a plain or gzip text file.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is empty, is named ``.gz`` but is not gzip, is a truncated or
            corrupt gzip, or is not UTF-8 (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (an interrupted download? delete it and fetch it again)")
    with open(path, "rb") as fh:
        is_gzip = fh.read(2) == _GZIP_MAGIC
    if path.suffix == ".gz" and not is_gzip:
        raise ValueError(f"{path}: named .gz but is not a gzip file (delete it and fetch it again)")
    lineno = 0
    try:
        if is_gzip:
            fh = gzip.open(path, "rt", encoding="utf-8")
        else:
            fh = open(path, "rt", encoding="utf-8")
        with fh:
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ValueError(
            f"{path}: truncated or corrupt gzip (stopped after line {lineno}: {exc}); "
            "delete it and download it again"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}:{lineno + 1}: not UTF-8 text ({exc.reason})") from exc


class _BadLines:
    """Raise on a malformed line, or count it when ``skip`` is true."""

    def __init__(self, path: Path, skip: bool):
        self.path, self.skip, self.count, self.first = Path(path), bool(skip), 0, None

    def __call__(self, lineno: int, reason: str) -> None:
        message = f"{self.path}:{lineno}: {reason}"
        if not self.skip:
            raise ValueError(message + " (use skip_bad_lines=True / --skip-bad-lines to count and skip such lines)")
        self.count += 1
        if self.first is None:
            self.first = message


def _require_str(rec: dict, keys: Sequence[str]) -> str:
    """First non-empty string among ``rec[k]`` for ``k`` in ``keys``; KeyError naming them."""
    for key in keys:
        value = rec.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise KeyError(" or ".join(repr(k) for k in keys))


def _interactions_frame(path: Path, users: list, items: list, times: list, bad: _BadLines) -> pd.DataFrame:
    if not users:
        raise ValueError(f"{path}: no interactions read (is this the right file?)")
    df = pd.DataFrame(
        {
            "user": pd.array(users, dtype=object),
            "item": pd.array(items, dtype=object),
            "timestamp": np.asarray(times, dtype=np.int64),
            "order": np.arange(len(users), dtype=np.int64),
        }
    )
    df.attrs["bad_lines"] = bad.count
    df.attrs["source"] = str(path)
    return df


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


# --------------------------------------------------------------------------------------
# Metadata readers: asin, title, brand, categories (a list of category paths)
# --------------------------------------------------------------------------------------


def _clean(value) -> str:
    """A display string: HTML entities unescaped (twice, for double-escaped data), whitespace collapsed."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value)
    for _ in range(2):
        if "&" not in text:
            break
        text = html.unescape(text)
    return " ".join(text.split())


def _paths_from(value) -> list[list[str]]:
    """Normalise a categories field to a list of paths (each a list of node names)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [[n for n in value.split(" | ") if n.strip()]] if value.strip() else []
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, str) for v in value):
            return [list(value)] if value else []
        return [list(v) for v in value if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)]
    raise TypeError(f"categories must be a string or a list, got {type(value).__name__}")


def _meta_frame(path: Path, rows: dict, bad: _BadLines) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "asin": list(rows),
            "title": [r[0] for r in rows.values()],
            "brand": [r[1] for r in rows.values()],
            "categories": [r[2] for r in rows.values()],
        }
    )
    df.attrs["bad_lines"] = bad.count
    df.attrs["source"] = str(path)
    return df


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
        if asin not in rows:  # keep the first record of a repeated ASIN
            rows[asin] = (_clean(rec.get("title")), _clean(brand_of(rec)), cats)
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
        unescaped. A repeated ASIN keeps its first record.

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
        DataFrame as :func:`read_meta_2014` (``categories`` holds a one-path list).

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
        if asin in rows:
            continue
        get = lambda name: fields[col[name]] if name in col else ""  # noqa: E731
        rows[asin] = (_clean(get("title")), _clean(get("brand")), _paths_from(get("categories")))
    if header is None:
        raise ValueError(f"{path}: no header line")
    return _meta_frame(path, rows, bad)


# --------------------------------------------------------------------------------------
# Filtering, ordering, splitting
# --------------------------------------------------------------------------------------


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
    """Sort rows by (user, timestamp, order): chronological per user, ties broken by file order.

    Amazon 2014 timestamps have day granularity, so same-day items are common; the original
    file position (``order``) makes the result the same on every run and every machine.
    """
    return interactions.sort_values(["user", "timestamp", "order"], kind="stable").reset_index(drop=True)


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


# --------------------------------------------------------------------------------------
# Item text
# --------------------------------------------------------------------------------------


_SHIPPING_SUFFIX = re.compile(r":\s*International Shipping Available$")


def category_path_text(categories, brand: str = "", max_nodes: int = 4) -> str:
    """The most specific category path as ``"A > B > C"`` (at most ``max_nodes`` nodes).

    ``categories`` is a ``" | "``-joined string (root first), one path (list of names) or
    several paths (list of lists; the longest is taken). The root category (e.g.
    "Clothing, Shoes & Jewelry"), one-letter alphabet-index nodes ("S"), Amazon's
    nodes equal to the brand, and repeated nodes are dropped, Amazon's ": International
    Shipping Available" suffix is cut, and the last ``max_nodes`` nodes are kept. When only
    the root is left (and no brand is given) the root is returned.
    """
    paths_ = _paths_from(categories)
    if not paths_:
        return ""
    nodes = max(paths_, key=len)  # max keeps the first of equal-length paths
    brand_key = _clean(brand).casefold()
    kept: list[str] = []
    roots: list[str] = []
    for raw in nodes:
        node = _clean(raw)
        if node.endswith("International Shipping Available"):
            node = _SHIPPING_SUFFIX.sub("", node).strip()
        if node in ROOT_CATEGORIES:
            roots.append(node)
            continue
        if len(node) <= 1 or (brand_key and node.casefold() == brand_key) or node in kept:
            continue
        kept.append(node)
    if not kept and not brand_key:
        kept = roots[:1]  # only the root is known: better than nothing
    return " > ".join(kept[-max_nodes:]) if max_nodes > 0 else ""


def build_item_text(title, brand, categories, asin: str | None = None, max_nodes: int = 4) -> str:
    """The text that stands for an item in prompts (RA-Rec Sec. 4.1 uses the item title).

    Rules: the title if there is one; otherwise ``"<brand> — <category path>"`` (either part
    alone when the other is missing; see :func:`category_path_text`); otherwise
    ``"item <asin>"``. HTML entities are unescaped and whitespace collapsed. Never empty.

    Example: ``build_item_text("", "Boutique Cutie", "Clothing, Shoes & Jewelry | Girls |
    Clothing | Active | Active Skirts")`` gives
    ``"Boutique Cutie — Girls > Clothing > Active > Active Skirts"``.
    """
    return _item_text_and_source(title, brand, categories, asin, max_nodes)[0]


def _item_text_and_source(title, brand, categories, asin, max_nodes=4) -> tuple[str, str]:
    title, brand = _clean(title), _clean(brand)
    if title:
        return title, "title"
    path = category_path_text(categories, brand, max_nodes)
    if brand and path:
        return f"{brand} — {path}", "brand+categories"
    if path:
        return path, "categories"
    if brand:
        return brand, "brand"
    return f"item {asin}" if asin else "item (no text)", "fallback"


def build_item_texts(titles, brands, categories, asins, max_nodes: int = 4) -> tuple[list[str], dict]:
    """:func:`build_item_text` over a catalogue, plus its coverage report.

    Returns:
        ``(texts, coverage)``: ``coverage`` has ``items``, how many items have a ``title``,
        a ``brand`` and ``categories``, and ``text_from``: how many texts came from the
        title, brand+categories, categories only, brand only, or the ``"item <asin>"``
        fallback.
    """
    texts, sources = [], []
    n_title = n_brand = n_cat = 0
    for t, b, c, a in zip(titles, brands, categories, asins):
        text, source = _item_text_and_source(t, b, c, a, max_nodes)
        texts.append(text)
        sources.append(source)
        n_title += bool(_clean(t))
        n_brand += bool(_clean(b))
        n_cat += any(n.strip() and n.strip() not in ROOT_CATEGORIES for path in _paths_from(c) for n in path)
    keys = ("title", "brand+categories", "categories", "brand", "fallback")
    coverage = {
        "items": len(texts),
        "title": n_title,
        "brand": n_brand,
        "categories": n_cat,
        "text_from": {k: sources.count(k) for k in keys},
    }
    return texts, coverage


def _categories_string(categories) -> str:
    """Stored form of categories: nodes of all paths, root first, de-duplicated, joined by " | "."""
    nodes: list[str] = []
    for path in _paths_from(categories):
        for node in path:
            node = node.strip() if "&" not in node else _clean(node)
            if node and node not in nodes:
                nodes.append(node)
    return " | ".join(nodes)


# --------------------------------------------------------------------------------------
# The Dataset
# --------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A processed dataset: chronological sequences of contiguous item ids, plus item text.

    Fields:
        name: dataset name (``"cloth"``, ``"book"``, ``"toy"``).
        user_ids: raw reviewerIDs; ``user_ids[u]`` for user index ``u`` in ``0..U-1``.
        item_ids: raw ASINs; ``item_ids[i]`` for item index ``i`` in ``0..I-1``.
        sequences: ``U`` arrays of int64 item indices, oldest first.
        item_text: ``I`` non-empty strings (:func:`build_item_text`).
        item_title, item_brand, item_categories: ``I`` strings each ("" when unknown;
            categories joined with ``" | "``).
        stats: the ``stats.json`` of :func:`prepare` (for a ``max_users`` slice the counts are
            the slice's; the full counts are under ``stats["full"]``).
    """

    name: str
    user_ids: list[str]
    item_ids: list[str]
    sequences: list[np.ndarray]
    item_text: list[str]
    item_title: list[str]
    item_brand: list[str]
    item_categories: list[str]
    stats: dict = field(default_factory=dict)

    def __post_init__(self):
        n_items = len(self.item_ids)
        if len(self.sequences) != len(self.user_ids):
            raise ValueError(f"{self.name}: {len(self.sequences)} sequences for {len(self.user_ids)} users")
        for fname in ("item_text", "item_title", "item_brand", "item_categories"):
            if len(getattr(self, fname)) != n_items:
                raise ValueError(f"{self.name}: {fname} has {len(getattr(self, fname))} entries for {n_items} items")
        if self.sequences:
            flat = np.concatenate(self.sequences) if len(self.sequences) else np.zeros(0, np.int64)
            if flat.size and (flat.min() < 0 or flat.max() >= n_items):
                raise ValueError(f"{self.name}: item index out of range 0..{n_items - 1}")

    @property
    def num_users(self) -> int:
        """Number of users ``U``."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items ``I``."""
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        """Total sequence length over all users."""
        return int(sum(len(s) for s in self.sequences))

    def split(self) -> LeaveOneOut:
        """Leave-one-out split of :attr:`sequences` (see :class:`LeaveOneOut`)."""
        return leave_one_out(self.sequences)

    def item_popularity(self, part: str = "train") -> np.ndarray:
        """Interaction count per item, shape (I,), int64.

        ``part="train"`` counts only the training part ``s[:-2]`` of each sequence (what a
        model may see; MostPop and the diversity sampler use it); ``"all"`` counts everything.
        """
        if part not in ("train", "all"):
            raise ValueError(f"part must be 'train' or 'all', got {part!r}")
        seqs = [s[:-2] for s in self.sequences] if part == "train" else self.sequences
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
        return np.bincount(flat.astype(np.int64), minlength=self.num_items).astype(np.int64)

    def subset(self, max_users: int, seed: int = 0) -> "Dataset":
        """A fixed random subset of ``max_users`` users (seeded), for quick runs.

        Only items that occur in the kept users' sequences are kept, renumbered
        contiguously in their original order; full ranking on the slice is therefore over
        the slice's catalogue, not the whole one. ``stats`` gets the slice's counts and keeps
        the full ones under ``stats["full"]``.
        """
        if max_users is None or max_users >= self.num_users:
            return self
        if max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {max_users}")
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(self.num_users, size=max_users, replace=False))
        seqs = [self.sequences[u] for u in users]
        kept_items = np.unique(np.concatenate(seqs))
        remap = np.full(self.num_items, -1, dtype=np.int64)
        remap[kept_items] = np.arange(len(kept_items))
        pick = lambda xs: [xs[i] for i in kept_items]  # noqa: E731
        new_seqs = [remap[s] for s in seqs]
        stats = {k: v for k, v in self.stats.items() if k != "full"}
        stats["full"] = {k: self.stats.get(k) for k in ("users", "items", "interactions")}
        stats.update(
            users=int(max_users), items=int(len(kept_items)), interactions=int(sum(len(s) for s in new_seqs)),
            subset={"max_users": int(max_users), "seed": int(seed)},
        )
        return Dataset(
            name=self.name, user_ids=[self.user_ids[u] for u in users], item_ids=pick(self.item_ids),
            sequences=new_seqs, item_text=pick(self.item_text), item_title=pick(self.item_title),
            item_brand=pick(self.item_brand), item_categories=pick(self.item_categories), stats=stats,
        )


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Finding the raw files
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawSource:
    """Raw files found for a dataset: ``format`` in {"amazon2014", "amazon2018", "amazon2023",
    "openp5"}, the ``directory`` they are in, and ``files`` by role (``reviews``/``meta`` or
    ``sequences``/``items``; ``meta``/``items`` may be absent)."""

    format: str
    directory: Path
    files: dict


def _first_existing(directory: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def _item_table_in(directory: Path) -> Path | None:
    if (directory / ITEM_TABLE_NAME).is_file():
        return directory / ITEM_TABLE_NAME
    for candidate in sorted(directory.glob("*.tsv")):
        try:
            with open(candidate, encoding="utf-8") as fh:
                if "asin" in fh.readline().rstrip("\r\n").split("\t"):
                    return candidate
        except (OSError, UnicodeDecodeError):
            continue
    return None


def detect_raw_source(directory: str | os.PathLike, dataset: str = "cloth") -> RawSource | None:
    """The raw files of ``dataset`` directly inside ``directory``, or ``None``.

    Preference when several layouts are present: 2014, 2018, 2023 (raw files carry
    timestamps and titles), then OpenP5.
    """
    d = Path(directory)
    if not d.is_dir():
        return None
    cat = CATEGORY_FILE_NAMES[dataset]
    meta_json = [f"meta_{cat}.json.gz", f"meta_{cat}.json"]
    layouts = [
        ("amazon2014", [f"reviews_{cat}_5.json.gz", f"reviews_{cat}_5.json"], meta_json),
        ("amazon2018", [f"{cat}_5.json.gz", f"{cat}_5.json"], meta_json),
        ("amazon2023", [f"{cat}.jsonl.gz", f"{cat}.jsonl"], [f"meta_{cat}.jsonl.gz", f"meta_{cat}.jsonl"]),
    ]
    for fmt, review_names, meta_names in layouts:
        reviews = _first_existing(d, review_names)
        if reviews is not None:
            files = {"reviews": reviews}
            meta = _first_existing(d, meta_names)
            if meta is not None:
                files["meta"] = meta
            return RawSource(fmt, d, files)
    if (d / "user_sequence.txt").is_file():
        files = {"sequences": d / "user_sequence.txt"}
        table = _item_table_in(d)
        if table is not None:
            files["items"] = table
        return RawSource("openp5", d, files)
    return None


def _candidates(root: Path, dataset: str) -> list[Path]:
    return [root, root / f"amazon_{dataset}", root / dataset]


def find_raw_source(dataset: str = "cloth", raw_dir: str | os.PathLike | None = None) -> RawSource:
    """Where the raw files of ``dataset`` are, in this order of precedence:

    1. ``raw_dir`` (and ``raw_dir/amazon_<dataset>``, ``raw_dir/<dataset>``) when given;
    2. ``$RAREC_MIRROR`` (same three places);
    3. :func:`rarec_lite.paths.raw_dir` (where ``data_download.sh`` puts them).

    Raises:
        ValueError: unknown dataset.
        FileNotFoundError: nothing usable found; the message lists where it looked and how
            to get the data (``bash data_download.sh`` or ``RAREC_MIRROR``).
    """
    if dataset not in CATEGORY_FILE_NAMES:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(CATEGORY_FILE_NAMES)}")
    if raw_dir is not None:
        roots = [Path(raw_dir).expanduser()]
        if not roots[0].is_dir():
            raise FileNotFoundError(f"raw_dir {str(raw_dir)!r} is not a directory")
    else:
        mirror = paths.mirror()
        roots = ([mirror] if mirror is not None else []) + [paths.raw_dir(dataset)]
    looked = []
    for root in roots:
        for cand in _candidates(root, dataset) if root != paths.raw_dir(dataset) else [root]:
            looked.append(str(cand))
            found = detect_raw_source(cand, dataset)
            if found is not None:
                return found
    cat = CATEGORY_FILE_NAMES[dataset]
    raise FileNotFoundError(
        f"no raw data for {dataset!r} found (looked in: {', '.join(looked)}). Expected "
        f"reviews_{cat}_5.json.gz (+ meta_{cat}.json.gz), or the OpenP5 layout user_sequence.txt "
        f"(+ {ITEM_TABLE_NAME}). Get it with `bash data_download.sh --dataset {dataset}` "
        "(or `--from DIR` offline), or point RAREC_MIRROR / --raw-dir at a directory that holds it."
    )


# --------------------------------------------------------------------------------------
# prepare / load
# --------------------------------------------------------------------------------------

_INTERACTIONS, _ITEMS, _USERS, _STATS = "interactions.parquet", "items.parquet", "users.parquet", "stats.json"


def _read_source(source: RawSource, skip_bad_lines: bool) -> tuple[pd.DataFrame, pd.DataFrame | None, dict]:
    bad = {}
    if source.format == "openp5":
        inter = read_user_sequences(source.files["sequences"], skip_bad_lines)
        bad["sequences"] = inter.attrs["bad_lines"]
        meta = None
        if "items" in source.files:
            meta = read_item_table(source.files["items"], skip_bad_lines)
            bad["items"] = meta.attrs["bad_lines"]
        return inter, meta, bad
    readers = {
        "amazon2014": (read_reviews_2014, read_meta_2014),
        "amazon2018": (read_reviews_2018, read_meta_2018),
        "amazon2023": (read_reviews_2023, read_meta_2023),
    }[source.format]
    inter = readers[0](source.files["reviews"], skip_bad_lines)
    bad["reviews"] = inter.attrs["bad_lines"]
    meta = None
    if "meta" in source.files:
        meta = readers[1](source.files["meta"], asins=set(inter["item"].unique()), skip_bad_lines=skip_bad_lines)
        bad["meta"] = meta.attrs["bad_lines"]
    return inter, meta, bad


def _build_tables(inter: pd.DataFrame, meta: pd.DataFrame | None, k: int):
    raw_rows = len(inter)
    inter = sort_chronologically(inter)
    inter = inter.drop_duplicates(["user", "item"], keep="first")
    duplicates = raw_rows - len(inter)
    inter = k_core(inter, k)
    rounds = inter.attrs.get("k_core_rounds", 0)
    if inter.empty:
        raise ValueError(f"no interaction survives the {k}-core filter")
    user_ids = np.sort(inter["user"].unique()).astype(object)
    item_ids = np.sort(inter["item"].unique()).astype(object)
    u = pd.Index(user_ids).get_indexer(inter["user"]).astype(np.int64)
    i = pd.Index(item_ids).get_indexer(inter["item"]).astype(np.int64)
    position = inter.groupby("user", sort=False).cumcount().to_numpy(dtype=np.int64)
    interactions = pd.DataFrame({"user": u, "item": i, "position": position, "timestamp": inter["timestamp"].to_numpy()})
    # rows are already ordered by raw user id then time, i.e. by (user index, position)
    if meta is not None and len(meta):
        meta = meta.set_index("asin")
        found = pd.Index(item_ids).isin(meta.index)
        m = meta.reindex(item_ids)
        titles = [t if isinstance(t, str) else "" for t in m["title"]]
        brands = [b if isinstance(b, str) else "" for b in m["brand"]]
        cats = [c if isinstance(c, list) else [] for c in m["categories"]]
        with_meta = int(found.sum())
    else:
        titles, brands, cats, with_meta = [""] * len(item_ids), [""] * len(item_ids), [[]] * len(item_ids), 0
    texts, coverage = build_item_texts(titles, brands, cats, item_ids)
    coverage["with_metadata"] = with_meta
    items = pd.DataFrame(
        {
            "item": np.arange(len(item_ids), dtype=np.int64),
            "asin": item_ids.astype(str),
            "title": titles,
            "brand": brands,
            "categories": [_categories_string(c) for c in cats],
            "text": texts,
        }
    )
    users = pd.DataFrame({"user": np.arange(len(user_ids), dtype=np.int64), "reviewerID": user_ids.astype(str)})
    counts = np.bincount(u, minlength=len(user_ids))
    sequences = np.split(i, np.cumsum(counts)[:-1])
    stats = compute_stats(sequences, len(item_ids))
    stats["text_coverage"] = coverage
    stats["filtering"] = {"rows_read": int(raw_rows), "duplicates_dropped": int(duplicates), "k": int(k),
                          "k_core_rounds": int(rounds)}
    return interactions, items, users, stats


def _inputs_signature(source: RawSource) -> dict:
    return {
        role: {"file": p.name, "bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for role, p in sorted(source.files.items())
    }


def _cache_matches(stats_path: Path, inputs: dict, config: dict) -> dict | None:
    if not stats_path.is_file():
        return None
    try:
        old = read_json(stats_path)
    except (ValueError, OSError):
        return None
    if old.get("format_version") == FORMAT_VERSION and old.get("inputs") == inputs and old.get("config") == config:
        return old
    return None


def prepare(
    dataset: str = "cloth",
    raw_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    skip_bad_lines: bool = False,
    k: int = 5,
) -> dict:
    """Read the raw files, process them, and write the processed dataset; return its stats.

    Raw files are found by :func:`find_raw_source` (``raw_dir``, then ``$RAREC_MIRROR``, then
    the download dir). The output directory (default
    :func:`rarec_lite.paths.processed_dir`) receives:

    - ``interactions.parquet``: ``user``, ``item`` (contiguous int64 ids), ``position``
      (0-based, chronological), ``timestamp`` (raw units; the position in the line for OpenP5);
    - ``items.parquet``: ``item``, ``asin``, ``title``, ``brand``, ``categories``, ``text``;
    - ``users.parquet``: ``user``, ``reviewerID``;
    - ``stats.json``: counts, sequence-length and popularity summaries (Gini, top-1% share),
      text coverage, bad lines skipped, SHA-256 of each input, ``format_version``.

    Everything is written into a temporary sibling directory that is renamed into place at
    the end, so a crash never leaves a half-written dataset where :func:`load_dataset` looks.
    If ``stats.json`` already records the same input checksums, format version and ``k``,
    nothing is rebuilt (``force=True`` rebuilds).

    Args:
        k: the k-core threshold (5, as in the paper's 5-core data).

    Returns:
        The stats dict, with ``"cache": "reused"`` or ``"built"`` added (not stored).

    Raises:
        FileNotFoundError: no raw data (the message says how to get it).
        ValueError: malformed input (``file:line``), truncated gzip, unknown dataset.
    """
    source = find_raw_source(dataset, raw_dir)
    out = Path(out_dir).expanduser() if out_dir is not None else paths.processed_dir(dataset)
    inputs = _inputs_signature(source)
    config = {"dataset": dataset, "k": int(k)}
    if not force:
        old = _cache_matches(out / _STATS, inputs, config)
        if old is not None:
            return {**old, "cache": "reused"}

    start = time.perf_counter()
    inter, meta, bad = _read_source(source, skip_bad_lines)
    interactions, items, users, stats = _build_tables(inter, meta, k)
    stats = {
        "format_version": FORMAT_VERSION,
        "dataset": dataset,
        "source_format": source.format,
        "source_dir": str(source.directory),
        "config": config,
        "inputs": inputs,
        **stats,
        "bad_lines_skipped": bad,
        "prepare_seconds": round(time.perf_counter() - start, 3),
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        _write_tables(tmp, interactions, items, users)
        atomic_write_json(tmp / _STATS, stats)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**stats, "cache": "built"}


def _write_tables(directory: Path, interactions: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame) -> None:
    interactions.to_parquet(directory / _INTERACTIONS, index=False)
    items.to_parquet(directory / _ITEMS, index=False)
    users.to_parquet(directory / _USERS, index=False)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out``; an older ``out`` is moved aside first and then removed."""
    trash = None
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, trash)
    try:
        os.rename(tmp, out)
    except OSError:
        if (out / _STATS).is_file():  # another process finished first: keep its result
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def read_processed(processed_dir: str | os.PathLike, name: str | None = None) -> Dataset:
    """Read a directory written by :func:`prepare` into a :class:`Dataset`.

    Raises:
        FileNotFoundError: the directory or one of its files is missing (``prepare`` not run).
        ValueError: the files disagree (e.g. an item id outside the item table).
    """
    d = Path(processed_dir)
    for fname in (_STATS, _INTERACTIONS, _ITEMS, _USERS):
        if not (d / fname).is_file():
            raise FileNotFoundError(f"{d / fname}: missing; run `rarec-lite prepare` first")
    stats = read_json(d / _STATS)
    inter = pd.read_parquet(d / _INTERACTIONS)
    items = pd.read_parquet(d / _ITEMS).sort_values("item")
    users = pd.read_parquet(d / _USERS).sort_values("user")
    if not np.array_equal(items["item"].to_numpy(), np.arange(len(items))):
        raise ValueError(f"{d / _ITEMS}: item ids are not 0..{len(items) - 1}")
    if not np.array_equal(users["user"].to_numpy(), np.arange(len(users))):
        raise ValueError(f"{d / _USERS}: user ids are not 0..{len(users) - 1}")
    inter = inter.sort_values(["user", "position"], kind="stable")
    u = inter["user"].to_numpy(dtype=np.int64)
    if len(u) and (u.min() < 0 or u.max() >= len(users)):
        raise ValueError(f"{d / _INTERACTIONS}: user id outside 0..{len(users) - 1}")
    counts = np.bincount(u, minlength=len(users))
    sequences = np.split(inter["item"].to_numpy(dtype=np.int64), np.cumsum(counts)[:-1])
    return Dataset(
        name=name or stats.get("dataset", d.name),
        user_ids=users["reviewerID"].tolist(),
        item_ids=items["asin"].tolist(),
        sequences=sequences,
        item_text=items["text"].tolist(),
        item_title=items["title"].tolist(),
        item_brand=items["brand"].tolist(),
        item_categories=items["categories"].tolist(),
        stats=stats,
    )


def load_dataset(
    name: str = "cloth",
    processed_dir: str | os.PathLike | None = None,
    raw_dir: str | os.PathLike | None = None,
    max_users: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Load a processed dataset, preparing it first if needed (:func:`prepare`).

    ``name="toy"`` returns :func:`synthetic_dataset` (no files needed). For a real dataset,
    when no raw data can be found but a processed directory exists (e.g. handed out by an
    instructor), that directory is used as is.

    Args:
        max_users: keep a fixed random subset of this many users (seeded by ``seed``) for
            quick runs. Only the items that occur in the kept users' sequences are kept,
            renumbered contiguously (see :meth:`Dataset.subset`): full ranking on a slice
            ranks the slice's catalogue, not the whole one.

    Raises:
        FileNotFoundError: neither raw nor processed data (the message says how to get it).
        ValueError: unknown dataset name, malformed input.
    """
    if name == "toy":
        ds = synthetic_dataset(seed=seed)
        return ds.subset(max_users, seed) if max_users else ds
    if name not in CATEGORY_FILE_NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(CATEGORY_FILE_NAMES) + ['toy']}")
    out = Path(processed_dir).expanduser() if processed_dir is not None else paths.processed_dir(name)
    try:
        prepare(name, raw_dir=raw_dir, out_dir=out)
    except FileNotFoundError:
        if raw_dir is not None or not (out / _STATS).is_file():
            raise
    ds = read_processed(out, name)
    return ds.subset(max_users, seed) if max_users else ds


# --------------------------------------------------------------------------------------
# A synthetic dataset for quick mode
# --------------------------------------------------------------------------------------

_TOY_CLUSTERS = [
    ("Women > Shoes > Sandals", ["SunStep", "Marina", "Solea"]),
    ("Men > Clothing > Shirts", ["Oxford & Co", "Harbor", "Tailwise"]),
    ("Girls > Clothing > Active > Active Skirts", ["Boutique Cutie", "Kidsport", "Little Star"]),
    ("Jewelry > Necklaces & Pendants", ["Aurelia", "Silverline", "Gemma"]),
    ("Luggage & Travel Gear > Backpacks", ["Trekker", "Nomad", "CityPack"]),
    ("Men > Shoes > Boots", ["Timberline", "Ridge", "Stoneway"]),
    ("Women > Clothing > Dresses", ["Bella Rosa", "Linen Lane", "Vesta"]),
    ("Watches > Wrist Watches", ["Chronos", "Tempo", "Meridian"]),
]


def synthetic_dataset(
    num_users: int = 200,
    num_items: int = 100,
    seed: int = 0,
    num_clusters: int = 4,
    min_len: int = 5,
    max_len: int = 15,
    p_next: float = 0.6,
    p_cluster: float = 0.3,
) -> Dataset:
    """A small synthetic dataset with learnable structure, for quick mode without real data.

    Items are split into ``num_clusters`` taste clusters (cluster ``c`` = items ``i`` with
    ``i % num_clusters == c``), each with its own category path and brands, so the item
    text (brand + categories, like the real Clothing data) reveals the cluster. Each user
    belongs to one cluster. A sequence starts at a random item of the user's cluster; each
    next item is, with probability ``p_next``, the next unseen item of the cluster in id
    order (a sequential pattern), with probability ``p_cluster`` a popularity-weighted item
    of the cluster, and otherwise a popularity-weighted item of the whole catalogue (noise).
    Items never repeat within a sequence. A sequence model, or even item-to-item
    co-occurrence, beats popularity on it.

    Raises:
        ValueError: ``num_clusters`` outside 1..8, or fewer than ``max_len`` items per cluster.
    """
    if not 1 <= num_clusters <= len(_TOY_CLUSTERS):
        raise ValueError(f"num_clusters must be in 1..{len(_TOY_CLUSTERS)}, got {num_clusters}")
    if num_items // num_clusters < max_len or not 3 <= min_len <= max_len:
        raise ValueError(
            f"need 3 <= min_len <= max_len <= num_items // num_clusters (got min_len={min_len}, "
            f"max_len={max_len}, {num_items // num_clusters} items per cluster)"
        )
    rng = np.random.default_rng(seed)
    cluster = np.arange(num_items) % num_clusters
    members = [np.flatnonzero(cluster == c) for c in range(num_clusters)]
    popularity = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.8  # Zipf-like weights
    sequences = []
    for u in range(num_users):
        c = u % num_clusters
        length = int(rng.integers(min_len, max_len + 1))
        own = members[c]
        seq = [int(rng.choice(own))]
        seen = set(seq)
        while len(seq) < length:
            r = rng.random()
            if r < p_next:
                pos = int(np.searchsorted(own, seq[-1]))
                ring = [int(own[(pos + step) % len(own)]) for step in range(1, len(own))]
                nxt = next((i for i in ring if i not in seen), None)
            else:
                pool = own if r < p_next + p_cluster else np.arange(num_items)
                pool = np.array([i for i in pool if i not in seen])
                nxt = int(rng.choice(pool, p=popularity[pool] / popularity[pool].sum())) if len(pool) else None
            if nxt is None:
                pool = np.array([i for i in range(num_items) if i not in seen])
                nxt = int(rng.choice(pool))
            seq.append(nxt)
            seen.add(nxt)
        sequences.append(np.array(seq, dtype=np.int64))
    titles = [""] * num_items
    brands = [_TOY_CLUSTERS[cluster[i]][1][(i // num_clusters) % 3] for i in range(num_items)]
    categories = ["Clothing, Shoes & Jewelry | " + _TOY_CLUSTERS[cluster[i]][0].replace(" > ", " | ") for i in range(num_items)]
    item_ids = [f"TOY{i:07d}" for i in range(num_items)]
    texts, coverage = build_item_texts(titles, brands, categories, item_ids)
    stats = compute_stats(sequences, num_items)
    stats.update(
        format_version=FORMAT_VERSION, dataset="toy", source_format="synthetic", text_coverage=coverage,
        config={"num_users": num_users, "num_items": num_items, "seed": seed, "num_clusters": num_clusters,
                "min_len": min_len, "max_len": max_len, "p_next": p_next, "p_cluster": p_cluster},
    )
    return Dataset(
        name="toy", user_ids=[f"U{u:05d}" for u in range(num_users)], item_ids=item_ids, sequences=sequences,
        item_text=texts, item_title=titles, item_brand=brands, item_categories=categories, stats=stats,
    )
