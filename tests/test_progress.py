"""Progress bars end finished in saved notebooks; one bitsandbytes message is silenced, nothing else."""

from __future__ import annotations

import logging
import sys
import types

import pytest

from rarec_lite import progress


@pytest.fixture
def fake_kernel(monkeypatch):
    """IPython as a Jupyter kernel sees it (papermill, nbconvert or a live front end)."""
    import IPython

    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def test_outside_a_kernel_bars_go_to_stderr(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress.in_kernel()
    for _ in progress.tqdm(range(3), desc="x", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert out == "" and "3/3" in err


@pytest.fixture
def displays(monkeypatch):
    """IPython's display() as a kernel would send it: each display output's successive contents."""
    import IPython.display

    shown = []

    class Handle:
        def __init__(self, k):
            self.k = k

        def update(self, data, raw=False):
            assert raw
            shown[self.k].append(data["text/plain"])

    def display(data, raw=False, display_id=None):
        assert raw and display_id is True
        shown.append([data["text/plain"]])
        return Handle(len(shown) - 1)

    monkeypatch.setattr(IPython.display, "display", display)
    return shown


def test_in_a_kernel_a_bar_is_one_display_that_ends_at_100(fake_kernel, displays, capsys):
    assert progress.in_kernel()
    for _ in progress.tqdm(range(5), desc="encode items", unit="batch", mininterval=0):
        pass
    assert capsys.readouterr() == ("", "")  # nothing on stdout or stderr (no red box)
    assert len(displays) == 1  # one output, updated in place: a saved notebook keeps its last frame
    assert displays[0][0].startswith("encode items:   0%|          | 0/5")
    assert displays[0][-1].startswith("encode items: 100%|##########| 5/5")


def test_in_a_kernel_a_bar_that_does_not_stay_leaves_an_empty_output(fake_kernel, displays):
    bar = progress.tqdm(total=4, desc="SASRec epoch 1", leave=False, mininterval=0)
    bar.update(3)
    bar.close()
    assert len(displays) == 1 and "3/4" in displays[0][-2] and displays[0][-1] == ""  # not a stale 75% frame


def test_only_the_unused_bnb_kernel_message_is_dropped(caplog):
    import rarec_lite  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        # bitsandbytes 0.50.2's own call, word for word (backends/cpu/ops.py)
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", ModuleNotFoundError("No module named 'kernels'"))
        log.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]


def test_transformers_bars_are_off_in_a_kernel_only(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    hf_logging.enable_progress_bar()
    try:
        assert progress.library_bars_off_in_kernel() is False and hf_logging.is_progress_bar_enabled()
        shell = types.SimpleNamespace(config={"IPKernelApp": {}})
        monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
        assert progress.library_bars_off_in_kernel() is True and not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
