"""Where the course keeps what it downloads and computes.

Nothing here lives inside the git checkout. Two environment variables steer it:

``RAREC_HOME``
    Root of every cache (raw downloads, processed datasets, converted model weights,
    checkpoints). Default: ``~/.cache/rarec-lite``.
``RAREC_MIRROR``
    A local directory that replaces the internet for the raw data (a classroom mirror, or
    ``../shared/data`` on the course machines). Every command that needs raw data honours it;
    a ``--mirror``/``--raw-dir`` flag wins over it. A relative path is read from the working
    directory, and when nothing is there, from the repository root (so the README's
    ``RAREC_MIRROR=../shared/data`` also works from ``notebooks/``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATASETS = ("cloth", "book")
#: The checkout's root (``rarec_lite/..``): where relative ``$RAREC_MIRROR`` paths are also looked for.
REPO_ROOT = Path(__file__).resolve().parents[1]


def home() -> Path:
    """Root of all caches: ``$RAREC_HOME`` or ``~/.cache/rarec-lite`` (created on demand)."""
    root = Path(os.environ.get("RAREC_HOME") or Path.home() / ".cache" / "rarec-lite").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def mirror() -> Path | None:
    """The local raw-data mirror named by ``$RAREC_MIRROR`` (an absolute path), or ``None``.

    A relative value is taken from the working directory when it exists there, else from
    :data:`REPO_ROOT` (the README writes ``RAREC_MIRROR=../shared/data`` from the repository root,
    and a notebook runs in ``notebooks/``).

    Raises:
        FileNotFoundError: the variable is set but names no directory (both places are named).
    """
    value = os.environ.get("RAREC_MIRROR")
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        return path.resolve()
    if not path.is_absolute() and (REPO_ROOT / path).is_dir():
        return (REPO_ROOT / path).resolve()
    here, there = Path.cwd() / path, REPO_ROOT / path
    same = here.resolve() == there.resolve()
    tried = str(path) if path.is_absolute() else str(here) if same else f"neither {here} nor {there}"
    raise FileNotFoundError(f"RAREC_MIRROR={value!r} is not a directory ({tried})")


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
