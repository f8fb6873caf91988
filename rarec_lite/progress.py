"""Progress bars that read right both live and in a saved notebook.

``tqdm.auto`` draws an ipywidgets bar inside a Jupyter kernel. A saved notebook (papermill,
nbconvert, or a notebook saved without its widget state) keeps only that widget's first frame,
``0%|          | 0/360``, which reads as a stall. So inside a kernel the course draws **text**
bars, each in one display output that every new frame replaces (``update_display_data``, which
JupyterLab, Colab and nbclient/papermill all apply): a live front end shows the bar moving, and
the saved notebook holds exactly its last frame, ``100%|##########| 360/360``. It is a plain-text
display, not stderr, so JupyterLab does not paint it as a red error box. Outside a kernel (a
terminal, the CLI) this is plain ``tqdm`` on stderr.

Every progress bar of the package comes from :func:`tqdm` here.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm as _text_tqdm


class _DisplayLine:
    """A file-like sink for one tqdm bar inside a kernel: each frame tqdm writes (``"\\r" + frame``)
    replaces the previous one in a single ``text/plain`` display output; a cleared bar
    (``leave=False``) leaves an empty output, not a stale frame."""

    def __init__(self):
        self._handle = None
        self._last = None

    def write(self, text: str) -> int:
        if "\r" not in text and not text.strip():  # the newline tqdm adds after its last frame
            return len(text)
        frame = text.split("\r")[-1].rstrip("\n")
        if not frame.strip():  # "\r" + spaces: a leave=False bar clearing itself
            frame = ""
        if frame != self._last and (self._handle is not None or frame):
            from IPython.display import display

            data = {"text/plain": frame}
            if self._handle is None:
                self._handle = display(data, raw=True, display_id=True)
            else:
                self._handle.update(data, raw=True)
            self._last = frame
        return len(text)

    def flush(self) -> None:
        pass


def in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel, live or driven by papermill/nbconvert."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def tqdm(*args, **kwargs) -> _text_tqdm:
    """A ``tqdm`` bar (same arguments): in a kernel a text bar in one self-replacing display output,
    elsewhere on stderr.

    In a kernel it redraws at most once a second (``mininterval=1``: fewer messages to the front
    end) with ``ascii`` bars (``#``), which every front end draws alike.
    """
    if in_kernel() and "file" not in kwargs:
        kwargs["file"] = _DisplayLine()
        kwargs.setdefault("mininterval", 1.0)
        kwargs.setdefault("ascii", True)
    return _text_tqdm(*args, **kwargs)


def library_bars_off_in_kernel() -> bool:
    """Inside a kernel, switch off the ``transformers`` progress bars ("Loading weights", "Writing model
    shards"): they are ``tqdm.auto`` widgets that a saved notebook keeps at 0%, for loads that take
    seconds. Outside a kernel nothing changes. Returns True when they were switched off.
    (Hub *downloads* keep their ``huggingface_hub`` bars: they matter live, on Colab.)"""
    if not in_kernel():
        return False
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return True
