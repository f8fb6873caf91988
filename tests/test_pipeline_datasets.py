"""The pipeline on any dataset: --dataset, per-dataset token budgets, labels, clean failures and retries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rarec_lite import cli
from rarec_lite.pipeline import for_dataset, load_config, run_pipeline

TITLES = ["Digital Caliper", "Nitrile Gloves Large", "Safety Glasses", "Wood Screws #8", "Staples 1/2 in.",
          "Super Glue Gel", "Zip Ties 8 in.", "Duct Tape Silver", "Hex Key Set", "Cable Clamps"]


def write_scientific(directory: Path, users: int = 40, items: int = 30) -> Path:
    """A small LC-Rec dataset named Scientific: every item has a title, every user 5-10 items."""
    directory.mkdir(parents=True, exist_ok=True)
    seqs = {str(u): [(3 * u + 7 * j) % items for j in range(5 + u % 6)] for u in range(users)}
    meta = {str(i): {"title": f"{TITLES[i % len(TITLES)]} model {i}", "brand": "B", "categories": "Industrial & Scientific,Tools"}
            for i in range(items)}
    (directory / "Scientific.inter.json").write_text(json.dumps(seqs))
    (directory / "Scientific.item.json").write_text(json.dumps(meta))
    return directory


def tiny(dataset="toy", **over) -> dict:
    cfg = {
        "name": "unit-tiny", "description": "tiny random LLaMA", "seed": 0,
        "data": {"dataset": dataset, "max_users": 0},
        "sasrec": {"hidden": 16, "max_len": 10, "num_layers": 1, "epochs": 1, "batch_size": 64},
        "eval": {"num_users": 30, "bootstrap_resamples": 20},
        "llm": {"name": "tiny-llama", "quantization": "none", "batch_size": 64, "user_max_tokens": 60,
                "item_max_tokens": 12, "history_items": 2},
        "alignment": {"num_id_tokens": 1, "num_instruction_tokens": 2},
        "train": {"samples": 16, "steps": 2, "batch_size": 8, "negatives": 8},
        "budgets": {"scientific": {"user_max_tokens": 160, "item_max_tokens": 40}},
        "methods": {"run": ["mostpop", "id_translation"]},
    }
    for section, values in over.items():
        cfg[section] = {**cfg[section], **values} if isinstance(cfg.get(section), dict) else values
    return cfg


def test_dataset_switch_budgets_labels_and_results_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path / "mirror"))
    write_scientific(tmp_path / "mirror" / "amazon_scientific")
    result = run_pipeline(tiny(), out=tmp_path, progress=False, dataset="Industrial_and_Scientific")
    out = tmp_path / "results" / "unit-tiny-scientific"
    assert result["results_dir"] == str(out) and (out / "metrics.json").is_file()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"]["name"] == "scientific" and saved["dataset"]["items"] == 30
    assert saved["token_budgets"] == {"user_max_tokens": 160, "item_max_tokens": 40}  # [budgets.scientific]
    budget = saved["methods"]["id_translation"]["budget"]
    # the tiny model reads bytes: a 160-token budget holds only a few titles of the 3-8 item histories
    assert budget["users"]["prompts"] == 30 and 0 < budget["users"]["items_kept"] < budget["users"]["items_wanted"]
    assert budget["users"]["lost_item_share"] > 0.5 and budget["items"]["prompts"] == 30
    log = capsys.readouterr().out
    assert "WARNING: id_translation:" in log and "scientific (Amazon Industrial & Scientific)" in log
    report = (out / "report.md").read_text()
    assert report.startswith("# Results: unit-tiny on Amazon Industrial & Scientific")
    assert "Token budgets ([llm] user_max_tokens = 160, item_max_tokens = 40)" in report
    assert "Clothing" not in report
    # the config's own dataset keeps its own directory and budgets
    own = for_dataset(load_config(tiny()), None)
    assert own["llm"]["user_max_tokens"] == 60 and own["data"]["dataset"] == "toy"


def test_unknown_dataset_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="did you mean scientific"):
        run_pipeline(tiny(), out=tmp_path, progress=False, dataset="scientifc")
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ndataset = "scientific_"\n')
    with pytest.raises(ValueError, match=r"bad\.toml: \[data\] dataset: unknown dataset 'scientific_'"):
        load_config(bad)
    bad.write_text('[budgets.scientific]\nuser_max_token = 9\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[budgets.scientific\]: user_max_token"):
        load_config(bad)


def test_failed_run_does_not_block_its_corrected_retry(tmp_path):
    cfg = tiny(data={"dataset": "scientific", "raw_dir": str(tmp_path / "nowhere")})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_pipeline(cfg, out=tmp_path, progress=False)
    out = tmp_path / "results" / "unit-tiny"
    assert (out / "config.json").is_file()  # the failed call left its config behind ...
    write_scientific(tmp_path / "raw")
    fixed = tiny(data={"dataset": "scientific", "raw_dir": str(tmp_path / "raw")})
    result = run_pipeline(fixed, out=tmp_path, progress=False)  # ... which does not block the retry
    assert result["dataset"]["name"] == "scientific" and set(result["methods"]) == {"mostpop", "id_translation"}
    # once stages exist, another configuration is refused as before
    fixed["sasrec"]["hidden"] = 32
    with pytest.raises(ValueError, match="different configuration"):
        run_pipeline(fixed, out=tmp_path, progress=False)


def test_without_matplotlib_the_report_is_written_without_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr("rarec_lite.pipeline._matplotlib_available", lambda: False)
    run_pipeline(tiny(methods={"run": ["mostpop"]}), out=tmp_path, progress=False)
    out = tmp_path / "results" / "unit-tiny"
    assert "| MostPop |" in (out / "report.md").read_text() and not (out / "figures").exists()
    assert "figures are skipped" in capsys.readouterr().out


def test_cli_pipeline_dataset_flag(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('name = "clitiny"\n[data]\ndataset = "toy"\n[sasrec]\nhidden = 16\nepochs = 1\nnum_layers = 1\n'
                   '[eval]\nnum_users = 20\nbootstrap_resamples = 10\n[methods]\nrun = ["mostpop"]\n')
    monkeypatch.setenv("RAREC_MIRROR", str(tmp_path / "mirror"))
    write_scientific(tmp_path / "mirror" / "amazon_scientific")
    assert cli.main(["pipeline", "--config", str(cfg), "--out", str(tmp_path), "--dataset", "scientific"]) == 0
    assert f"{tmp_path}/results/clitiny-scientific/metrics.json" in capsys.readouterr().out
    assert cli.main(["pipeline", "--config", str(cfg), "--out", str(tmp_path), "--dataset", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
