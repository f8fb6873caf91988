"""Screenshots of executed course notebooks as a student sees them: JupyterLab in headless Chromium.

    .venv/bin/python scripts/screenshot_notebooks.py                 # 00, 04, 06 in full mode (slow on a CPU)
    .venv/bin/python scripts/screenshot_notebooks.py 00 04 --quick   # quick mode
    .venv/bin/python scripts/screenshot_notebooks.py --executed DIR  # already executed notebooks in DIR

1. executes each notebook with papermill (full mode unless ``--quick``; ``$RAREC_MIRROR`` or
   ``../shared/data`` as the notebooks find it) and signs it, unless ``--executed`` gives them;
2. starts JupyterLab on 127.0.0.1 (random token, private Jupyter dirs, the notebook's windowing turned
   off so every cell is rendered) and Debian's headless ``chromium`` (``apt-get install -y chromium``),
   driven through the DevTools protocol (the helpers of ``scripts/screenshot_inspector.py``);
3. opens each notebook, waits until every cell is rendered, counts what a student would doubt --
   red stderr boxes and progress bars that are not finished (``N/M`` with N < M) -- and captures the
   notebook page by page (``<out>/<notebook>-pK.png``);
4. writes ``<out>/summary.json`` (per notebook: pages, stderr boxes with their first line, unfinished
   bars) and prints it; exits 1 when a notebook has a stderr box or an unfinished bar.

Default output: ``$RAREC_HOME/screenshots/notebooks`` (outside git). Needs no network.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from screenshot_inspector import lab_and_browser  # noqa: E402

NB_DIR = REPO / "notebooks"

#: JavaScript shared by INSPECT and SCROLL: the element that scrolls a notebook.
_SCROLLER_OF = r"""  const scrollerOf = (nb) => {  // JupyterLab 4: the notebook's own outer panel scrolls; else an ancestor
    const outer = nb.querySelector('.jp-WindowedPanel-outer');
    if (outer && outer.scrollHeight > outer.clientHeight) return outer;
    let e = nb;
    while (e && !(e.scrollHeight > e.clientHeight + 1 && /(auto|scroll)/.test(getComputedStyle(e).overflowY))) {
      e = e.parentElement;
    }
    return e || document.scrollingElement;
  };
