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
    shell = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


def test_outside_a_kernel_bars_go_to_stderr(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not progress.in_kernel()
    for _ in progress.tqdm(range(3), desc="x", mininterval=0):
        pass
    out, err = capsys.readouterr()
    assert out == "" and "3/3" in err


def test_in_a_kernel_bars_are_text_on_stdout_and_end_at_100(fake_kernel, capsys):
    assert progress.in_kernel()
    for _ in progress.tqdm(range(5), desc="encode items", unit="batch"):
        pass
    out, err = capsys.readouterr()
    assert err == ""
    last = out.rstrip("\n").split("\r")[-1]  # what a front end shows: the last frame
    assert last.startswith("encode items: 100%|##########| 5/5"), repr(last)


def test_only_the_unused_bnb_kernel_message_is_dropped(caplog):
    import rarec_lite  # noqa: F401  (installs the filter)

    log = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger="bitsandbytes.backends.cpu.ops"):
        # bitsandbytes 0.50.2's own call, word for word (backends/cpu/ops.py)
        log.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already "
                    "`pip install kernels` and the kernels >= 0.11.1", ModuleNotFoundError("No module named 'kernels'"))
        log.warning("some other bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]
