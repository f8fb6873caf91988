"""Shared low-level reading: text lines of plain or gzip files, bad-line accounting, field cleaning.

Every reader of :mod:`rarec_lite.data` reads through :func:`_iter_lines` (so an empty, truncated or
non-UTF-8 file is a ``ValueError`` naming the file and line) and reports malformed records with
:class:`_BadLines` (``ValueError("<file>:<line>: ...")``, or counted when ``skip_bad_lines``).
"""

from __future__ import annotations

import gzip
import html
import os
import re
import zlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

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


def _clean(value) -> str:
    """A display string: HTML entities unescaped (twice, for double-escaped data), HTML tags removed
    (``<span id="x">NEW</span>`` gives ``NEW``; a ``<br>`` becomes a space), whitespace collapsed.

    Only tag-shaped text is removed (``<`` then a letter or ``/``, up to ``>``): ``"Size <5 mm"`` stays.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    text = str(value)
    for _ in range(2):
        if "&" not in text:
            break
        text = html.unescape(text)
    if "<" in text:
        text = _HTML_TAG.sub(" ", text)
    return " ".join(text.split())


_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")


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