"""

#: What the page reports once a notebook is rendered: cells, stderr boxes, unfinished bars, scroll size.
INSPECT = r"""(() => {
""" + _SCROLLER_OF + r"""  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const cells = nb.querySelectorAll('.jp-Cell').length;
  const imgs = [...nb.querySelectorAll('img')];
  const stderr = [...nb.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')]
      .map(e => (e.innerText || '').split('\n')[0].slice(0, 200));
  const bars = [];
  for (const o of nb.querySelectorAll('.jp-OutputArea-output')) {
    for (const line of (o.innerText || '').split('\n')) {
      const m = line.match(/(\d+)%\|.*?\|\s*(\d+)\/(\d+)/);
      if (m && m[2] !== m[3]) bars.push(line.slice(0, 200));
    }
  }
  const scroller = scrollerOf(nb);
  return {cells, images: imgs.length, images_loaded: imgs.every(i => i.complete), stderr, bars,
          scroll_height: scroller.scrollHeight, client_height: scroller.clientHeight,
          scroller: scroller.className || scroller.tagName};
})()"""

SCROLL = r"""((y) => {
""" + _SCROLLER_OF + r"""  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  const scroller = scrollerOf(nb);
  scroller.scrollTop = y; return scroller.scrollTop;
})"""


def execute(names: list[str], work: Path, quick: bool, env: dict) -> list[Path]:
    """Run each notebook with papermill into ``work`` and sign it (trusted: its outputs render)."""
    import nbformat
    import papermill
    from nbformat.sign import NotebookNotary

    done = []
    old = dict(os.environ)
    os.environ.update(env)
    try:
        for name in names:
            src = next(NB_DIR.glob(f"{name}*.ipynb"))
            out = work / src.name
            t0 = time.time()
            print(f"executing {src.name} ({'quick' if quick else 'full'} mode) ...", flush=True)
            papermill.execute_notebook(str(src), str(out), parameters={"quick": quick}, kernel_name="python3",
                                       cwd=str(NB_DIR), progress_bar=False)
            nb = nbformat.read(out, as_version=4)
            NotebookNotary().sign(nb)
            nbformat.write(nb, out)
            print(f"  {time.time() - t0:.0f} s", flush=True)
            done.append(out)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", default=["00", "04", "06"], help="notebook number prefixes")
    ap.add_argument("--quick", action="store_true", help="execute in quick mode (default: full mode)")
    ap.add_argument("--executed", type=Path, default=None, help="use the executed notebooks in this directory")
    ap.add_argument("--out", type=Path, default=None, help="default: $RAREC_HOME/screenshots/notebooks")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1600, help="page height of one screenshot")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a notebook to render")
    args = ap.parse_args(argv)

    from rarec_lite import paths

    out_dir = args.out or paths.home() / "screenshots" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("screenshot_notebooks: no chromium (Debian: apt-get update && apt-get install -y chromium)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rarec-shots-"))
    jenv = {"JUPYTER_CONFIG_DIR": str(work / "jconfig"), "JUPYTER_DATA_DIR": str(work / "jdata"),
            "JUPYTER_RUNTIME_DIR": str(work / "jruntime")}
    # every cell rendered (JupyterLab 4 otherwise renders only the cells in view)
    settings = work / "jconfig" / "lab" / "user-settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = settings.parent / "apputils-extension"  # no "get notified about Jupyter news?" pop-up over the page
    news.mkdir()
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    summary = {}
    try:
        if args.executed:
            notebooks = []
            for n in args.names:
                found = sorted(args.executed.glob(f"{n}*.ipynb"))
                if not found:
                    raise SystemExit(f"--executed {args.executed}: no executed notebook {n}*.ipynb there "
                                     f"(name the ones it holds, e.g. `... --executed DIR 06`)")
                notebooks.append(found[0])
            for nb in notebooks:
                shutil.copy(nb, work / nb.name)
            notebooks = [work / nb.name for nb in notebooks]
        else:
            notebooks = execute(args.names, work, args.quick, jenv)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    with lab_and_browser(work, jenv, chromium, args.width, args.height) as (dt, base, token):
        for nb in notebooks:
            import nbformat

            n_cells = len(nbformat.read(nb, as_version=4).cells)
            # /doc/: JupyterLab's single-document mode, the notebook without the side panels
            dt.call("Page.navigate", url=f"{base}/doc/tree/{nb.name}?token={token}&reset")
            deadline, info = time.time() + args.timeout, None
            while time.time() < deadline:
                time.sleep(1.0)
                info = dt.js(INSPECT)
                if info and info["cells"] == n_cells and info["images_loaded"]:
                    break
            if not info or info["cells"] != n_cells:
                raise TimeoutError(f"{nb.name}: {info and info['cells']} of {n_cells} cells rendered in {args.timeout:.0f} s")
            time.sleep(2.0)  # fonts and layout
            info = dt.js(INSPECT)
            pages, y, last_top = [], 0, None
            while y < info["scroll_height"]:
                top = dt.js(f"{SCROLL}({y})")
                if top == last_top:  # the end was reached on the previous page
                    break
                last_top = top
                time.sleep(0.4)
                if os.environ.get("SHOTS_DEBUG"):
                    print(f"  scroll to {y}: at {top} of {info['scroll_height']} ({info['scroller']})", flush=True)
                png = base64.b64decode(dt.call("Page.captureScreenshot", format="png")["data"])
                path = out_dir / f"{nb.stem}-p{len(pages) + 1}.png"
                path.write_bytes(png)
                pages.append(str(path))
                y += max(info["client_height"] - 80, 200)  # a little overlap between pages
            summary[nb.stem] = {"cells": info["cells"], "images": info["images"], "stderr_boxes": info["stderr"],
                                "unfinished_bars": info["bars"], "pages": pages}
            print(f"{nb.stem}: {len(pages)} page(s), {len(info['stderr'])} stderr box(es), "
                  f"{len(info['bars'])} unfinished bar(s)", flush=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {out_dir / 'summary.json'}")
        bad = any(s["stderr_boxes"] or s["unfinished_bars"] for s in summary.values())
        return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
