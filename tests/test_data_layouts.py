"""rarec_lite.data on the LC-Rec layout, dataset names, item-text rules and bad inputs: small fixture
files written here, plus real-data tests on ../shared/data/amazon_scientific (skipped where absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rarec_lite import cli, data
from rarec_lite.data import lcrec as _lcrec  # noqa: F401  (data.lcrec below)

# Six users over six items; every item has >= 5 users (a 5-core). Item "3" has an HTML title, "5" an
# empty title (text falls back to brand + category path).
SEQUENCES = {str(u): [str((u + j) % 6) for j in range(5)] for u in range(6)}
ITEMS = {
    "0": {"title": "Digital Caliper 6 in.", "brand": "Mitutoyo", "categories": "Industrial & Scientific,Test, Measure & Inspect,Calipers", "description": "x"},
    "1": {"title": "Nitrile Gloves, Large", "brand": "Ammex", "categories": "Industrial & Scientific,Lab & Scientific Products,Gloves"},
    "2": {"title": "Safety Glasses &amp; Case", "brand": "3M", "categories": ""},
    "3": {"title": '<span id="x">NEW</span> Wood Screws<br/>#8', "brand": "Hillman", "categories": "Industrial & Scientific,Fasteners,Screws"},
    "4": {"title": "Staples 1/2 in.", "brand": "Stanley", "categories": "Industrial & Scientific,Fasteners,Staples"},
    "5": {"title": "", "brand": "Loctite", "categories": "Industrial & Scientific,Tapes, Adhesives & Sealants,Cyanoacrylate Adhesives"},
}


def inter_text(sequences) -> str:
    """One user a line: user "k" (the k-th) is on line k + 2."""
    return "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sequences.items()) + "\n}"


def write_lcrec(directory: Path, sequences=None, items=None, name: str = "Scientific", raw: dict | None = None) -> Path:
    """Write <name>.inter.json (one user a line) and <name>.item.json (indented) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    inter = raw.get("inter") if raw else None
    item = raw.get("item") if raw else None
    (directory / f"{name}.inter.json").write_text(inter if inter is not None else inter_text(sequences or SEQUENCES))
    (directory / f"{name}.item.json").write_text(item if item is not None else json.dumps(items or ITEMS, indent=2))
    return directory


# ----------------------------------------------------------------------------- names


def test_dataset_names_resolve_by_alias_release_name_and_version():
    assert data.resolve("scientific").name == "Industrial_and_Scientific"
    assert data.dataset_key("Industrial_and_Scientific") == "scientific" == data.dataset_key("SCIENTIFIC")
    assert data.dataset_key("Clothing_Shoes_and_Jewelry") == "cloth"
    assert data.resolve("beauty", 2014).name == "Beauty" and data.resolve("beauty", "2018").name == "All_Beauty"
    assert data.label("scientific") == "Amazon Industrial & Scientific" and data.short_label("cloth") == "Clothing, Shoes & Jewelry"
    assert data.label("toy") == "synthetic toy data"
    with pytest.raises(ValueError, match="did you mean scientific"):
        data.resolve("scientifc")
    with pytest.raises(ValueError, match="not in the 2014 release; it is in 2018, 2023"):
        data.resolve("scientific", 2014)


def test_category_table_is_well_formed():
    names = [c.name for c in data.CATEGORIES]
    assert len(names) == len(set(names)) and len(names) >= 35
    for version, expected in (("2014", 24), ("2018", 29), ("2023", 33)):  # the releases' category counts
        assert sum(version in c.versions for c in data.CATEGORIES) == expected, version
    for alias in ("cloth", "beauty", "sports", "toys", "scientific", "instruments", "book", "arts", "games", "office"):
        data.resolve(alias)


# ----------------------------------------------------------------------------- LC-Rec layout


def test_lcrec_prepare_values(tmp_path):
    raw = write_lcrec(tmp_path / "raw")
    stats = data.prepare("scientific", raw_dir=raw, out_dir=tmp_path / "out")
    assert stats["source_format"] == "lcrec" and stats["dataset"] == "scientific"
    assert (stats["users"], stats["items"], stats["interactions"]) == (6, 6, 30)
    ds = data.read_processed(tmp_path / "out")
    assert ds.name == "scientific" and ds.item_ids == ["0", "1", "2", "3", "4", "5"]
    for u, seq in zip(ds.user_ids, ds.sequences):  # the file's order, exactly
        assert [ds.item_ids[i] for i in seq] == SEQUENCES[u]
    assert ds.item_text == ["Digital Caliper 6 in.", "Nitrile Gloves, Large", "Safety Glasses & Case", "NEW Wood Screws #8",
                            "Staples 1/2 in.", "Loctite — Tapes, Adhesives & Sealants > Cyanoacrylate Adhesives"]
    assert ds.item_categories[0] == "Industrial & Scientific | Test, Measure & Inspect | Calipers"
    cov = stats["text_coverage"]
    assert cov["text_from"] == {"title": 5, "brand+categories": 1, "categories": 0, "brand": 0, "fallback": 0}
    assert (cov["distinct_texts"], cov["items_sharing_text"]) == (6, 0)


