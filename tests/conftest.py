"""Shared fixtures: the real Clothing and Scientific data when they exist, and an isolated RAREC_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CLOTH = REPO.parent / "shared" / "data" / "amazon_cloth"


def load_file_module(path: Path, name: str):
    """Import ``path`` (a script outside the package, e.g. ``scripts/gpu_check.py``) as module ``name``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mirrored(name: str) -> Path | None:
    """``$RAREC_MIRROR/<name>`` when the variable names a directory (as the README sets it), else None."""
    from rarec_lite import paths

    try:
        root = paths.mirror()
    except FileNotFoundError:
        return None
    return root / name if root is not None else None


def _shared_cloth() -> Path | None:
    """The real Clothing mirror: $RAREC_TEST_CLOTH, else $RAREC_MIRROR/amazon_cloth, else ../shared/data/amazon_cloth."""
    env = os.environ.get("RAREC_TEST_CLOTH")
    candidates = [Path(env)] if env else [p for p in (_mirrored("amazon_cloth"), SHARED_CLOTH) if p is not None]
    return next((p for p in candidates if (p / "user_sequence.txt").exists()), None)


@pytest.fixture(scope="session")
def shared_cloth_dir() -> Path:
    """Directory with the real 2014 Clothing 5-core (OpenP5 layout); skips if absent."""
    path = _shared_cloth()
    if path is None:
        pytest.skip(
            f"real Amazon Clothing data not found at {SHARED_CLOTH} or $RAREC_MIRROR/amazon_cloth "
            "(set RAREC_TEST_CLOTH to a directory holding user_sequence.txt)"
        )
    return path


SHARED_SCIENTIFIC = REPO.parent / "shared" / "data" / "amazon_scientific"


@pytest.fixture(scope="session")
def shared_scientific_dir() -> Path:
    """Directory with the real Amazon 2018 Industrial & Scientific 5-core (LC-Rec layout:
    Scientific.inter.json + Scientific.item.json): $RAREC_TEST_SCIENTIFIC, else $RAREC_MIRROR/amazon_scientific,
    else ../shared/data/amazon_scientific; skips if absent."""
    env = os.environ.get("RAREC_TEST_SCIENTIFIC")
    candidates = [Path(env)] if env else [p for p in (_mirrored("amazon_scientific"), SHARED_SCIENTIFIC) if p is not None]
    path = next((p for p in candidates if (p / "Scientific.inter.json").exists()), candidates[0])
    if not (path / "Scientific.inter.json").exists():
        pytest.skip(f"real Amazon Scientific data not found at {path} (set RAREC_TEST_SCIENTIFIC to a directory "
                    "holding Scientific.inter.json + Scientific.item.json)")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own RAREC_HOME so that no test reads another's cache by accident.

    Tests that want the shared, session-wide cache (real data, converted models) use
    the ``session_home`` fixture instead.
    """
    if os.environ.get("RAREC_TEST_KEEP_HOME"):
        return
    monkeypatch.setenv("RAREC_HOME", str(tmp_path_factory.mktemp("rarec_home")))
    monkeypatch.delenv("RAREC_MIRROR", raising=False)


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    """A RAREC_HOME shared by the whole test session (prepared real data, converted SmolLM2).

    Uses $RAREC_TEST_HOME when set, so repeated local runs reuse the converted weights.
    """
    env = os.environ.get("RAREC_TEST_HOME")
    path = Path(env) if env else tmp_path_factory.mktemp("session_home")
    path.mkdir(parents=True, exist_ok=True)
    return path


# ----------------------------------------------------------------- bitsandbytes as on an AVX512-BF16 CPU
def _amx_like_gemv_4bit(calls):
    """A stand-in for bnb's AMX/AVX512-BF16 4-bit kernel: same values, no gradient; raises (instead of
    SIGFPE) on an empty input."""
    import torch

    import copy

    import bitsandbytes.functional as bnbf

    def gemv_4bit(A, B, out=None, transposed_A=False, transposed_B=False, state=None):
        calls.append(tuple(A.shape))
        if A.numel() == 0:
            raise RuntimeError("zero-length input into a repacked 4-bit layer (SIGFPE on an AVX512-BF16 CPU)")
        assert state.packing_format_for_cpu
        qs = copy.deepcopy(state)
        w, qs = bnbf._convert_weight_packed_for_cpu_inverse(B.data.clone(), qs)
        with torch.no_grad():
            W = bnbf.dequantize_4bit(w, qs).to(torch.bfloat16)
            return (A.detach().to(torch.bfloat16) @ W.t()).to(A.dtype)

    return gemv_4bit


@pytest.fixture
def plain_cpu(monkeypatch):
    """bitsandbytes behaving as on a CPU without AVX512-BF16 (the other CPU family): its 4-bit layers are
    built with ``support_avx512bf16_for_cpu = False`` and never take the repacked kernel."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)


@pytest.fixture
def amx_cpu(monkeypatch):
    """bitsandbytes behaving as on an AVX512-BF16 CPU; yields the list of stand-in kernel calls."""
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as bnbf
    import bitsandbytes.nn.modules as bnb_modules

    calls = []
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    monkeypatch.setattr(bnbf, "gemv_4bit", _amx_like_gemv_4bit(calls))
    return calls
