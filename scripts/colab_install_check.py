"""Simulate Colab's first notebook cell in a fresh virtual environment that already has a torch.

    python scripts/colab_install_check.py                 # a temporary venv, removed afterwards
    python scripts/colab_install_check.py --keep DIR      # keep the venv in DIR (reused when it exists)

Colab ships its own CUDA build of torch; the course's first cell (``notebooks/_build.py``'s ``SETUP``)
installs the package with ``pip`` and must leave that torch alone. This script:

1. creates a venv (``python -m venv``) and installs ``torch==<--torch>`` into it, standing in for
   Colab's preinstalled torch (here the CPU wheel on disk; on Colab it is a CUDA build);
2. runs the *committed* first cell of ``notebooks/00_setup.ipynb`` with that venv's Python, as Colab
   would: ``google.colab`` is faked so the cell's ``if "google.colab" in sys.modules`` branch installs,
   and the cell's ``git+https://github.com/...`` URL is replaced by this checkout (``file://``), the one
   change from the real cell. The cell then imports ``rarec_lite`` and calls ``detect_hardware()``;
3. checks that torch is byte-for-byte the one installed in step 1 (version, and the sha256 of its
   ``RECORD``, i.e. of every file pip put there), that ``rarec_lite`` is imported from the venv's
   ``site-packages`` (not from this checkout), that ``rarec-lite --version`` runs there, and that
   the packaged downloader (``rarec_lite/data_download.sh``) and configs were installed.

Prints one line per check and a JSON summary (``--json`` to write it); exits 1 when a check fails.
Needs the package index (dependencies are downloaded or taken from pip's cache): a few minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIT_URL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+")


def first_cell(notebook: Path = REPO / "notebooks" / "00_setup.ipynb") -> str:
    """The source of the notebook's first code cell (what a student runs first on Colab)."""
    nb = json.loads(notebook.read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    return "".join(cell["source"])


def local_cell(source: str, checkout: Path = REPO) -> str:
    """The cell with its git URL pointed at ``checkout``: ``... @ git+https://github.com/o/r`` ->
    ``... @ file:///path``.

    Raises:
        ValueError: the cell installs nothing from git (then there is nothing to simulate).
    """
    if not GIT_URL.search(source):
        raise ValueError("the first cell has no `git+https://github.com/...` install: nothing to simulate")
    return GIT_URL.sub(checkout.resolve().as_uri(), source)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _torch_fingerprint(python: Path) -> dict:
    code = ("import importlib.metadata as m, hashlib, json, torch; d = m.distribution('torch'); "
            "rec = d.read_text('RECORD') or ''; "
            "print(json.dumps({'version': torch.__version__, 'file': torch.__file__, "
            "'record_sha256': hashlib.sha256(rec.encode()).hexdigest()}))")
    proc = _run([str(python), "-c", code])
    if proc.returncode != 0:
        raise RuntimeError(f"torch does not import in the venv: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def simulate(venv: Path, torch_spec: str = "torch==2.13.0") -> dict:
    """Steps 1-3 of the module docstring in ``venv``. Returns ``{"checks": {name: bool}, ...}``."""
    t0 = time.perf_counter()
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip = [str(python), "-m", "pip", "install", "-q"]
    proc = _run(pip + [torch_spec], env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {torch_spec} failed: {proc.stderr.strip()[-800:]}")
    before = _torch_fingerprint(python)

    cell = local_cell(first_cell())
    driver = ("import sys, types\n"
              "sys.modules['google.colab'] = types.ModuleType('google.colab')  # what Colab has loaded\n"
              f"exec(compile({cell!r}, '00_setup first cell', 'exec'))\n"
              "import rarec_lite; print('IMPORTED_FROM', rarec_lite.__file__)\n")
    with tempfile.TemporaryDirectory() as home:  # a clean cache: the cell must not need anything of ours
        cell_env = {**env, "RAREC_HOME": home}
        cell_env.pop("RAREC_MIRROR", None)
        ran = _run([str(python), "-c", driver], env=cell_env, cwd=tempfile.gettempdir())
    after = _torch_fingerprint(python)
    imported = next((ln.split(" ", 1)[1] for ln in ran.stdout.splitlines() if ln.startswith("IMPORTED_FROM")), "")
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env).stdout.strip()
    version = _run([str(venv / "bin" / "rarec-lite"), "--version"], env=env) if (venv / "bin" / "rarec-lite").exists() \
        else None
    pkg = Path(imported).parent if imported else None
    checks = {
        "the first cell ran without error": ran.returncode == 0,
        "torch is untouched (same version and files)": before == after,
        "rarec_lite imports from the venv's site-packages": bool(imported) and imported.startswith(site),
        "rarec-lite --version runs": version is not None and version.returncode == 0
                                     and version.stdout.startswith("rarec-lite "),
        "the packaged downloader and configs are installed": pkg is not None
                                                             and (pkg / "data_download.sh").is_file()
                                                             and (pkg / "configs" / "gpu-t4.toml").is_file(),
        "detect_hardware() printed its choice": "device: " in ran.stdout,
    }
    return {"checks": checks, "torch_before": before, "torch_after": after, "imported_from": imported,
            "site_packages": site, "cell_stdout_tail": ran.stdout[-1500:], "cell_stderr_tail": ran.stderr[-1500:],
            "version": version.stdout.strip() if version is not None else None,
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", default=None, help="venv directory to create (or reuse) and keep")
    parser.add_argument("--torch", default="torch==2.13.0", help="the preinstalled torch, standing in for Colab's")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args(argv)
    tmp = None
    venv = Path(args.keep) if args.keep else Path(tmp := tempfile.mkdtemp(prefix="colab-venv-")) / "venv"
    try:
        result = simulate(venv, args.torch)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, ok in result["checks"].items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    print(f"torch {result['torch_after']['version']} kept; rarec_lite from {result['imported_from']}; "
          f"{result['seconds']:.0f} s")
    if not all(result["checks"].values()):
        print(result["cell_stderr_tail"], file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
