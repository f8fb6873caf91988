"""Progress bars that read right both live and in a saved notebook.

``tqdm.auto`` draws an ipywidgets bar inside a Jupyter kernel. A saved notebook (papermill,
nbconvert, or a notebook saved without its widget state) keeps only that widget's first frame,
``0%|          | 0/360``, which reads as a stall. So inside a kernel the course draws **text**
bars on stdout instead: the front end redraws them in place (carriage returns), and the saved
output ends on the finished bar, ``100%|##########| 360/360``. On stdout, not stderr, so that
JupyterLab does not paint every bar as a red error box. Outside a kernel (a terminal, the CLI)
this is plain ``tqdm`` on stderr.

Every progress bar of the package comes from :func:`tqdm` here.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm as _text_tqdm


def in_kernel() -> bool:
    """True inside a Jupyter (IPython) kernel, live or driven by papermill/nbconvert."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def tqdm(*args, **kwargs) -> _text_tqdm:
    """A ``tqdm`` bar (same arguments): a text bar on stdout in a kernel, on stderr elsewhere.

    In a kernel it redraws at most once a second (``mininterval=1``) so a saved notebook does not
    keep thousands of frames, and ``ascii`` bars (``#``), which every front end draws alike.
    """
    if in_kernel():
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("mininterval", 1.0)
        kwargs.setdefault("ascii", True)
    return _text_tqdm(*args, **kwargs)
