"""Screenshot of the prompt inspector rendered in JupyterLab by headless Chromium.

    .venv/bin/python scripts/screenshot_inspector.py [--out PNG] [--full]

1. executes ``notebooks/08_prompt_inspector.ipynb`` (quick mode unless ``--full``) with papermill,
   which stores the widget state in the notebook, and signs (trusts) it;
2. starts JupyterLab on 127.0.0.1 with a random token, in private Jupyter config/data/runtime dirs;
3. starts Debian's ``chromium`` headless (``apt-get install -y chromium``) with a fresh profile,
   opens the notebook through the DevTools protocol (``websocket-client``), waits until the
   inspector's HTML view is rendered, scrolls to it and captures the page (PNG);
4. stops what it started (by process id) and prints where the PNG is.

Default output: ``$RAREC_HOME/screenshots/prompt_inspector.png`` (outside git). Needs no network:
everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "08_prompt_inspector.ipynb"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, what: str, proc: subprocess.Popen | None = None) -> bytes:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read()
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer at {url} within {timeout:.0f} s")


def execute_notebook(work: Path, full: bool, env: dict) -> Path:
    """Run notebook 08 with papermill into ``work`` (widget state stored), sign it; return its path."""
    import nbformat
    import papermill
    from nbformat.sign import NotebookNotary

    out = work / NOTEBOOK.name
    old = dict(os.environ)
    os.environ.update(env)
    try:
        papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"quick": not full}, kernel_name="python3",
                                   cwd=str(NOTEBOOK.parent), progress_bar=False)
        nb = nbformat.read(out, as_version=4)
        state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        if not state.get("state"):
            raise RuntimeError(f"{out}: papermill stored no widget state")
        NotebookNotary().sign(nb)
    finally:
        os.environ.clear()
        os.environ.update(old)
    nbformat.write(nb, out)
    return out


class DevTools:
    """The few Chrome DevTools protocol calls we need, over one websocket."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return res.get("result", {}).get("value")


FIND_VIEW = """(() => {
  const el = document.querySelector('.rarec-prompt');
  if (!el) return null;
  const box = el.closest('.widget-vbox') || el.closest('.jp-OutputArea-output') || el;
  box.scrollIntoView({block: 'start'});
  const r = box.getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height};
})()"""


@contextlib.contextmanager
def lab_and_browser(work: Path, jenv: dict, chromium: str, width: int, height: int):
    """JupyterLab (root ``work``, private Jupyter dirs ``jenv``) and headless Chromium on 127.0.0.1.

    Yields ``(dt, base, token)``: a :class:`DevTools` session on the page (size ``width`` x ``height``),
    the server's base URL and its token. On the way out stops both (by process id), prints the last
    lines of their logs when something failed, and deletes ``work``.
    """
    procs: list[subprocess.Popen] = []
    try:
        port, token = free_port(), secrets.token_hex(16)
        lab = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
             "--ServerApp.open_browser=False"] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
            env={**os.environ, **jenv}, stdout=open(work / "lab.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(lab)
        wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 60, "JupyterLab", lab)
        dport = free_port()
        chrome = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'chromium-profile'}",
             f"--remote-debugging-port={dport}", "--remote-allow-origins=*", f"--window-size={width},{height}",
             "about:blank"],
            stdout=open(work / "chromium.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(chrome)
        targets = json.loads(wait_http(f"http://127.0.0.1:{dport}/json/list", 60, "Chromium DevTools", chrome))
        dt = DevTools(next(t for t in targets if t.get("type") == "page")["webSocketDebuggerUrl"])
        dt.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        dt.call("Page.enable")
        yield dt, f"http://127.0.0.1:{port}", token
    except Exception:
        for log in ("lab.log", "chromium.log"):
            if (work / log).exists():
                print(f"--- last lines of {log}:\n" + "\n".join((work / log).read_text(errors="replace").splitlines()[-15:]),
                      file=sys.stderr)
        raise
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="PNG path (default: $RAREC_HOME/screenshots/prompt_inspector.png)")
    ap.add_argument("--full", action="store_true", help="execute the notebook in full mode (slow)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1500)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the widget to render")
    args = ap.parse_args(argv)

    from rarec_lite import paths

    out_png = args.out or paths.home() / "screenshots" / "prompt_inspector.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("screenshot_inspector: no chromium (Debian: apt-get update && apt-get install -y chromium)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rarec-shot-"))
    jenv = {"JUPYTER_CONFIG_DIR": str(work / "jconfig"), "JUPYTER_DATA_DIR": str(work / "jdata"),
            "JUPYTER_RUNTIME_DIR": str(work / "jruntime")}
    if "RAREC_MIRROR" not in os.environ and (REPO.parent / "shared" / "data" / "amazon_cloth").is_dir():
        jenv["RAREC_MIRROR"] = str(REPO.parent / "shared" / "data")
    print("executing notebook 08 with papermill ...", flush=True)
    try:
        nb_path = execute_notebook(work, args.full, jenv)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    with lab_and_browser(work, jenv, chromium, args.width, args.height) as (dt, base, token):
        url = f"{base}/lab/tree/{nb_path.name}?token={token}&reset"
        print("opening", url.replace(token, "<token>"), flush=True)
        dt.call("Page.navigate", url=url)
        deadline, box = time.time() + args.timeout, None
        while time.time() < deadline and not box:
            time.sleep(1.0)
            box = dt.js(FIND_VIEW)
        if not box:
            dt.call("Page.captureScreenshot", format="png")
            raise TimeoutError(f"the inspector did not render within {args.timeout:.0f} s (see {work / 'lab.log'})")
        # The widgets are restored from the state saved in the notebook; until a kernel re-creates
        # their models, JupyterLab marks each control with a "disconnected" icon. Hide that mark.
        dt.js("""(() => { const s = document.createElement('style');
          s.textContent = '.jupyter-widgets-disconnected::before { display: none !important; }';
          document.head.appendChild(s); })()""")
        time.sleep(2.0)  # let fonts and layout settle
        box = dt.js(FIND_VIEW)
        clip = {"x": max(0, box["x"] - 8), "y": max(0, box["y"] - 8), "width": min(args.width, box["width"] + 16),
                "height": min(args.height - max(0, box["y"] - 8), box["height"] + 16), "scale": 1}
        png = base64.b64decode(dt.call("Page.captureScreenshot", format="png", clip=clip)["data"])
        out_png.parent.mkdir(parents=True, exist_ok=True)
        from rarec_lite.files import atomic_write_bytes

        atomic_write_bytes(out_png, png)
        print(f"wrote {out_png} ({len(png) / 1024:.0f} KiB, {int(clip['width'])}x{int(clip['height'])} px)")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
