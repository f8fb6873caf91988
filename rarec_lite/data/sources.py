"""Finding a dataset's raw files: which layout, in which directory.

Layouts recognised in a directory (:func:`detect_raw_source`), in this order of preference:

================  ==========================================================================
format            files
================  ==========================================================================
``amazon2014``    ``reviews_<Cat>_5.json.gz`` (+ ``meta_<Cat>.json.gz``)
``amazon2018``    ``<Cat>_5.json.gz`` (+ ``meta_<Cat>.json.gz``)
``amazon2023``    ``<Cat>.jsonl.gz`` (+ ``meta_<Cat>.jsonl.gz``)
``lcrec``         ``<Name>.inter.json`` + ``<Name>.item.json`` (:mod:`rarec_lite.data.lcrec`)
``openp5``        ``user_sequence.txt`` (+ an item ``*.tsv``) (:mod:`rarec_lite.data.openp5`)
================  ==========================================================================

``<Cat>`` is the release's category name (:mod:`rarec_lite.data.catalog`); plain ``.json`` files are
accepted too. Raw files carry timestamps and titles, hence their preference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .. import paths
from .catalog import CATEGORIES, TOY, dataset_key, resolve
from .lcrec import INTER_SUFFIX, ITEM_SUFFIX
from .openp5 import ITEM_TABLE_NAME


@dataclass(frozen=True)
class RawSource:
    """Raw files found for a dataset: ``format`` in {"amazon2014", "amazon2018", "amazon2023",
    "lcrec", "openp5"}, the ``directory`` they are in, and ``files`` by role (``reviews``/``meta``,
    ``interactions``/``items`` or ``sequences``/``items``; ``meta`` and the OpenP5 ``items`` may be absent)."""

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


def _names_of(dataset: str) -> set[str]:
    """Lower-case names a file of ``dataset`` may carry: its key, aliases and release names."""
    key = dataset_key(dataset)
    names = {key}
    for c in CATEGORIES:
        if c.key == key:
            names.update(a.lower() for a in c.aliases)
            names.add(c.name.lower())
    return names


def _lcrec_in(directory: Path, dataset: str, any_name: bool) -> dict | None:
    """``<Name>.inter.json`` + ``<Name>.item.json`` of ``dataset`` in ``directory``. ``<Name>`` must be
    one of the dataset's names unless ``any_name`` (a folder of that dataset) and there is only one."""
    found = sorted(directory.glob("*" + INTER_SUFFIX))
    if not found:
        return None
    names = _names_of(dataset)
    named = [p for p in found if p.name[: -len(INTER_SUFFIX)].lower() in names]
    pick = named[0] if named else (found[0] if any_name and len(found) == 1 else None)
    if pick is None:
        return None
    items = pick.with_name(pick.name[: -len(INTER_SUFFIX)] + ITEM_SUFFIX)
    return {"interactions": pick, "items": items}  # items is checked when read (a clear error if absent)