def test_lcrec_ids_sorted_numerically(tmp_path):
    seqs = {str(u): [str(x) for x in ([10, 2, 1, 0, 11][u:] + [10, 2, 1, 0, 11][:u])] for u in range(5)}
    items = {str(i): {"title": f"T{i}"} for i in (0, 1, 2, 10, 11)}
    raw = write_lcrec(tmp_path / "raw", seqs, items)
    ds = data.load_dataset("scientific", processed_dir=tmp_path / "out", raw_dir=raw)
    assert ds.item_ids == ["0", "1", "2", "10", "11"] and ds.item_text[3] == "T10"
    assert [ds.item_ids[i] for i in ds.sequences[0]] == ["10", "2", "1", "0", "11"]


@pytest.mark.parametrize("case, message", [
    ("missing_item", r"Scientific\.inter\.json: item '9' \(in the sequence of user '2'\) has no record in .*Scientific\.item\.json"),
    ("non_list", r"Scientific\.inter\.json:4: user '2': the sequence must be a non-empty list of item ids, got str"),
    ("empty_list", r"Scientific\.inter\.json:4: user '2': .* got an empty list"),
    ("duplicate_user", r"Scientific\.inter\.json:8: duplicate id '2' \(first at line 4\)"),
    ("duplicate_item", r"Scientific\.item\.json:\d+: duplicate id '1' \(first at line 8\)"),
    ("title_not_string", r"Scientific\.item\.json:\d+: item '4': field 'title' must be a string, got int"),
    ("malformed", r"Scientific\.inter\.json:3: malformed JSON \(Expecting ',' delimiter, column 10\)"),
    ("not_object", r"Scientific\.inter\.json: expected a JSON object"),
])
def test_lcrec_bad_inputs_name_file_line_and_field(tmp_path, case, message):
    seqs = {k: list(v) for k, v in SEQUENCES.items()}
    items = json.loads(json.dumps(ITEMS))
    raw = None
    if case == "missing_item":
        seqs["2"][1] = "9"
    elif case == "non_list":
        seqs["2"] = "0 1 2"
    elif case == "empty_list":
        seqs["2"] = []
    elif case == "duplicate_user":
        raw = {"inter": inter_text(seqs).rstrip("}\n") + ',\n "2": ["0"]\n}'}
    elif case == "duplicate_item":
        text = json.dumps(items, indent=2)
        raw = {"item": text.rstrip("}\n") + '},\n  "1": {"title": "again"}\n}'}
    elif case == "title_not_string":
        items["4"]["title"] = 42
    elif case == "malformed":
        raw = {"inter": '{\n "0": [1, 2],\n "1": [3 4]\n}'}
    elif case == "not_object":
        raw = {"inter": "[[1, 2, 3]]"}
    d = write_lcrec(tmp_path / "raw", seqs, items, raw=raw)
    with pytest.raises(ValueError, match=message):
        data.prepare("scientific", raw_dir=d, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lcrec_skip_bad_lines_counts_bad_sequences(tmp_path):
    seqs = {k: list(v) for k, v in SEQUENCES.items()}
    seqs["6"] = {"not": "a list"}
    d = write_lcrec(tmp_path / "raw", seqs)
    stats = data.prepare("scientific", raw_dir=d, out_dir=tmp_path / "out", skip_bad_lines=True)
    assert stats["bad_lines_skipped"] == {"interactions": 1, "items": 0} and stats["users"] == 6


def test_lcrec_categories_keep_comma_space_inside_nodes():
    assert data.lcrec.split_categories("A & B,Tapes, Adhesives & Sealants,Glue") == [["A & B", "Tapes, Adhesives & Sealants", "Glue"]]
    assert data.lcrec.split_categories("") == [] and data.lcrec.split_categories(None) == []


# ----------------------------------------------------------------------------- item text rules


def test_html_tags_removed_and_entities_unescaped():
    assert data.build_item_text('<span id="x">NEW</span> Boots', "", "") == "NEW Boots"
    assert data.build_item_text("Size <5 mm &amp; up", "", "") == "Size <5 mm & up"  # not a tag: kept
    assert data.build_item_text("&lt;b&gt;Bold&lt;/b&gt; Tee", "", "") == "Bold Tee"  # escaped tags too


def test_repeated_asin_keeps_first_non_empty_title(tmp_path):
    path = tmp_path / "meta.json"
    path.write_text("\n".join([
        "{'asin': 'A1', 'title': '', 'brand': 'Acme'}",
        "{'asin': 'A1', 'title': 'Real Title', 'brand': 'Other'}",
        "{'asin': 'A2', 'title': 'First'}",
        "{'asin': 'A2', 'title': 'Second'}",
    ]) + "\n")
    meta = data.read_meta_2014(path).set_index("asin")
    assert meta.loc["A1", "title"] == "Real Title" and meta.loc["A1", "brand"] == "Acme"
    assert meta.loc["A2", "title"] == "First"


def test_text_sharing_counts():
    assert data.text_sharing(["a", "b", "a", "c", "a", "b"]) == {
        "distinct_texts": 3, "items_sharing_text": 5, "largest_text_group": 3}


def test_category_root_of_any_dataset_dropped_only_at_the_start():
    assert data.category_path_text("Industrial & Scientific | Fasteners | Screws") == "Fasteners > Screws"
    # a Clothing path that mentions another category's root in the middle keeps it (as before)
    assert data.category_path_text("Clothing, Shoes & Jewelry | Luggage & Travel Gear | Software") == \
        "Luggage & Travel Gear > Software"


# ----------------------------------------------------------------------------- finding files, caches


def test_mirror_with_two_datasets_serves_each_its_own(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "amazon_cloth").mkdir(parents=True)
    (mirror / "amazon_cloth" / "user_sequence.txt").write_text(
        "".join(f"U{u} " + " ".join(f"c{(u + j) % 6}" for j in range(5)) + "\n" for u in range(6)))
    write_lcrec(mirror / "amazon_scientific")
    monkeypatch.setenv("RAREC_MIRROR", str(mirror))
    assert data.find_raw_source("cloth").format == "openp5"
    assert data.find_raw_source("scientific").format == "lcrec"
    with pytest.raises(FileNotFoundError, match="no raw data for 'sports'"):
        data.find_raw_source("sports")  # neither folder is lent to another dataset
    cloth, sci = data.load_dataset("cloth"), data.load_dataset("scientific")
    assert (cloth.name, cloth.item_ids[0], sci.name, sci.item_ids[0]) == ("cloth", "c0", "scientific", "0")
    from rarec_lite import paths
    assert sorted(p.name for p in (paths.home() / "processed").iterdir()) == ["cloth", "scientific"]


def test_processed_dir_of_another_dataset_is_never_replaced(tmp_path):
    raw = write_lcrec(tmp_path / "raw")
    out = tmp_path / "out"
    data.prepare("scientific", raw_dir=raw, out_dir=out)
    before = (out / "stats.json").read_text()
    seq_dir = tmp_path / "cloth"
    seq_dir.mkdir()
    (seq_dir / "user_sequence.txt").write_text("".join(f"U{u} a b c d e\n" for u in range(5)))
    with pytest.raises(ValueError, match="holds the processed 'scientific' dataset, not 'cloth'"):
        data.prepare("cloth", raw_dir=seq_dir, out_dir=out, force=True)
    assert (out / "stats.json").read_text() == before


def test_load_prefers_the_raw_files_it_was_made_from_over_a_later_mirror(tmp_path, monkeypatch):
    own = write_lcrec(tmp_path / "mine" / "scientific")
    data.prepare("scientific", raw_dir=own)  # into $RAREC_HOME/processed/scientific
    other = {k: v[::-1] for k, v in SEQUENCES.items()}
    write_lcrec(tmp_path / "mirror" / "amazon_scientific", other)
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path / "mirror"))
    ds = data.load_dataset("scientific")
    assert [ds.item_ids[i] for i in ds.sequences[0]] == SEQUENCES["0"]  # not the mirror's reversed ones
    assert ds.stats["source_dir"] == str(own.resolve())


