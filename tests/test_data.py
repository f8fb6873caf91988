"""Tests of rarec_lite.data on small fixture files written here, plus one real-data test."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rarec_lite import cli, data

CAT = "Clothing_Shoes_and_Jewelry"


def write_lines(path: Path, lines, compress: bool | None = None) -> Path:
    text = "".join(line + "\n" for line in lines)
    compress = path.suffix == ".gz" if compress is None else compress
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def review(user, item, t, **extra):
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0, **extra})


# Six users x six items, user uj rated every item but Ij (so every item has 5 ratings: a 5-core).
# Same-day ratings (u1: I2, I6; u6: all five) must keep their file order.
REVIEWS_2014 = [
    review("u1", "I2", 100), review("u1", "I6", 100), review("u1", "I3", 50), review("u1", "I4", 300),
    review("u1", "I5", 400),
    review("u2", "I1", 10), review("u2", "I3", 20), review("u2", "I4", 30), review("u2", "I5", 40), review("u2", "I6", 50),
    review("u3", "I5", 5), review("u3", "I2", 6), review("u3", "I1", 7), review("u3", "I4", 8), review("u3", "I6", 9),
    review("u4", "I1", 1), review("u4", "I2", 2), review("u4", "I3", 3), review("u4", "I5", 4), review("u4", "I6", 5),
    review("u5", "I1", 9), review("u5", "I2", 8), review("u5", "I3", 7), review("u5", "I4", 6), review("u5", "I6", 5),
    review("u6", "I1", 1), review("u6", "I2", 1), review("u6", "I3", 1), review("u6", "I4", 1), review("u6", "I5", 1),
    review("u7", "I9", 1),  # removed by the 5-core
]
META_2014 = [
    "{'asin': 'I1', 'title': 'Ankle Boots &amp; Laces', 'brand': 'Acme', "
    "'categories': [['Clothing, Shoes & Jewelry', 'Women', 'Shoes', 'Boots']], 'related': {'also_bought': ['I2']}}",
    "{'asin': 'I2', 'brand': 'Rubie&#39;s Costume Co', 'categories': [['Clothing, Shoes & Jewelry', 'Novelty'], "
    "['Clothing, Shoes & Jewelry', 'Novelty, Costumes & More', 'Costumes & Accessories', 'Kids & Baby', 'Costumes']]}",
    "{'asin': 'I3', 'categories': [['Clothing, Shoes & Jewelry']]}",
    "{'asin': 'I4', 'title': '', 'brand': '', 'categories': []}",
    "{'asin': 'I9', 'title': 'Never kept'}",
]  # I5 and I6 have no metadata record at all


@pytest.fixture()
def raw2014(tmp_path) -> Path:
    d = tmp_path / "raw2014"
    write_lines(d / f"reviews_{CAT}_5.json.gz", REVIEWS_2014)
    write_lines(d / f"meta_{CAT}.json.gz", META_2014)
    return d


# ----------------------------------------------------------------------------- readers


def test_read_reviews_2014_values(raw2014):
    df = data.read_reviews_2014(raw2014 / f"reviews_{CAT}_5.json.gz")
    assert len(df) == len(REVIEWS_2014)
    assert df.loc[0, ["user", "item", "timestamp", "order"]].tolist() == ["u1", "I2", 100, 0]
    assert df["order"].tolist() == list(range(len(REVIEWS_2014)))
    assert df.attrs["bad_lines"] == 0


def test_malformed_review_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "r.json", [review("a", "x", 1), '{"reviewerID": "b", "asin": ', review("c", "y", 3)])
    with pytest.raises(ValueError, match=r"r\.json:2: malformed JSON"):
        data.read_reviews_2014(path)
    df = data.read_reviews_2014(path, skip_bad_lines=True)
    assert df["user"].tolist() == ["a", "c"] and df.attrs["bad_lines"] == 1
    missing = write_lines(tmp_path / "m.json", [review("a", "x", 1), json.dumps({"reviewerID": "b", "unixReviewTime": 2})])
    with pytest.raises(ValueError, match=r"m\.json:2: missing or empty field 'asin'"):
        data.read_reviews_2014(missing)


def test_hostile_metadata_line_is_rejected_never_executed(tmp_path):
    sentinel = tmp_path / "PWNED"
    hostile = f"__import__('pathlib').Path({str(sentinel)!r}).touch()"
    path = write_lines(tmp_path / "meta.json.gz", [META_2014[0], hostile, META_2014[2]])
    with pytest.raises(ValueError, match=r"meta\.json\.gz:2: not a Python-literal record"):
        data.read_meta_2014(path)
    assert not sentinel.exists()
    # The ASIN pre-filter must not let a code line through unchecked either.
    with pytest.raises(ValueError, match=r"meta\.json\.gz:2:"):
        data.read_meta_2014(path, asins={"I1"})
    df = data.read_meta_2014(path, skip_bad_lines=True)
    assert not sentinel.exists()
    assert df.attrs["bad_lines"] == 1 and df["asin"].tolist() == ["I1", "I3"]
    # A literal that is not a dict is rejected too.
    with pytest.raises(ValueError, match=r"meta2\.json:1: expected a Python-literal dict, got list"):
        data.read_meta_2014(write_lines(tmp_path / "meta2.json", ["['asin', 'I1']"]))


def test_read_meta_2014_fields_and_filter(raw2014):
    df = data.read_meta_2014(raw2014 / f"meta_{CAT}.json.gz").set_index("asin")
    assert df.loc["I1", "title"] == "Ankle Boots & Laces"  # HTML entity unescaped
    assert df.loc["I2", "brand"] == "Rubie's Costume Co"
    assert df.loc["I2", "categories"][1][-1] == "Costumes"
    assert df.loc["I4", "title"] == "" and df.loc["I4", "categories"] == []
    only = data.read_meta_2014(raw2014 / f"meta_{CAT}.json.gz", asins={"I2", "I3"})
    assert sorted(only["asin"]) == ["I2", "I3"]


def test_truncated_and_empty_gzip_are_clear_errors(tmp_path):
    good = write_lines(tmp_path / "full.json.gz", [review(f"u{i}", f"x{i}", i) for i in range(2000)])
    blob = good.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"cut\.json\.gz: truncated or corrupt gzip"):
        data.read_reviews_2014(cut)
    empty = tmp_path / "empty.json.gz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.json\.gz: empty file"):
        data.read_reviews_2014(empty)
    no_records = write_lines(tmp_path / "blank.json.gz", [""])
    with pytest.raises(ValueError, match=r"blank\.json\.gz: no interactions read"):
        data.read_reviews_2014(no_records)
    fake = tmp_path / "fake.json.gz"
    fake.write_text(review("a", "b", 1))
    with pytest.raises(ValueError, match=r"fake\.json\.gz: named \.gz but is not a gzip file"):
        data.read_reviews_2014(fake)


def test_read_2018_files(tmp_path):
    reviews = write_lines(tmp_path / f"{CAT}_5.json.gz", [review("a", "X1", 5, vote="2"), review("a", "X2", 4)])
    df = data.read_reviews_2018(reviews)
    assert df[["user", "item", "timestamp"]].values.tolist() == [["a", "X1", 5], ["a", "X2", 4]]
    meta = write_lines(
        tmp_path / f"meta_{CAT}.json.gz",
        [json.dumps({"asin": "X1", "title": "Tee &amp; Cap", "brand": "B", "category": ["Clothing, Shoes & Jewelry", "Men"]}),
         "{'asin': 'X2'}"],
    )
    with pytest.raises(ValueError, match=r":2: not a JSON record"):
        data.read_meta_2018(meta)
    m = data.read_meta_2018(meta, skip_bad_lines=True)
    assert m.loc[0, "title"] == "Tee & Cap" and m.loc[0, "categories"] == [["Clothing, Shoes & Jewelry", "Men"]]


def test_read_2023_files(tmp_path):
    lines = [
        json.dumps({"user_id": "U", "asin": "C1", "parent_asin": "P1", "timestamp": 1_600_000_000_000, "rating": 4}),
        json.dumps({"user_id": "U", "asin": "C2", "timestamp": 1_600_000_000_001}),
    ]
    df = data.read_reviews_2023(write_lines(tmp_path / f"{CAT}.jsonl.gz", lines))
    assert df["item"].tolist() == ["P1", "C2"]  # parent_asin first, asin as fallback
    assert df["timestamp"].tolist() == [1_600_000_000_000, 1_600_000_000_001]
    meta = [
        json.dumps({"parent_asin": "P1", "title": "Dress", "store": "Shop", "details": {"Brand": "Maker"},
                    "categories": ["Clothing, Shoes & Jewelry", "Women", "Dresses"]}),
        json.dumps({"parent_asin": "P2", "title": "", "store": "Shop2", "categories": []}),
    ]
    m = data.read_meta_2023(write_lines(tmp_path / f"meta_{CAT}.jsonl.gz", meta)).set_index("asin")
    assert m.loc["P1", "brand"] == "Maker" and m.loc["P2", "brand"] == "Shop2"


def test_read_openp5_layout(tmp_path):
    seq = write_lines(tmp_path / "user_sequence.txt", ["A i1 i2 i3", "B i3 i1"])
    df = data.read_user_sequences(seq)
    assert df.values.tolist() == [
        ["A", "i1", 0, 0], ["A", "i2", 1, 1], ["A", "i3", 2, 2], ["B", "i3", 0, 3], ["B", "i1", 1, 4]
    ]
    bad = write_lines(tmp_path / "bad_seq.txt", ["A i1 i2", "C", "A i3"])
    with pytest.raises(ValueError, match=r"bad_seq\.txt:2: user 'C' has no items"):
        data.read_user_sequences(bad)
    df = data.read_user_sequences(bad, skip_bad_lines=True)
    assert df.attrs["bad_lines"] == 2 and df["item"].tolist() == ["i1", "i2"]

    table = write_lines(
        tmp_path / "items.tsv",
        ["asin\tbrand\tcategories\ttitle", "i1\tG&amp;S\tClothing, Shoes & Jewelry | Men | Shirts\t", "i2\tonly two fields"],
    )
    with pytest.raises(ValueError, match=r"items\.tsv:3: expected 4 tab-separated fields"):
        data.read_item_table(table)
    t = data.read_item_table(table, skip_bad_lines=True)
    assert t.loc[0, "brand"] == "G&S" and t.loc[0, "categories"] == [["Clothing, Shoes & Jewelry", "Men", "Shirts"]]
    with pytest.raises(ValueError, match=r"nohdr\.tsv:1: item table header has no 'asin'"):
        data.read_item_table(write_lines(tmp_path / "nohdr.tsv", ["id\tbrand", "x\ty"]))


# ----------------------------------------------------------------------------- k-core, order, split


def _k_core_reference(pairs, k):
    """Independent set-based k-core: repeat until stable."""
    pairs = list(pairs)
    while True:
        users, items = {}, {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = [(u, i) for u, i in pairs if users[u] >= k and items[i] >= k]
        if len(kept) == len(pairs):
            return kept
        pairs = kept


def test_k_core_needs_more_than_one_pass():
    # Item z has one rating: dropping it leaves user C with one rating, so C goes in round 2.
    df = pd.DataFrame({"user": ["A", "A", "B", "B", "C", "C"], "item": ["x", "y", "x", "y", "y", "z"]})
    one_pass = df[(df.user.map(df.user.value_counts()) >= 2) & (df.item.map(df.item.value_counts()) >= 2)]
    assert ("C", "y") in set(zip(one_pass.user, one_pass.item))  # a single pass would keep C
    out = data.k_core(df, k=2)
    assert list(zip(out.user, out.item)) == [("A", "x"), ("A", "y"), ("B", "x"), ("B", "y")]
    assert out.attrs["k_core_rounds"] == 2


def test_k_core_matches_reference_on_random_data():
    rng = np.random.default_rng(3)
    pairs = {(f"u{rng.integers(60)}", f"i{int(rng.zipf(1.6)) % 80}") for _ in range(900)}
    df = pd.DataFrame(sorted(pairs), columns=["user", "item"])
    for k in (2, 3, 5):
        got = data.k_core(df, k=k)
        ref = _k_core_reference(zip(df.user, df.item), k)
        assert list(zip(got.user, got.item)) == ref
        if len(got):
            assert got.user.value_counts().min() >= k and got.item.value_counts().min() >= k


def test_sort_chronologically_breaks_ties_by_item_id_not_file_order():
    df = pd.DataFrame({"user": ["b", "a", "a", "a", "a"], "item": ["p", "q", "s", "r", "t"],
                       "timestamp": [1, 7, 3, 3, 1], "order": [0, 1, 2, 3, 4]})
    out = data.sort_chronologically(df)
    assert out["item"].tolist() == ["t", "r", "s", "q", "p"]  # same day: r before s, whatever the file says
    rng = np.random.default_rng(0)
    for _ in range(5):  # any row order, any 'order' column: the same result
        shuffled = df.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
        shuffled["order"] = np.arange(len(shuffled))
        assert data.sort_chronologically(shuffled)["item"].tolist() == ["t", "r", "s", "q", "p"]
    # the case: rows (C, 100), (A, 200), (B, 100) give [B, C, A]
    case = pd.DataFrame({"user": ["u"] * 3, "item": ["C", "A", "B"], "timestamp": [100, 200, 100], "order": [0, 1, 2]})
    assert data.sort_chronologically(case)["item"].tolist() == ["B", "C", "A"]
    assert data.sort_chronologically(case.iloc[::-1])["item"].tolist() == ["B", "C", "A"]


def test_leave_one_out_hand_case():
    split = data.leave_one_out([np.array([5, 6, 7, 8]), np.array([1, 2, 3])])
    assert [s.tolist() for s in split.train] == [[5, 6], [1]]
    assert [s.tolist() for s in split.valid_history] == [[5, 6], [1]]
    assert split.valid_target.tolist() == [7, 2]
    assert [s.tolist() for s in split.test_history] == [[5, 6, 7], [1, 2]]
    assert split.test_target.tolist() == [8, 3]
    with pytest.raises(ValueError, match="user 1: sequence of length 2"):
        data.leave_one_out([np.array([1, 2, 3]), np.array([1, 2])])


# ----------------------------------------------------------------------------- item text


def test_build_item_text_rules():
    cats = "Clothing, Shoes & Jewelry | Girls | Clothing | Active | Active Skirts"
    assert data.build_item_text("", "Boutique Cutie", cats) == "Boutique Cutie — Girls > Clothing > Active > Active Skirts"
    assert data.build_item_text("Red &amp;amp; Blue  Scarf", "X", cats) == "Red & Blue Scarf"  # title wins
    noisy = ("Clothing, Shoes & Jewelry | Skechers | Shoes | Fashion Sneakers | "
             "Shoes & Accessories: International Shipping Available | Women | S | Comfort Shoes")
    assert data.build_item_text(None, "Skechers", noisy) == (
        "Skechers — Fashion Sneakers > Shoes & Accessories > Women > Comfort Shoes")
    paths = [["Clothing, Shoes & Jewelry", "Men"], ["Clothing, Shoes & Jewelry", "Men", "Shoes", "Boots"]]
    assert data.build_item_text("", "", paths) == "Men > Shoes > Boots"  # the longest path
    assert data.build_item_text("", "", "Clothing, Shoes & Jewelry") == "Clothing, Shoes & Jewelry"
    assert data.build_item_text("", "Speedo", "Clothing, Shoes & Jewelry | Speedo | S") == "Speedo"
    assert data.build_item_text(float("nan"), "", [], asin="B000XYZ") == "item B000XYZ"
    assert data.build_item_text("  ", None, None) == "item (no text)"


def test_item_text_coverage_counts():
    texts, cov = data.build_item_texts(
        titles=["T", "", "", "", ""],
        brands=["B", "B", "", "B", ""],
        categories=["Clothing, Shoes & Jewelry | Men", "Clothing, Shoes & Jewelry | Men", "Clothing, Shoes & Jewelry | Men", "", ""],
        asins=["a", "b", "c", "d", "e"],
    )
    assert texts == ["T", "B — Men", "Men", "B", "item e"]
    assert cov == {"items": 5, "title": 1, "brand": 3, "categories": 3,
                   "text_from": {"title": 1, "brand+categories": 1, "categories": 1, "brand": 1, "fallback": 1},
                   "distinct_texts": 5, "items_sharing_text": 0, "largest_text_group": 1}


def test_gini_and_top_share_hand_values():
    assert data.gini([0, 0, 0, 10]) == pytest.approx(0.75)  # (2*4-5)*10 / (4*10)
    assert data.gini([3, 3, 3]) == pytest.approx(0.0)
    assert data.gini([1, 2, 3]) == pytest.approx((-2 * 1 + 0 * 2 + 2 * 3) / (3 * 6))
    assert data.top_share([1, 1, 8], 0.01) == pytest.approx(0.8)  # at least one item


# ----------------------------------------------------------------------------- prepare / load


def test_prepare_2014_end_to_end(raw2014, tmp_path):
    out = tmp_path / "processed"
    stats = data.prepare("cloth", raw_dir=raw2014, out_dir=out)
    assert stats["cache"] == "built" and stats["source_format"] == "amazon2014"
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 30)
    assert stats["filtering"] == {"rows_read": 31, "duplicates_dropped": 0, "k": 5, "k_core_rounds": 1}
    assert stats["sequence_length"]["min"] == 5 and stats["sequence_length"]["mean"] == 5.0
    assert set(stats["inputs"]) == {"reviews", "meta"}
    ds = data.load_dataset("cloth", processed_dir=out, raw_dir=raw2014)
    assert ds.user_ids == ["u1", "u2", "u3", "u4", "u5", "u6"]
    assert ds.item_ids == ["I1", "I2", "I3", "I4", "I5", "I6"]
    raw_seqs = [[ds.item_ids[i] for i in s] for s in ds.sequences]
    # u1: I3 (t=50), then I2 and I6 on the same day in file order, then I4, I5
    assert raw_seqs[0] == ["I3", "I2", "I6", "I4", "I5"]
    assert raw_seqs[4] == ["I6", "I4", "I3", "I2", "I1"]
    assert raw_seqs[5] == ["I1", "I2", "I3", "I4", "I5"]  # all on one day: file order
    assert ds.item_text == [
        "Ankle Boots & Laces",
        "Rubie's Costume Co — Novelty, Costumes & More > Costumes & Accessories > Kids & Baby > Costumes",
        "Clothing, Shoes & Jewelry",
        "item I4",
        "item I5",
        "item I6",
    ]
    assert ds.item_title[0] == "Ankle Boots & Laces" and ds.item_brand[1] == "Rubie's Costume Co"
    assert stats["text_coverage"]["text_from"] == {"title": 1, "brand+categories": 1, "categories": 1, "brand": 0,
                                                   "fallback": 3}
    # popularity on the training part s[:-2]: hand count over the five sequences
    train_raw = [s[:-2] for s in raw_seqs]
    expected = [sum(s.count(a) for s in train_raw) for a in ds.item_ids]
    assert ds.item_popularity().tolist() == expected
    assert ds.item_popularity("all").tolist() == [5] * 6
    split = ds.split()
    assert [ds.item_ids[i] for i in split.test_target] == [s[-1] for s in raw_seqs]


def test_prepare_reuses_cache_and_rebuilds_on_change(raw2014, tmp_path):
    out = tmp_path / "p"
    first = data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4)
    stamp = (out / "interactions.parquet").stat().st_mtime_ns
    again = data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4)
    assert again["cache"] == "reused" and (out / "interactions.parquet").stat().st_mtime_ns == stamp
    assert {k: v for k, v in again.items() if k not in ("cache",)} == {
        k: v for k, v in first.items() if k not in ("cache",)}
    assert data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4, force=True)["cache"] == "built"
    assert data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=3)["cache"] == "built"  # config changed
    write_lines(raw2014 / f"reviews_{CAT}_5.json.gz", REVIEWS_2014[:-1])  # input changed
    rebuilt = data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=3)
    assert rebuilt["cache"] == "built" and rebuilt["filtering"]["rows_read"] == 30
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".p.")) == []


def test_failure_mid_prepare_leaves_nothing_half_written(raw2014, tmp_path, monkeypatch):
    out = tmp_path / "proc" / "cloth"

    def broken(directory, interactions, items, users):
        interactions.to_parquet(directory / "interactions.parquet")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(data.prepared, "_write_tables", broken)
    with pytest.raises(OSError, match="simulated"):
        data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4)
    assert not out.exists()
    assert list((tmp_path / "proc").iterdir()) == []  # no temporary directory left either
    monkeypatch.undo()
    data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4)
    before = (out / "stats.json").read_text()
    monkeypatch.setattr(data.prepared, "_write_tables", broken)
    with pytest.raises(OSError):
        data.prepare("cloth", raw_dir=raw2014, out_dir=out, k=4, force=True)
    assert (out / "stats.json").read_text() == before  # the old dataset is untouched
    assert sorted(p.name for p in (tmp_path / "proc").iterdir()) == ["cloth"]


def test_raw_source_resolution_order(raw2014, tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    write_lines(mirror / "amazon_cloth" / "user_sequence.txt", ["A i1 i2 i3 i4 i5"])
    write_lines(mirror / "amazon_cloth" / "item_brand_categories.tsv", ["asin\tbrand\tcategories", "i1\tX\t"])
    monkeypatch.setenv("RAREC_MIRROR", str(mirror))
    found = data.find_raw_source("cloth")
    assert found.format == "openp5" and found.directory == mirror / "amazon_cloth"
    assert found.files["items"].name == "item_brand_categories.tsv"
    assert data.find_raw_source("cloth", raw_dir=raw2014).format == "amazon2014"  # explicit wins
    monkeypatch.delenv("RAREC_MIRROR")
    with pytest.raises(FileNotFoundError, match="data_download.sh"):
        data.find_raw_source("cloth")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.find_raw_source("shoes")


def test_load_dataset_max_users_slice(raw2014, tmp_path):
    full = data.load_dataset("cloth", processed_dir=tmp_path / "p", raw_dir=raw2014)
    part = data.load_dataset("cloth", processed_dir=tmp_path / "p", raw_dir=raw2014, max_users=2, seed=1)
    again = data.load_dataset("cloth", processed_dir=tmp_path / "p", raw_dir=raw2014, max_users=2, seed=1)
    assert part.user_ids == again.user_ids and part.num_users == 2
    used = sorted({i for s in part.sequences for i in s.tolist()})
    assert used == list(range(part.num_items))  # only the slice's items, contiguous
    for u, seq in zip(part.user_ids, part.sequences):
        orig = full.sequences[full.user_ids.index(u)]
        assert [part.item_ids[i] for i in seq] == [full.item_ids[i] for i in orig]
        assert [part.item_text[i] for i in seq] == [full.item_text[i] for i in orig]
    assert part.stats["users"] == 2 and part.stats["full"]["users"] == 6


def test_cli_prepare_prints_stats(tmp_path, capsys):
    seq = [f"U{u} " + " ".join(f"i{(u + j) % 6}" for j in range(5)) for u in range(6)]
    write_lines(tmp_path / "m" / "user_sequence.txt", seq)
    rc = cli.main(["prepare", "--raw-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert rc == 0 and "users         6" in text and "interactions  30" in text and "fallback 6" in text
    assert cli.main(["prepare", "--raw-dir", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 0
    assert "reused the cache" in capsys.readouterr().out
    assert cli.main(["prepare", "--raw-dir", str(tmp_path / "nothing")]) == 2
    assert "not a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- synthetic data


def test_synthetic_dataset_is_deterministic_and_well_formed():
    a, b = data.synthetic_dataset(seed=3), data.synthetic_dataset(seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert (a.num_users, a.num_items) == (200, 100)
    assert all(len(set(s.tolist())) == len(s) and 5 <= len(s) <= 15 for s in a.sequences)
    assert all(t.strip() for t in a.item_text) and a.stats["text_coverage"]["text_from"]["fallback"] == 0
    assert a.item_text[0] == "SunStep — Women > Shoes > Sandals"
    assert data.load_dataset("toy", max_users=50).num_users == 50


def test_synthetic_dataset_has_structure_beyond_popularity():
    ds = data.synthetic_dataset(num_users=400, seed=0)
    split = ds.split()
    pop = ds.item_popularity()
    trans = np.zeros((ds.num_items, ds.num_items))  # item-to-next-item counts on the training part
    for s in split.train:
        for a, b in zip(s[:-1], s[1:]):
            trans[a, b] += 1

    def hr10(score_rows):
        hits = 0
        for hist, target, scores in zip(split.test_history, split.test_target, score_rows):
            scores = scores.astype(float).copy()
            scores[hist] = -np.inf
            hits += target in np.argsort(-scores, kind="stable")[:10]
        return hits / len(split.test_target)

    hr_pop = hr10([pop for _ in split.test_history])
    hr_markov = hr10([trans[h[-1]] + 1e-3 * pop for h in split.test_history])
    assert hr_markov > hr_pop + 0.2, (hr_markov, hr_pop)


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_clothing_counts_and_text(shared_cloth_dir, session_home):
    out = session_home / "processed" / "cloth"
    stats = data.prepare("cloth", raw_dir=shared_cloth_dir, out_dir=out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (39387, 23033, 278677)
    ds = data.load_dataset("cloth", processed_dir=out, raw_dir=shared_cloth_dir)
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (39387, 23033, 278677)
    assert all(isinstance(t, str) and t.strip() for t in ds.item_text)
    cov = stats["text_coverage"]
    print("\nreal Clothing text coverage:", json.dumps(cov))
    assert cov["items"] == 23033 and cov["title"] == 0 and cov["brand"] == 3942
    assert sum(cov["text_from"].values()) == 23033
    assert ds.item_text[ds.item_ids.index("0000031887")] == "Boutique Cutie — Girls > Clothing > Active > Active Skirts"
    # the file's first line, read independently, is that user's sequence in order
    first = (shared_cloth_dir / "user_sequence.txt").open().readline().split()
    u = ds.user_ids.index(first[0])
    assert [ds.item_ids[i] for i in ds.sequences[u]] == first[1:]
    assert data.prepare("cloth", raw_dir=shared_cloth_dir, out_dir=out)["cache"] == "reused"


def test_prepare_2023_layout_dedupes_and_filters(tmp_path):
    # 2023 files are not 5-core: user "x" (2 items) and item "P9" (1 user) must go; repeated
    # ratings of the same item keep the earliest one.
    lines = []
    for u in range(5):
        for j in range(5):
            lines.append(json.dumps({"user_id": f"U{u}", "parent_asin": f"P{j}", "timestamp": 1000 * (j + 1)}))
    lines.append(json.dumps({"user_id": "U0", "parent_asin": "P0", "timestamp": 99_000}))  # repeat, later
    lines += [json.dumps({"user_id": "x", "parent_asin": "P1", "timestamp": 1}),
              json.dumps({"user_id": "x", "parent_asin": "P9", "timestamp": 2})]
    write_lines(tmp_path / "raw" / f"{CAT}.jsonl.gz", lines)
    write_lines(tmp_path / "raw" / f"meta_{CAT}.jsonl.gz",
                [json.dumps({"parent_asin": "P0", "title": "Linen Shirt", "categories": []})])
    stats = data.prepare("cloth", raw_dir=tmp_path / "raw", out_dir=tmp_path / "out")
    assert stats["source_format"] == "amazon2023"
    assert (stats["users"], stats["items"], stats["interactions"]) == (5, 5, 25)
    assert stats["filtering"]["duplicates_dropped"] == 1 and stats["filtering"]["rows_read"] == 28
    ds = data.read_processed(tmp_path / "out")
    assert all(s.tolist() == [0, 1, 2, 3, 4] for s in ds.sequences)  # P0 stays first for U0
    assert ds.item_text[0] == "Linen Shirt" and ds.item_text[1] == "item P1"
