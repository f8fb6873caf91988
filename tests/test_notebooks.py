"""The course notebooks: committed clean, each with a Colab badge and a papermill `parameters`
cell, every one runs top to bottom in quick mode, and every solution passes its check.

Execution uses papermill with the ``python3`` kernel, which jupyter_client starts with the
interpreter running these tests (``sys.executable``: the .venv), so no kernelspec has to be
installed by hand.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
NB_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = NB_DIR / "solutions"
COLAB = "https://colab.research.google.com/github/rarec-lite/rarec-lite/blob/main/notebooks/{}"


def test_there_are_notebooks():
    names = [p.stem[:2] for p in NOTEBOOKS]
    assert names == [f"{i:02d}" for i in range(9)], names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_clean_with_badge_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert COLAB.format(path.name) in nb.cells[0].source, f"{path.name}: first cell lacks the Open-in-Colab badge"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert tagged[0].source.splitlines()[0].startswith("quick = False")
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert 'if "google.colab" in sys.modules' in first_code.source and "detect_hardware" in first_code.source
    pip_lines = [ln for ln in first_code.source.splitlines() if "pip" in ln]
    assert pip_lines and not any("torch" in ln for ln in pip_lines), \
        f"{path.name}: the Colab install must not pin or install torch"


def test_builder_is_in_step_with_the_notebooks(tmp_path, monkeypatch):
    """notebooks/_build.py writes exactly the committed notebooks (the builder is the reference copy)."""
    from conftest import load_file_module

    mod = load_file_module(NB_DIR / "_build.py", "nb_build")
    monkeypatch.setattr(mod, "HERE", tmp_path)
    for built in mod.build():
        committed = NB_DIR / built.name
        assert built.read_text() == committed.read_text(), f"{built.name} differs from notebooks/_build.py: rebuild"


# ------------------------------------------------------------------------------ solutions


def _exec(name: str, namespace: dict) -> dict:
    code = (SOLUTIONS / name).read_text()
    exec(compile(code, str(SOLUTIONS / name), "exec"), namespace)  # our own solution files, not data
    return namespace


@pytest.fixture(scope="module")
def tokenizer():
    from rarec_lite.llm import _byte_level_tokenizer

    return _byte_level_tokenizer("llama")


def test_solutions_pass_their_checks(tokenizer, capsys):
    from types import SimpleNamespace

    from rarec_lite import exercises, prompts

    ns = _exec("00_01_leave_one_out.py", {})
    assert exercises.check_leave_one_out(ns["leave_one_out"])
    ns = _exec("02_id_encoder.py", {})
    assert exercises.check_hr_at_k(ns["hr_at_k"]) and exercises.check_ndcg_at_k(ns["ndcg_at_k"])
    info = SimpleNamespace(num_parameters=134_515_008, hidden_size=576)
    ns = _exec("03_llm_4bit.py", {"info": info})
    assert exercises.check_memory_estimate(ns["nf4_mib"], info.num_parameters, bits=4)
    ns = _exec("04_id_direct.py", {})
    assert exercises.check_token_count(ns["count_tokens"], tokenizer)
    chain = [f"Brand{i} — Women > Shoes > Sandals" for i in range(40)]
    bb = SimpleNamespace(tokenizer=tokenizer)
    ns = _exec("05_id_translation.py", {"chain": chain, "window": 300, "prompts": prompts, "bb": bb})
    assert exercises.check_overflow_length(ns["first_overflow"], ns["token_counts"], 300)
    ns = _exec("06_rarec_alignment.py", {"n_instr": 2, "n_id": 1, "info": info})
    assert exercises.check_prefix_shape(ns["prefix_shape"], 8, 2, 1, 576)
    assert exercises.check_bpr_loss(ns["bpr"]) and exercises.check_info_nce(ns["info_nce"])
    ns = _exec("07_evaluation.py", {})
    assert exercises.check_paired_verdict(ns["verdict"])
    histories = [chain[:n] for n in (1, 30, 0)]  # needs 118, ~1,190, 81 tokens: only user 1 overflows 120
    prompt_of = lambda u: prompts.id_translation_user(histories[u], tokenizer, 120)  # noqa: E731
    ns = _exec("08_prompt_inspector.py", {"prompt_of": prompt_of, "ds": SimpleNamespace(num_users=3)})
    assert ns["overflowing_user"] == 1
    assert exercises.check_overflowing_user(ns["overflowing_user"], prompt_of, 3)
    assert exercises.check_what_rarec_keeps(ns["rarec_keeps"])
    assert capsys.readouterr().out.count("Correct!") == 12


# ------------------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """One RAREC_HOME for the whole run (data prepared once, SASRec of 02 reused by 06/08), and
    the real Clothing mirror when it exists (else the notebooks fall back to the toy data)."""
    home = tmp_path_factory.mktemp("nb_home")
    env = {"RAREC_HOME": str(home), "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    shared = REPO.parent / "shared" / "data"
    if (shared / "amazon_cloth" / "user_sequence.txt").exists():
        env["RAREC_MIRROR"] = str(shared)
    return env


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, notebook_env, monkeypatch, tmp_path):
    papermill = pytest.importorskip("papermill")
    for key, value in notebook_env.items():
        monkeypatch.setenv(key, value)
    if "RAREC_MIRROR" not in notebook_env:
        monkeypatch.delenv("RAREC_MIRROR", raising=False)
    out = tmp_path / path.name
    start = time.time()
    papermill.execute_notebook(str(path), str(out), parameters={"quick": True}, kernel_name="python3",
                               cwd=str(NB_DIR), progress_bar=False, execution_timeout=600)
    nb = nbformat.read(out, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream")
    # quick mode really was used, and the exercises ran their checks (untouched: "To do", never "Not yet")
    assert "QUICK mode" in text
    if "exercises.check_" in "".join(c.source for c in nb.cells):
        assert "] To do: " in text and "Not yet" not in text
    assert "data source: " in text  # where the data came from is printed
    # saved progress bars: text on stdout that ends finished, never a widget frozen at its first frame
    widgets = [o for c in nb.cells for o in c.get("outputs", []) if "application/vnd.jupyter.widget-view+json"
               in o.get("data", {}) and "%|" in o.get("data", {}).get("text/plain", "")]
    assert not widgets, f"{path.name}: a widget progress bar was saved: {widgets[0]['data']['text/plain']!r}"
    texts = [o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", "")
             for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    bars = [seg for t in texts for line in t.split("\n") for seg in [line.split("\r")[-1]] if "%|" in seg]
    counts = [re.search(r"\| *(\d+)/(\d+) ", b) for b in bars]  # "...| 12/12 [00:01<...": done / total
    unfinished = [b for b, c in zip(bars, counts) if c and c.group(1) != c.group(2)]
    assert not unfinished, f"{path.name}: progress bars saved unfinished: {unfinished[:3]}"
    stderr = [o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert not any("kernels-community" in t for t in stderr), f"{path.name}: the unused bnb kernel message is back"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if path.stem not in ("00_setup",):
        assert images >= 1 or path.stem == "08_prompt_inspector", f"{path.name}: no figure was drawn"
    if path.stem == "08_prompt_inspector":
        widget = [o for c in nb.cells for o in c.get("outputs", [])
                  if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widget, "the inspector widget was not displayed"
        assert "== Prompt inspector: user" in text and "-- hard prompt:" in text
    print(f"{path.name}: {time.time() - start:.0f} s in quick mode")


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("stem", ["01_data", "05_id_translation"])
def test_notebook_runs_on_scientific_in_quick_mode(stem, shared_scientific_dir, monkeypatch, tmp_path):
    """`papermill -p dataset scientific`: the notebook runs on the Scientific titles and says so."""
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("RAREC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("RAREC_MIRROR", str(shared_scientific_dir.parent))
    out = tmp_path / f"{stem}.ipynb"
    papermill.execute_notebook(str(NB_DIR / f"{stem}.ipynb"), str(out), parameters={"quick": True, "dataset": "scientific"},
                               kernel_name="python3", cwd=str(NB_DIR), progress_bar=False, execution_timeout=600)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.output_type == "stream")
    assert "real Amazon Industrial & Scientific from" in text and "Clothing" not in text
    if stem == "01_data":
        assert "Amazon Industrial & Scientific (scientific): 300 users" in text
    else:
        assert "item prompts:" in text and "cut to 72" in text  # the main job's Scientific item budget