def test_cli_prepare_any_dataset_name(tmp_path, capsys):
    raw = write_lcrec(tmp_path / "raw")
    assert cli.main(["prepare", "--dataset", "Industrial_and_Scientific", "--raw-dir", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "scientific (Amazon Industrial & Scientific)" in out and "users         6" in out
    assert "distinct texts 6 of 6" in out
    assert cli.main(["prepare", "--dataset", "scientifc"]) == 2
    assert "did you mean scientific" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_scientific_counts_and_titles(shared_scientific_dir, session_home):
    out = session_home / "processed" / "scientific"
    stats = data.prepare("scientific", raw_dir=shared_scientific_dir, out_dir=out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (8317, 4344, 58492)
    cov = stats["text_coverage"]
    assert cov["text_from"]["title"] == 4344 and cov["distinct_texts"] == 4306
    ds = data.load_dataset("scientific", processed_dir=out, raw_dir=shared_scientific_dir)
    items = json.loads((shared_scientific_dir / "Scientific.item.json").read_text())
    assert ds.item_ids == [str(i) for i in range(4344)]
    assert all(ds.item_text[i] == " ".join(items[str(i)]["title"].split()) for i in range(0, 4344, 97))
    inter = json.loads((shared_scientific_dir / "Scientific.inter.json").read_text())
    for user in ("0", "17", "8316"):
        assert [ds.item_ids[i] for i in ds.sequences[ds.user_ids.index(user)]] == [str(x) for x in inter[user]]
    lengths = np.array([len(s) for s in ds.sequences])
    assert (lengths.min(), lengths.max()) == (5, 78)