def detect_raw_source(directory: str | os.PathLike, dataset: str = "cloth", any_name: bool = False) -> RawSource | None:
    """The raw files of ``dataset`` directly inside ``directory``, or ``None``.

    Preference when several layouts are present: 2014, 2018, 2023 (raw files carry timestamps and
    titles), then LC-Rec, then OpenP5. LC-Rec files must be named after the dataset
    (``Scientific.inter.json`` for ``scientific``) unless ``any_name`` (the directory is the
    dataset's own, e.g. ``amazon_scientific/``) and they are the only ones there.

    Raises:
        ValueError: ``dataset`` is not a known name (:func:`rarec_lite.data.catalog.resolve`).
    """
    d = Path(directory)
    if not d.is_dir():
        return None
    key = dataset_key(dataset)
    if key == TOY:
        return None
    cats = [c.name for c in CATEGORIES if c.key == key] or [resolve(dataset).name]
    for fmt, review_names, meta_names in [
        (fmt, [n.format(cat=cat) for cat in cats for n in reviews], [n.format(cat=cat) for cat in cats for n in metas])
        for fmt, reviews, metas in [
            ("amazon2014", ["reviews_{cat}_5.json.gz", "reviews_{cat}_5.json"], ["meta_{cat}.json.gz", "meta_{cat}.json"]),
            ("amazon2018", ["{cat}_5.json.gz", "{cat}_5.json"], ["meta_{cat}.json.gz", "meta_{cat}.json"]),
            ("amazon2023", ["{cat}.jsonl.gz", "{cat}.jsonl"], ["meta_{cat}.jsonl.gz", "meta_{cat}.jsonl"]),
        ]
    ]:
        reviews = _first_existing(d, review_names)
        if reviews is not None:
            files = {"reviews": reviews}
            meta = _first_existing(d, meta_names)
            if meta is not None:
                files["meta"] = meta
            return RawSource(fmt, d, files)
    lcrec = _lcrec_in(d, key, any_name)
    if lcrec is not None:
        return RawSource("lcrec", d, lcrec)
    if (d / "user_sequence.txt").is_file():
        files = {"sequences": d / "user_sequence.txt"}
        table = _item_table_in(d)
        if table is not None:
            files["items"] = table
        return RawSource("openp5", d, files)
    return None


def _candidates(root: Path, key: str) -> list[tuple[Path, bool]]:
    """Where under ``root`` a dataset's files may be, and whether the folder is the dataset's own
    (``amazon_<key>`` or ``<key>``; ``root`` itself when it is named so)."""
    own = (f"amazon_{key}", key)
    return [(root, root.name in own), (root / own[0], True), (root / own[1], True)]


def find_raw_source(dataset: str = "cloth", raw_dir: str | os.PathLike | None = None) -> RawSource:
    """Where the raw files of ``dataset`` are, in this order of precedence:

    1. ``raw_dir`` (and ``raw_dir/amazon_<key>``, ``raw_dir/<key>``) when given;
    2. ``$RAREC_MIRROR`` (same three places);
    3. :func:`rarec_lite.paths.raw_dir` (where ``data_download.sh`` puts them).

    The OpenP5 ``user_sequence.txt`` and any single LC-Rec file pair count only in the dataset's own
    folder (``amazon_<key>``/``<key>``, ``raw_dir`` itself when given, or a mirror that is itself named
    ``amazon_<key>``): a mirror's top level never lends one dataset's files to another.

    Raises:
        ValueError: unknown dataset (with the closest names).
        FileNotFoundError: nothing usable found; the message lists where it looked and how
            to get the data (``bash data_download.sh`` or ``RAREC_MIRROR``).
    """
    key = dataset_key(dataset)
    if key == TOY:
        raise ValueError("the toy dataset has no raw files (rarec_lite.data.synthetic_dataset makes it)")
    if raw_dir is not None:
        root = Path(raw_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"raw_dir {str(raw_dir)!r} is not a directory")
        places = [(root, True), *_candidates(root, key)[1:]]
    else:
        mirror = paths.mirror()
        places = (_candidates(mirror, key) if mirror is not None else []) + [(paths.raw_dir(key), True)]
    looked = []
    for cand, own in places:
        looked.append(str(cand))
        found = detect_raw_source(cand, key, any_name=own)
        if found is not None and (own or found.format != "openp5"):
            return found
    cat = resolve(key)
    raise FileNotFoundError(
        f"no raw data for {key!r} ({cat.name}) found (looked in: {', '.join(looked)}). Expected the "
        f"2014/2018/2023 release files (e.g. reviews_{cat.name}_5.json.gz + meta_{cat.name}.json.gz), the LC-Rec "
        f"layout <Name>.inter.json + <Name>.item.json, or the OpenP5 layout user_sequence.txt (+ {ITEM_TABLE_NAME}). "
        f"Get it with `bash data_download.sh --dataset {key}` (or `--from DIR` offline), or point RAREC_MIRROR / "
        "--raw-dir at a directory that holds it."
    )
