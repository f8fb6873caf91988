"""Amazon review data: readers, k-core filter, leave-one-out split and item text.

This package turns public Amazon review files into what every later chapter uses: one
chronological sequence of item ids per user, split leave-one-out, and one short text per
item. The paper (RA-Rec, Yu et al. 2024, arXiv 2402.04527, Sec. 5.1) uses the 2014
Amazon "Clothing, Shoes & Jewelry" 5-core (McAuley et al. SIGIR'15, He & McAuley WWW'16):
39,387 users, 23,033 items, 278,677 interactions; any other category works the same way.

Modules, one idea each:

=====================  ==================================================================
module                 what is in it
=====================  ==================================================================
``catalog``            the categories by name: release names, aliases (``cloth``,
                       ``scientific``, ...), labels (``categories.tsv``, shared with
                       ``data_download.sh``)
``amazon``             readers of the 2014 / 2018 / 2023 release files (reviews + metadata)
``lcrec``              readers of the LC-Rec layout (``<Name>.inter.json`` + ``.item.json``)
``openp5``             readers of the OpenP5 layout (``user_sequence.txt`` + item ``.tsv``)
``sources``            which layout is where (``find_raw_source``)
``split``              chronological order, k-core, leave-one-out
``text``               item text (title first) and how many items share one
``stats``              counts, lengths, popularity concentration
``prepared``           ``prepare`` (raw -> parquet + stats.json), ``Dataset``, ``load_dataset``
``toy``                the synthetic dataset of quick mode
=====================  ==================================================================

Every reader fails on a malformed line with ``ValueError("<file>:<line>: ...")``, or counts
and skips such lines when called with ``skip_bad_lines=True`` (the count is in
``df.attrs["bad_lines"]``). Gzip files are recognised by their magic bytes; an empty or
truncated gzip is a ``ValueError`` naming the file. Everything public is importable from
``rarec_lite.data`` directly.
"""

from __future__ import annotations

from .amazon import (
    read_meta_2014,
    read_meta_2018,
    read_meta_2023,
    read_reviews_2014,
    read_reviews_2018,
    read_reviews_2023,
)
from .catalog import CATEGORIES, CATEGORY_FILE_NAMES, Category, dataset_key, label, resolve, short_label
from .lcrec import read_lcrec_interactions, read_lcrec_items
from .openp5 import ITEM_TABLE_NAME, read_item_table, read_user_sequences
from .prepared import FORMAT_VERSION, Dataset, load_dataset, prepare, read_processed
from .sources import RawSource, detect_raw_source, find_raw_source
from .split import LeaveOneOut, k_core, leave_one_out, sort_chronologically
from .stats import compute_stats, gini, top_share
from .text import ROOT_CATEGORIES, build_item_text, build_item_texts, category_path_text, text_sharing, top_category
from .toy import synthetic_dataset

__all__ = [
    "CATEGORIES", "CATEGORY_FILE_NAMES", "Category", "Dataset", "FORMAT_VERSION", "ITEM_TABLE_NAME", "LeaveOneOut",
    "ROOT_CATEGORIES", "RawSource", "build_item_text", "build_item_texts", "category_path_text", "compute_stats",
    "dataset_key", "detect_raw_source", "find_raw_source", "gini", "k_core", "label", "leave_one_out",
    "load_dataset", "prepare", "read_item_table", "read_lcrec_interactions", "read_lcrec_items", "read_meta_2014",
    "read_meta_2018", "read_meta_2023", "read_processed", "read_reviews_2014", "read_reviews_2018",
    "read_reviews_2023", "read_user_sequences", "resolve", "short_label", "sort_chronologically",
    "synthetic_dataset", "text_sharing", "top_category", "top_share",
]
