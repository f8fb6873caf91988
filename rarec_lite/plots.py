"""Course figures: one function per picture, each returning the matplotlib ``Axes`` it drew on.

Every function takes plain numbers (lists / numpy arrays / dicts), never a model, so a figure can
be redrawn from a saved ``metrics.json``. Pass ``ax=`` to draw into an existing subplot; without it
a new figure is made. Nothing is shown or saved here: the notebook (or
:func:`save`) decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

PALETTE = {
    "instruction": "#4C72B0",
    "id": "#DD8452",
    "text": "#BBBBBB",
    "window": "#C44E52",
}


def _axes(ax, figsize=(6, 4)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def save(ax, path: str | Path, dpi: int = 120) -> Path:
    """Save the figure holding ``ax`` to ``path`` atomically (PNG/SVG/PDF by suffix)."""
    from rarec_lite.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        ax.figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return path


def sequence_length_hist(lengths: Sequence[int], ax=None, bins: int = 40):
    """Histogram of user sequence lengths (interactions per user), log-scaled counts.

    Args:
        lengths: (U,) interactions per user.
    """
    ax = _axes(ax)
    lengths = np.asarray(lengths)
    ax.hist(lengths, bins=bins, color="#4C72B0")
    ax.set_yscale("log")
    ax.axvline(np.mean(lengths), color="k", ls="--", lw=1, label=f"mean {np.mean(lengths):.2f}")
    ax.axvline(np.median(lengths), color="#C44E52", ls=":", lw=1.5, label=f"median {np.median(lengths):.0f}")
    ax.set_xlabel("interactions per user")
    ax.set_ylabel("users (log scale)")
    ax.set_title(f"Sequence lengths ({len(lengths):,} users)")
    ax.legend()
    return ax


def popularity_long_tail(item_counts: Sequence[int], ax=None):
    """Item popularity against popularity rank on log-log axes (the long tail).

    Args:
        item_counts: (I,) interactions per item (any order; sorted here, most popular first).
    """
    ax = _axes(ax)
    counts = np.sort(np.asarray(item_counts))[::-1]
    ranks = np.arange(1, len(counts) + 1)
    ax.loglog(ranks, counts, color="#4C72B0")
    total = counts.sum()
    top = max(1, len(counts) // 5)
    share = counts[:top].sum() / total if total else 0.0
    ax.axvline(top, color="#C44E52", ls="--", lw=1)
    ax.text(top, counts.max(), f" top 20% of items:\n {share:.0%} of interactions", va="top", fontsize=9)
    ax.set_xlabel("item popularity rank")
    ax.set_ylabel("interactions")
    ax.set_title("Popularity long tail (log-log)")
    return ax


def memory_per_precision(bytes_by_precision: Mapping[str, float], ax=None, title: str = "Weight memory"):
    """Bar chart of model weight memory per precision, in MiB (2**20 bytes).

    Args:
        bytes_by_precision: e.g. ``{"fp32": 5.4e8, "bf16": 2.7e8, "int8": ..., "nf4": ...}`` (bytes).
    """
    ax = _axes(ax)
    names = list(bytes_by_precision)
    mib = [bytes_by_precision[n] / 2**20 for n in names]
    bars = ax.bar(names, mib, color=["#4C72B0", "#55A868", "#DD8452", "#C44E52", "#8172B3"][: len(names)])
    for bar, v in zip(bars, mib):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:,.0f}" if v >= 10 else f"{v:.2f}", ha="center",
                va="bottom", fontsize=9)
    ax.set_ylabel("MiB")
    ax.set_title(title)
    return ax


def tokens_vs_history(history_lengths: Sequence[int], token_counts: Sequence[float], context_window: int,
                      ax=None, label: str = "ID Translation prompt", logy: bool = False):
    """Prompt length (tokens) against history length (items), with the context window as a line.

    Args:
        history_lengths: (N,) number of history items.
        token_counts: (N,) tokens the full prompt needs for that history.
        context_window: the model's maximum positions (tokens).
        logy: log-scaled token axis, for prompts far shorter than the window (on a linear axis an
            8,192-token window flattens a 50-token curve).
    """
    ax = _axes(ax)
    x = np.asarray(history_lengths)
    y = np.asarray(token_counts, dtype=float)
    ax.plot(x, y, marker="o", ms=3, label=label)
    ax.axhline(context_window, color=PALETTE["window"], ls="--", label=f"context window ({context_window:,})")
    over = np.nonzero(y > context_window)[0]
    if len(over):
        ax.axvline(x[over[0]], color=PALETTE["window"], ls=":", lw=1)
        ax.text(x[over[0]], context_window, f" overflows at {x[over[0]]} items", va="bottom", fontsize=9)
    ax.set_xlabel("history length (items)")
    ax.set_ylabel("prompt tokens" + (" (log scale)" if logy else ""))
    if logy:
        ax.set_yscale("log")
    ax.set_title("Prompt length against history length")
    ax.legend()
    return ax


def loss_panels(curves: Mapping[str, Sequence[float]], references: Mapping[str, Mapping[str, float]] | None = None,
                smooth: int = 1, xlabel: str = "step", axes=None):
    """One panel per loss, each on its own y-axis: the raw per-step values (faint), their running mean
    over ``smooth`` steps, and horizontal reference lines, all named in the panel's legend.

    Two losses of different size on one axis hide each other's movement (BPR near 0.6 and InfoNCE
    near 2.8 nats: a fall of 0.01 is invisible); separate panels and a reference (e.g. BPR's
    ``ln 2`` when every score is equal, InfoNCE's ``ln B`` when the soft prompt tells nobody apart)
    show whether a curve falls and from where.

    Args:
        curves: ``{name: one value per step}`` (nats; any iterable of numbers, e.g. a list or a
            1-D tensor).
        references: ``{name: {label: y}}``, drawn as dashed lines in the panel of curve ``name``.
        smooth: running-mean window in steps (1 = none); the legend gives the first and last mean.
            A window longer than the curve draws no mean.
        axes: draw into these ``Axes``, one per curve in order (e.g. a row of a larger figure);
            ``None``: a new figure with one row of panels.

    Returns:
        The array of panels' ``Axes`` (one per curve, left to right).

    Raises:
        ValueError: ``curves`` is empty or not a mapping, a curve is empty, not 1-D or has a
            non-finite value (the step is named: a diverged run), ``smooth`` is not an integer
            >= 1, ``references`` names a curve that is not there or is not ``{label: y}``, or
            ``axes`` does not hold one ``Axes`` per curve. Nothing is drawn then.
    """
    import matplotlib.pyplot as plt

    if not isinstance(curves, Mapping) or not curves:
        raise ValueError(f"loss_panels: curves must be a non-empty {{name: values}} mapping; got {type(curves).__name__}")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)) or smooth < 1:
        raise ValueError(f"loss_panels: smooth must be an integer >= 1 (steps); got {smooth!r}")
    data = {}
    for name, values in curves.items():
        if hasattr(values, "detach"):  # a torch tensor
            values = values.detach().cpu().numpy()
        y = np.asarray(list(values) if not hasattr(values, "__len__") else values, dtype=float)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"loss_panels: curve {name!r} must be a non-empty 1-D sequence of numbers; "
                             f"got shape {y.shape}")
        bad = np.flatnonzero(~np.isfinite(y))
        if bad.size:
            raise ValueError(f"loss_panels: curve {name!r} is not finite at step(s) "
                             f"{', '.join(str(int(i) + 1) for i in bad[:5])}{' ...' if bad.size > 5 else ''} "
                             f"(a diverged run?)")
        data[name] = y
    refs = dict(references or {})
    for name, lines in refs.items():
        if name not in data:
            raise ValueError(f"loss_panels: references name {name!r}, which is not a curve ({', '.join(map(repr, data))})")
        if not isinstance(lines, Mapping):
            raise ValueError(f"loss_panels: references[{name!r}] must be {{label: y}}; got {lines!r}")
    if axes is None:
        fig, grid = plt.subplots(1, len(data), figsize=(4.6 * len(data), 3.4), squeeze=False)
        axes = grid[0]
    elif len(axes) != len(data):
        raise ValueError(f"loss_panels: {len(data)} curve(s) need as many axes; got {len(axes)}")
    for ax, (name, y) in zip(axes, data.items()):
        smoothed = 1 < smooth <= len(y)  # without a running mean the per-step line is the only one: drawn solid
        ax.plot(np.arange(1, len(y) + 1), y, color="#4C72B0", alpha=0.3 if smoothed else 1.0, lw=0.8 if smoothed else 1.5,
                marker="." if len(y) < 3 else None, label="per step")
        if smoothed:
            s = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            x = np.arange(smooth, smooth + len(s))
            ax.plot(x, s, color="#4C72B0", lw=2, label=f"mean of {smooth} steps: {s[0]:.3f} -> {s[-1]:.3f}")
        for label_, value in refs.get(name, {}).items():
            ax.axhline(float(value), color="#C44E52", ls="--", lw=1, label=str(label_))
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("nats")
        # the legend goes under the panel, so it never hides a curve or a reference line
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    axes[0].figure.tight_layout()
    return np.asarray(axes)


def loss_references(rank_loss: str, batch_size: int) -> dict[str, dict[str, float]]:
    """The reference lines of :func:`loss_panels` for the alignment's two losses, keyed ``"bpr"`` and
    ``"infonce"`` as the trainer's history is: BPR's ``ln 2`` (every score equal; only for
    ``rank_loss="bpr"``) and InfoNCE's ``ln B`` for a batch of ``B`` (every in-batch candidate
    equally likely: a soft prompt that tells nobody apart)."""
    refs = {"infonce": {f"ln B = {np.log(batch_size):.2f}: nobody told apart": float(np.log(batch_size))}}
    if rank_loss == "bpr":
        refs["bpr"] = {"ln 2: every score equal": float(np.log(2))}
    return refs


def metric_bars(table: Mapping[str, Mapping[str, float | Sequence[float]]], metrics: Sequence[str] = ("HR@10", "NDCG@10"),
                ax=None):
    """Grouped bars of metrics per model, with confidence-interval error bars.

    Args:
        table: ``{model: {metric: value or (value, ci_low, ci_high)}}``; a bare value draws no bar.
        metrics: which metrics to draw (one group per model, one bar per metric).
    """
    ax = _axes(ax, figsize=(max(6, 1.4 * len(table)), 4))
    models = list(table)
    width = 0.8 / max(1, len(metrics))
    x = np.arange(len(models))
    for m_i, metric in enumerate(metrics):
        vals, lo, hi = [], [], []
        for model in models:
            v = table[model].get(metric, np.nan)
            if isinstance(v, (tuple, list)):
                mean, low, high = v
            else:
                mean, low, high = v, v, v
            vals.append(mean)
            lo.append(mean - low)
            hi.append(high - mean)
        ax.bar(x + (m_i - (len(metrics) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3, label=metric)
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=20, ha="right")
    ax.set_ylabel("score (full ranking)")
    ax.set_title("Test metrics with 95% CI")
    ax.legend()
    return ax


def soft_prompt_slots(num_layers: int, num_instruction: int, num_id: int, num_text: int, ax=None,
                      max_text: int = 12, max_layers: int = 8):
    """Diagram of what each layer attends to: instruction slots, ID slots, then the text tokens.

    Rows are layers (at most ``max_layers`` drawn: the first ones and the last, with a gap),
    columns are positions. In RA-Rec each layer has its own prefix (layer-specific soft prompt);
    ID Direct / ID Translation have ``num_instruction = num_id = 0``.
    """
    from matplotlib.patches import Patch, Rectangle

    ax = _axes(ax, figsize=(8, 0.45 * min(num_layers, max_layers) + 1.2))
    shown_text = min(num_text, max_text)
    cols = num_instruction + num_id + shown_text + (1 if num_text > shown_text else 0)
    if num_layers <= max_layers:
        layers = list(range(num_layers))
    else:
        layers = list(range(max_layers - 1)) + [num_layers - 1]
    for row, layer in enumerate(layers):
        y = len(layers) - 1 - row
        kinds = ["instruction"] * num_instruction + ["id"] * num_id + ["text"] * shown_text
        for c, kind in enumerate(kinds):
            ax.add_patch(Rectangle((c, y), 0.9, 0.8, color=PALETTE[kind]))
        if num_text > shown_text:
            ax.text(len(kinds) + 0.1, y + 0.4, f"+{num_text - shown_text}", va="center", fontsize=8)
        label = f"layer {layer}"
        if num_layers > max_layers and row == len(layers) - 2:
            label += "  ⋮"
        ax.text(-0.3, y + 0.4, label, ha="right", va="center", fontsize=8)
    ax.set_xlim(-3.5, cols + 1)
    ax.set_ylim(-0.3, len(layers) + 0.2)
    ax.axis("off")
    ax.legend(handles=[Patch(color=PALETTE["instruction"], label=f"instruction slots ({num_instruction})"),
                       Patch(color=PALETTE["id"], label=f"ID slots ({num_id})"),
                       Patch(color=PALETTE["text"], label=f"text tokens ({num_text})")],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8, frameon=False)
    ax.set_title(f"Soft-prompt slots per layer ({num_layers} layers)")
    return ax


def pca_2d(embeddings) -> np.ndarray:
    """Project rows of ``embeddings`` (N, d) on their first two principal components: (N, 2).

    Centred SVD; signs are fixed so that the largest-magnitude loading of each component is positive.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return x @ (comps * signs[:, None]).T


def embedding_map(embeddings, labels: Sequence[str], ax=None, top: int = 8, max_points: int = 5000, seed: int = 0):
    """2-D PCA scatter of item embeddings coloured by a label (e.g. the item's top category).

    Args:
        embeddings: (I, d) item vectors.
        labels: (I,) one label per item; the ``top`` most frequent are coloured, the rest grey.
    """
    ax = _axes(ax, figsize=(6, 5))
    emb = np.asarray(embeddings)
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(emb)) if len(emb) <= max_points else rng.choice(len(emb), max_points, replace=False)
    xy = pca_2d(emb)[idx]
    lab = labels[idx]
    values, counts = np.unique(lab, return_counts=True)
    keep = [v for v, _ in sorted(zip(values, counts), key=lambda t: -t[1])[:top]]
    other = ~np.isin(lab, keep)
    ax.scatter(xy[other, 0], xy[other, 1], s=3, c="#DDDDDD", label="other")
    for v in keep:
        m = lab == v
        ax.scatter(xy[m, 0], xy[m, 1], s=4, label=str(v)[:28])
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("Item embeddings (2-D PCA)")
    ax.legend(fontsize=7, markerscale=3, loc="best")
    return ax
