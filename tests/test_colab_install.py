"""Colab's first notebook cell, simulated: a fresh venv that already has a torch keeps it, and the
package installs and imports (scripts/colab_install_check.py; the git URL points at this checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_file_module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    return load_file_module(REPO / "scripts" / "colab_install_check.py", "colab_install_check")


def test_the_cell_is_the_committed_one_with_only_its_url_changed(check):
    cell = check.first_cell()
    assert 'if "google.colab" in sys.modules' in cell and "detect_hardware" in cell
    local = check.local_cell(cell, REPO)
    assert "git+https://" not in local and f"rarec-lite[course,offline-models] @ {REPO.as_uri()}" in local
    assert local.replace(REPO.as_uri(), "URL") == check.GIT_URL.sub("URL", cell)  # nothing else changed
    with pytest.raises(ValueError, match="nothing to simulate"):
        check.local_cell("import rarec_lite")


@pytest.mark.slow
def test_fresh_venv_with_torch_keeps_it_and_imports_the_package(check, tmp_path):
    """About 1-4 minutes (pip resolves and installs the course's dependencies into the venv)."""
    result = check.simulate(tmp_path / "venv", "torch==2.13.0")
    assert result["checks"] == {name: True for name in result["checks"]}, result["cell_stderr_tail"]
    assert result["torch_before"]["version"] == result["torch_after"]["version"] == "2.13.0+cpu"
    assert result["imported_from"].startswith(str(tmp_path / "venv"))
    assert result["version"].startswith("rarec-lite 0.")
