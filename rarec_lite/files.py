"""Writing files so that nothing half-written is ever read: atomic writes and checkpoints.

Every file the course writes goes to a temporary name in the same directory and is then
moved into place with :func:`os.replace`, which is atomic on POSIX and Windows. A crash
leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The caller writes the temporary path with any library (pandas, safetensors, ...).
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the usual permissions (0666 less the
        # umask), so that a classroom's shared cache is readable by everyone, like any other file
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a malformed file raises ``ValueError`` naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from exc


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save a dict of tensors as safetensors, atomically.

    ``metadata`` (any JSON-serialisable dict: epoch, step, config, RNG seeds) is stored in
    the safetensors header under the key ``"rarec"`` and returned by :func:`load_checkpoint`.
    Tensors are made contiguous and moved to CPU first.
    """
    from safetensors.torch import save_file

    flat = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    header = {"rarec": json.dumps(metadata or {}, default=_json_default)}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=header)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`: ``(tensors, metadata)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable safetensors checkpoint (names the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=device) as fh:
            meta = fh.metadata() or {}
            for name in fh.keys():
                tensors[name] = fh.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    return tensors, json.loads(meta.get("rarec", "{}"))
