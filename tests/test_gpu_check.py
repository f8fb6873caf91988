"""scripts/gpu_check.py in its tiny CPU mode: every stage runs, the numbers are what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_file_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    return load_file_module(REPO / "scripts" / "gpu_check.py", "gpu_check")


def test_tiny_mode_runs_every_stage_and_writes_the_report(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    report = gpu_check.main(["--tiny", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["stages"]
    assert [(r["stage"], r.get("precision")) for r in rows] == [
        ("load", "nf4"), ("forward", "nf4"), ("load", "fp32"), ("forward", "fp32"), ("pipeline", None)]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    load = {r["precision"]: r for r in rows if r["stage"] == "load"}
    assert load["nf4"]["weight_bytes"] < load["fp32"]["weight_bytes"] and load["fp32"]["layers"] == 2
    for r in (r for r in rows if r["stage"] == "forward"):
        # 4 prompts of the byte-level tokenizer: one token per UTF-8 byte + the BOS, padding not counted
        assert r["tokens_per_pass"] == sum(len(p.encode()) + 1 for p in gpu_check.PROMPTS)
        assert len(r["seconds_per_pass"]) == 2
        median = sorted(r["seconds_per_pass"])[0] / 2 + sorted(r["seconds_per_pass"])[1] / 2
        assert r["tokens_per_second"] == pytest.approx(r["tokens_per_pass"] / median)
    pipe = rows[-1]
    assert set(pipe["methods"]) == {"mostpop", "sasrec", "id_translation", "rarec"}
    assert pipe["settings"]["train"]["steps"] == pipe["rarec_train_steps"] == 2
    assert pipe["rarec_steps_per_second"] == pytest.approx(2 / pipe["methods"]["rarec"]["train_seconds"])
    assert all(r["peak_bytes"] is None for r in rows)  # CPU: no per-stage peak is claimed
    printed = capsys.readouterr().out
    assert "forward tiny-llama nf4" in printed and "tokens/s" in printed and f"written to {out}" in printed


def test_budget_skips_stages_and_says_so(gpu_check, tmp_path):
    report = gpu_check.main(["--tiny", "--budget-s", "0", "--out", str(tmp_path / "c.json")])
    assert {r["stage"] for r in report["stages"]} == {"load", "pipeline"}  # no model loaded: nothing to forward
    assert all(r["skipped"] == "time budget of 0.0 s spent" for r in report["stages"])


def test_without_a_gpu_the_full_check_refuses_clearly(gpu_check, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA GPU is visible; run with --tiny"):
        gpu_check.main(["--out", str(tmp_path / "c.json")])
