"""The prepared dataset: :func:`prepare` writes it, :func:`load_dataset` reads it as a :class:`Dataset`.

Pipeline (:func:`prepare`): find the raw files (:func:`rarec_lite.data.sources.find_raw_source`) ->
read them (the reader of their layout) -> chronological order (:func:`rarec_lite.data.split.
sort_chronologically`: timestamp, then raw item id) -> drop repeated (user, item) pairs (keep the
first) -> iterative k-core -> contiguous integer ids from 0 (raw ids sorted; numerically when every
id is a number, as in the LC-Rec layout, so item ``"17"`` stays item 17) -> item text
(:func:`rarec_lite.data.text.build_item_texts`) -> parquet files + ``stats.json`` in
``$RAREC_HOME/processed/<key>`` (one directory per dataset key, so datasets live side by side).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import paths
from ..files import atomic_write_json, read_json, sha256_file
from .amazon import read_meta_2014, read_meta_2018, read_meta_2023, read_reviews_2014, read_reviews_2018, read_reviews_2023
from .catalog import TOY, dataset_key
from .lcrec import check_items_known, read_lcrec_interactions, read_lcrec_items
from .openp5 import read_item_table, read_user_sequences
from .sources import RawSource, detect_raw_source, find_raw_source
from .split import LeaveOneOut, k_core, leave_one_out, sort_chronologically
from .stats import compute_stats
from .text import _categories_string, build_item_texts

#: Version of the processed layout; a cache written with another version is rebuilt.
#: 2: same-day order by item id, text-sharing counts, LC-Rec layout, numeric id order.
FORMAT_VERSION = 2


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
    if source.format == "lcrec":
        inter = read_lcrec_interactions(source.files["interactions"], skip_bad_lines)
        meta = read_lcrec_items(source.files["items"], skip_bad_lines)
        bad.update(interactions=inter.attrs["bad_lines"], items=meta.attrs["bad_lines"])
        check_items_known(inter, meta, source.files["interactions"], source.files["items"])
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


def _sorted_ids(ids) -> np.ndarray:
    """Raw ids in order: numerically when every id is a number (LC-Rec's "0", "1", ... "10"), else as strings."""
    ids = np.asarray(ids, dtype=object)
    if len(ids) and all(isinstance(x, str) and x.isdigit() for x in ids):
        return ids[np.argsort([int(x) for x in ids], kind="stable")]
    return np.sort(ids).astype(object)


def _build_tables(inter: pd.DataFrame, meta: pd.DataFrame | None, k: int):
    raw_rows = len(inter)
    inter = sort_chronologically(inter)
    inter = inter.drop_duplicates(["user", "item"], keep="first")
    duplicates = raw_rows - len(inter)
    inter = k_core(inter, k)
    rounds = inter.attrs.get("k_core_rounds", 0)
    if inter.empty:
        raise ValueError(f"no interaction survives the {k}-core filter")
    user_ids = _sorted_ids(inter["user"].unique())
    item_ids = _sorted_ids(inter["item"].unique())
    u = pd.Index(user_ids).get_indexer(inter["user"]).astype(np.int64)
    i = pd.Index(item_ids).get_indexer(inter["item"]).astype(np.int64)
    position = inter.groupby("user", sort=False).cumcount().to_numpy(dtype=np.int64)
    # rows are ordered by raw user id (as a string) then time; order them by (user index, position)
    # (the same order unless the ids were sorted numerically)
    by_user = np.argsort(u, kind="stable")
    u, i, position = u[by_user], i[by_user], position[by_user]
    interactions = pd.DataFrame({"user": u, "item": i, "position": position,
                                 "timestamp": inter["timestamp"].to_numpy()[by_user]})
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

    A directory that holds another dataset (its ``stats.json`` names another key) is never
    replaced, whatever the raw files found: that is how a mirror of several datasets cannot
    overwrite one dataset's processed files with another's.

    Args:
        dataset: a dataset name (:func:`rarec_lite.data.catalog.resolve`: ``scientific``,
            ``Industrial_and_Scientific``, ...); the processed data is keyed by its key.
        k: the k-core threshold (5, as in the paper's 5-core data).

    Returns:
        The stats dict, with ``"cache": "reused"`` or ``"built"`` added (not stored).

    Raises:
        FileNotFoundError: no raw data (the message says how to get it).
        ValueError: malformed input (``file:line``), truncated gzip, unknown dataset, an output
            directory that holds another dataset, an LC-Rec item missing from its item file.
    """
    key = dataset_key(dataset)
    if key == TOY:
        raise ValueError("the toy dataset is made in memory (load_dataset('toy')); there is nothing to prepare")
    source = find_raw_source(key, raw_dir)
    out = Path(out_dir).expanduser() if out_dir is not None else paths.processed_dir(key)
    _refuse_other_dataset(out, key)
    inputs = _inputs_signature(source)
    config = {"dataset": key, "k": int(k)}
    if not force:
        old = _cache_matches(out / _STATS, inputs, config)
        if old is not None:
            return {**old, "cache": "reused"}

    start = time.perf_counter()
    inter, meta, bad = _read_source(source, skip_bad_lines)
    interactions, items, users, stats = _build_tables(inter, meta, k)
    stats = {
        "format_version": FORMAT_VERSION,
        "dataset": key,
        "source_format": source.format,
        "source_dir": str(source.directory.resolve()),
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


def _refuse_other_dataset(out: Path, key: str) -> None:
    """Raise when ``out`` already holds the processed files of a dataset other than ``key``."""
    if not (out / _STATS).is_file():
        return
    try:
        other = read_json(out / _STATS).get("dataset")
    except (ValueError, OSError):
        return
    if other and other != key:
        raise ValueError(f"{out} holds the processed {other!r} dataset, not {key!r}; it is not replaced. "
                         f"Use another output directory (default $RAREC_HOME/processed/{key}) or delete it")


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

    ``name="toy"`` returns :func:`rarec_lite.data.toy.synthetic_dataset` (no files needed). For a
    real dataset, when no raw data can be found but a processed directory exists (e.g. handed out
    by an instructor), that directory is used as is. Without ``raw_dir``, a processed directory
    is checked against the raw files it was made from (``stats["source_dir"]``) while they are
    still there: a mirror set later (``$RAREC_MIRROR``) does not replace it.

    Args:
        name: a dataset name (:func:`rarec_lite.data.catalog.resolve`); ``Dataset.name`` is its key.
        max_users: keep a fixed random subset of this many users (seeded by ``seed``) for
            quick runs. Only the items that occur in the kept users' sequences are kept,
            renumbered contiguously (see :meth:`Dataset.subset`): full ranking on a slice
            ranks the slice's catalogue, not the whole one.

    Raises:
        FileNotFoundError: neither raw nor processed data (the message says how to get it).
        ValueError: unknown dataset name (with the closest names), malformed input.
    """
    key = dataset_key(name)
    if key == TOY:
        from .toy import synthetic_dataset

        ds = synthetic_dataset(seed=seed)
        return ds.subset(max_users, seed) if max_users else ds
    out = Path(processed_dir).expanduser() if processed_dir is not None else paths.processed_dir(key)
    if raw_dir is None and (out / _STATS).is_file():
        try:
            before = read_json(out / _STATS)
        except (ValueError, OSError):
            before = {}
        made_from = before.get("source_dir")
        if made_from and before.get("dataset") == key and detect_raw_source(made_from, key, any_name=True):
            raw_dir = made_from
    try:
        prepare(key, raw_dir=raw_dir, out_dir=out)
    except FileNotFoundError:
        if raw_dir is not None or not (out / _STATS).is_file():
            raise
    ds = read_processed(out, key)
    return ds.subset(max_users, seed) if max_users else ds
