"""Where the course keeps what it downloads and computes.

Nothing here lives inside the git checkout. Two environment variables steer it:

``RAREC_HOME``
    Root of every cache (raw downloads, processed datasets, converted model weights,
    checkpoints). Default: ``~/.cache/rarec-lite``.
``RAREC_MIRROR``
    A local directory that replaces the internet for the raw data (a classroom mirror, or
    ``../shared/data`` on the course machines). Every command that needs raw data honours it;
    a ``--mirror``/``--raw-dir`` flag wins over it.
"""

from __future__ import annotations

import os
from pathlib import Path

DATASETS = ("cloth", "book")


def home() -> Path:
    """Root of all caches: ``$RAREC_HOME`` or ``~/.cache/rarec-lite`` (created on demand)."""
    root = Path(os.environ.get("RAREC_HOME") or Path.home() / ".cache" / "rarec-lite").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def mirror() -> Path | None:
    """The local raw-data mirror named by ``$RAREC_MIRROR``, or ``None``.

    Raises:
        FileNotFoundError: the variable is set but the directory does not exist.
    """
    value = os.environ.get("RAREC_MIRROR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"RAREC_MIRROR={value!r} is not a directory")
    return path


def raw_dir(dataset: str) -> Path:
    """Where ``data_download.sh`` puts the raw files of ``dataset`` by default."""
    return home() / "raw" / dataset


def processed_dir(dataset: str) -> Path:
    """Where ``rarec-lite prepare`` writes the processed dataset."""
    return home() / "processed" / dataset


def models_dir() -> Path:
    """Converted model weights (e.g. the SmolLM2 GGUF turned into safetensors)."""
    return home() / "models"


def runs_dir() -> Path:
    """Checkpoints of training runs (SASRec, alignment)."""
    return home() / "runs"
