"""Shared fixtures: the real Clothing data when it exists, and an isolated RAREC_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CLOTH = REPO.parent / "shared" / "data" / "amazon_cloth"


def _shared_cloth() -> Path | None:
    """The real Clothing mirror: $RAREC_TEST_CLOTH, else ../shared/data/amazon_cloth."""
    env = os.environ.get("RAREC_TEST_CLOTH")
    path = Path(env) if env else SHARED_CLOTH
    return path if (path / "user_sequence.txt").exists() else None


@pytest.fixture(scope="session")
def shared_cloth_dir() -> Path:
    """Directory with the real 2014 Clothing 5-core (OpenP5 layout); skips if absent."""
    path = _shared_cloth()
    if path is None:
        pytest.skip(
            f"real Amazon Clothing data not found at {SHARED_CLOTH} "
            "(set RAREC_TEST_CLOTH to a directory holding user_sequence.txt)"
        )
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
