"""The prompt inspector: see exactly what each paradigm feeds the LLM, and what it recommends.

Pick a user (from the list or by typing a reviewerID / user index), a paradigm (ID Direct,
ID Translation, RA-Rec hybrid) and a backbone, and the inspector shows

* the exact hard prompt and its token count against the budget (the context window),
* where the soft-prompt slots sit at each layer (RA-Rec: instruction slots, then ID slots, then
  the text tokens; the two hard-prompt paradigms have none),
* the user's history with item text, oldest first,
* the top-K recommendations with item text, the held-out test item marked.

Recommendations come from a *recommender* per paradigm: any callable ``user index -> ranked item
ids`` (best first; the full ranking or just its head). A tiny model in the tests, a trained
RA-Rec two-tower in full mode.

It is an ipywidgets app (JupyterLab, Jupyter Notebook, Colab: :meth:`PromptInspector.show`
switches on Colab's custom widget manager). Where widgets cannot be shown (no ipywidgets, or
no notebook front end), :meth:`PromptInspector.render_static` / ``repr()`` give the same content
as plain text.

Paradigms: RA-Rec (Yu et al. 2024, arXiv 2402.04527), Fig. 1 (ID direct usage, ID translation)
and its alignment module (hybrid hard prompt + layer-specific soft prompts).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rarec_lite import prompts

PARADIGMS = ("ID Direct", "ID Translation", "RA-Rec hybrid")
Recommender = Callable[[int], Sequence[int]]


@dataclass(frozen=True)
class BackboneSpec:
    """What the inspector needs to know about a backbone.

    Attributes:
        name: shown in the dropdown.
        tokenizer: a Hugging Face tokenizer (counts the prompt's tokens).
        num_layers: transformer layers (one soft prompt per layer in RA-Rec).
        context_window: maximum positions (tokens) the model reads.
    """

    name: str
    tokenizer: Any
    num_layers: int
    context_window: int

    @classmethod
    def from_backbone(cls, name: str, backbone: Any) -> "BackboneSpec":
        """From a :class:`rarec_lite.llm.Backbone` (uses ``.tokenizer`` and ``.info``)."""
        info = backbone.info
        return cls(name, backbone.tokenizer, int(info.num_layers), int(info.max_position))


@dataclass(frozen=True)
class InspectorView:
    """Everything the inspector shows for one (user, paradigm, backbone) choice.

    Attributes:
        user: user index; ``user_id``: the raw reviewerID.
        paradigm, backbone: the choices.
        prompt: the exact hard prompt (:class:`rarec_lite.prompts.PromptResult`).
        budget: the token budget applied (tokens).
        tokens: the prompt's tokens as strings (what the model reads, special tokens included).
        num_layers: layers of the backbone.
        num_instruction_slots, num_id_slots: soft-prompt slots per layer (0 unless RA-Rec).
        history: ``(item index, raw item id, item text)`` oldest first.
        target: held-out test item index; ``target_item``: ``(index, raw id, text)`` of it.
        topk: ``(rank from 1, item index, raw item id, item text, is_target)``.
        target_rank: 1-based rank of the target in the recommender's list, or ``None`` if absent.
        note: a message (e.g. no recommender for this paradigm).
    """

    user: int
    user_id: str
    paradigm: str
    backbone: str
    prompt: prompts.PromptResult
    budget: int
    tokens: list[str]
    num_layers: int
    num_instruction_slots: int
    num_id_slots: int
    history: list[tuple[int, str, str]]
    target: int
    target_item: tuple[int, str, str]
    topk: list[tuple[int, int, str, str, bool]]
    target_rank: int | None
    note: str = ""
    extra: dict = field(default_factory=dict)


class PromptInspector:
    """Interactive view of the prompts and recommendations of the three paradigms.

    Args:
        dataset: a :class:`rarec_lite.data.Dataset` (``user_ids``, ``item_ids``, ``item_text``,
            ``split()``).
        recommenders: ``{paradigm: callable(user index) -> ranked item ids}`` for any of
            :data:`PARADIGMS`; a paradigm without one still shows its prompt.
        backbones: ``{name: Backbone or BackboneSpec}``.
        split: a :class:`rarec_lite.data.LeaveOneOut` (default ``dataset.split()``); the
            inspector shows the test case: history ``test_history[u]``, target ``test_target[u]``.
        users: user indices offered in the list (default: the first 200).
        k: recommendations shown (top-K).
        budget: token budget of the hard prompt (default: the backbone's context window).
        k_recent: items written out in the RA-Rec hybrid prompt.
        num_instruction_tokens, num_id_tokens: soft-prompt slots per layer in RA-Rec.

    Raises:
        ValueError: an unknown paradigm name, no backbone, or an empty user list.
    """

    def __init__(self, dataset: Any, recommenders: Mapping[str, Recommender], backbones: Mapping[str, Any], *,
                 split: Any = None, users: Sequence[int] | None = None, k: int = 10, budget: int | None = None,
                 k_recent: int = 3, num_instruction_tokens: int = 2, num_id_tokens: int = 1):
        bad = sorted(set(recommenders) - set(PARADIGMS))
        if bad:
            raise ValueError(f"recommenders: unknown paradigm(s) {bad}; expected names from {PARADIGMS}")
        if not backbones:
            raise ValueError("backbones: give at least one {name: Backbone}")
        self.dataset = dataset
        self.split = split if split is not None else dataset.split()
        self.recommenders = dict(recommenders)
        self.backbones = {name: b if isinstance(b, BackboneSpec) else BackboneSpec.from_backbone(name, b)
                          for name, b in backbones.items()}
        n_users = len(dataset.user_ids)
        self.users = list(range(min(200, n_users))) if users is None else [int(u) for u in users]
        if not self.users:
            raise ValueError("users: the list of users to offer is empty")
        self.k = int(k)
        self.budget = budget
        self.k_recent = int(k_recent)
        self.num_instruction_tokens = int(num_instruction_tokens)
        self.num_id_tokens = int(num_id_tokens)
        self._index = {str(uid): u for u, uid in enumerate(dataset.user_ids)}
        self._widget = None
        self.state = {"user": self.users[0], "paradigm": PARADIGMS[2] if PARADIGMS[2] in self.recommenders
                      else next(iter(self.recommenders), PARADIGMS[0]),
                      "backbone": next(iter(self.backbones))}

    # ------------------------------------------------------------------ the model of the view
    def resolve_user(self, value: int | str) -> int:
        """A user index from an index (``12`` or ``"12"``) or a raw reviewerID.

        Raises:
            ValueError: no such user (the message names the value and the valid range).
        """
        n = len(self.dataset.user_ids)
        text = str(value).strip()
        if text in self._index:
            return self._index[text]
        if text.lstrip("-").isdigit():
            u = int(text)
            if 0 <= u < n:
                return u
            raise ValueError(f"user: index {u} is out of range 0..{n - 1}")
        raise ValueError(f"user: {text!r} is neither a reviewerID of {self.dataset.name!r} nor an index 0..{n - 1}")

    def _item(self, i: int) -> tuple[int, str, str]:
        return int(i), str(self.dataset.item_ids[i]), str(self.dataset.item_text[i])

    def view(self, user: int | str | None = None, paradigm: str | None = None, backbone: str | None = None,
             k: int | None = None) -> InspectorView:
        """Compute what the inspector shows (no widgets needed).

        Raises:
            ValueError: unknown user, paradigm or backbone.
        """
        u = self.resolve_user(self.state["user"] if user is None else user)
        paradigm = paradigm or self.state["paradigm"]
        if paradigm not in PARADIGMS:
            raise ValueError(f"paradigm: {paradigm!r} is not one of {PARADIGMS}")
        name = backbone or self.state["backbone"]
        if name not in self.backbones:
            raise ValueError(f"backbone: {name!r} is not one of {list(self.backbones)}")
        spec = self.backbones[name]
        k = self.k if k is None else int(k)
        history = [int(i) for i in self.split.test_history[u]]
        target = int(self.split.test_target[u])
        texts = [str(self.dataset.item_text[i]) for i in history]
        soft = paradigm == "RA-Rec hybrid"
        n_soft = self.num_instruction_tokens + self.num_id_tokens if soft else 0
        budget = int(self.budget if self.budget is not None else spec.context_window - n_soft)
        if paradigm == "ID Direct":
            result = prompts.id_direct_user(u, history, spec.tokenizer, budget)
        elif paradigm == "ID Translation":
            result = prompts.id_translation_user(texts, spec.tokenizer, budget)
        else:
            result = prompts.hybrid_user(texts, spec.tokenizer, self.k_recent, budget)
        ids = spec.tokenizer(result.text, add_special_tokens=True)["input_ids"]
        tokens = [str(t) for t in spec.tokenizer.convert_ids_to_tokens(ids)]
        note, topk, target_rank, extra = "", [], None, {}
        rec = self.recommenders.get(paradigm)
        if rec is None:
            note = f"no recommender given for {paradigm}: prompt only"
        else:
            ranked = [int(i) for i in rec(u)]
            target_rank = ranked.index(target) + 1 if target in ranked else None
            extra = {"ranked": len(ranked)}
            topk = [(r + 1, *self._item(i), i == target) for r, i in enumerate(ranked[:k])]
        return InspectorView(
            u, str(self.dataset.user_ids[u]), paradigm, name, result, budget, tokens, spec.num_layers,
            self.num_instruction_tokens if soft else 0, self.num_id_tokens if soft else 0,
            [self._item(i) for i in history], target, self._item(target), topk, target_rank, note, extra,
        )

    # ------------------------------------------------------------------ plain text
    @staticmethod
    def slot_rows(view: InspectorView, max_text: int = 16) -> list[tuple[int, str]]:
        """One row per layer: ``(layer, 'I I D | t t t ... +n')`` (layers > 6 are elided)."""
        n_text = len(view.tokens)
        shown = min(n_text, max_text)
        cells = ["I"] * view.num_instruction_slots + ["D"] * view.num_id_slots
        row = " ".join(cells) + (" | " if cells else "") + " ".join(["t"] * shown)
        if n_text > shown:
            row += f" +{n_text - shown}"
        layers = list(range(view.num_layers))
        if len(layers) > 6:
            layers = layers[:3] + [-1] + layers[-2:]
        return [(layer, row if layer >= 0 else "...") for layer in layers]

    @staticmethod
    def _cut_note(view: InspectorView, html_: bool) -> str:
        """What the budget (or the hybrid prompt's k most recent items) left out, or ""."""
        p = view.prompt
        if not p.truncated:
            return ""
        if view.paradigm == "RA-Rec hybrid" and (p.tokens_needed or 0) <= view.budget:
            note = (f"{p.items_kept} most recent of {p.items_total} items as text; the whole history enters "
                    "through the ID slots")
            return f" <i>({note})</i>" if html_ else f" | {note}"
        note = f"to {p.items_kept} of {p.items_total} items"
        return f" <span style='color:#C44E52'><b>truncated</b> {note}</span>" if html_ else f" | TRUNCATED {note}"

    @staticmethod
    def to_text(view: InspectorView) -> str:
        """The static (plain text) rendering of a view."""
        p = view.prompt
        lines = [
            f"== Prompt inspector: user {view.user} ({view.user_id}) | {view.paradigm} | backbone {view.backbone}",
            f"-- hard prompt: {p.tokens_kept} tokens (full history needs {p.tokens_needed}) "
            f"/ budget {view.budget}" + PromptInspector._cut_note(view, html_=False),
            p.text,
            f"-- soft-prompt slots per layer ({view.num_layers} layers): "
            f"{view.num_instruction_slots} instruction (I), {view.num_id_slots} ID (D), {len(view.tokens)} text tokens (t)",
        ]
        lines += [f"   {'layer ' + str(layer) if layer >= 0 else '':>9}  {row}" for layer, row in PromptInspector.slot_rows(view)]
        lines.append(f"-- history ({len(view.history)} items, oldest first)")
        lines += [f"   {n + 1:>3}. [{i}] {asin}  {text}" for n, (i, asin, text) in enumerate(view.history)]
        lines.append(f"-- held-out target: [{view.target}] {view.target_item[1]}  {view.target_item[2]}")
        if view.topk:
            where = (f"rank {view.target_rank}" if view.target_rank
                     else f"not in the recommender's top {view.extra.get('ranked', len(view.topk))}")
            lines.append(f"-- top-{len(view.topk)} recommendations (target: {where})")
            lines += [f"   {'*' if hit else ' '}{r:>3}. [{i}] {asin}  {text}" + ("   <- held-out target" if hit else "")
                      for r, i, asin, text, hit in view.topk]
        if view.note:
            lines.append(f"-- {view.note}")
        return "\n".join(lines)

    def render_static(self, user: int | str | None = None, paradigm: str | None = None,
                      backbone: str | None = None, k: int | None = None) -> str:
        """Plain-text rendering (the fallback where widgets are unavailable)."""
        return self.to_text(self.view(user, paradigm, backbone, k))

    def __repr__(self) -> str:
        try:
            return self.render_static()
        except Exception as exc:  # repr must not raise
            return f"<PromptInspector: {exc}>"

    # ------------------------------------------------------------------ HTML
    @staticmethod
    def to_html(view: InspectorView) -> str:
        """The HTML rendering of a view (what the widget shows)."""
        e = html.escape
        p = view.prompt
        colors = {"I": "#4C72B0", "D": "#DD8452", "t": "#BBBBBB"}
        pct = min(100, round(100 * (p.tokens_kept or 0) / max(1, view.budget)))
        over = (p.tokens_needed or 0) > view.budget
        bar_color = "#C44E52" if over else "#55A868"
        parts = [
            "<div style='font-family:sans-serif;font-size:13px;line-height:1.35'>",
            f"<h4 style='margin:4px 0'>User {view.user} <code>{e(view.user_id)}</code> · {e(view.paradigm)} · "
            f"{e(view.backbone)}</h4>",
            f"<b>Hard prompt</b>: {p.tokens_kept} tokens / budget {view.budget} "
            f"(full history needs {p.tokens_needed})"
            + PromptInspector._cut_note(view, html_=True),
            f"<div style='background:#eee;width:320px;height:8px'><div style='background:{bar_color};"
            f"width:{pct}%;height:8px'></div></div>",
            f"<pre class='rarec-prompt' style='white-space:pre-wrap;background:#f7f7f7;padding:6px;"
            f"border:1px solid #ddd;max-height:180px;overflow:auto'>{e(p.text)}</pre>",
            f"<b>Soft-prompt slots per layer</b> ({view.num_layers} layers): "
            f"<span style='color:{colors['I']}'>■</span> instruction ×{view.num_instruction_slots} "
            f"<span style='color:{colors['D']}'>■</span> ID ×{view.num_id_slots} "
            f"<span style='color:{colors['t']}'>■</span> text tokens ×{len(view.tokens)}",
            "<table style='border-collapse:collapse;margin:4px 0'>",
        ]
        for layer, row in PromptInspector.slot_rows(view):
            label = f"layer {layer}" if layer >= 0 else "⋮"
            cells = "".join(
                f"<td style='width:9px;height:9px;padding:0;border:1px solid white;background:{colors[c]}'></td>"
                if c in colors else f"<td style='font-size:10px;padding:0 3px'>{e(c)}</td>"
                for c in row.split() if c != "|")
            parts.append(f"<tr><td style='font-size:11px;padding-right:6px'>{label}</td>{cells}</tr>")
        parts.append("</table>")
        parts.append(f"<b>History</b> ({len(view.history)} items, oldest first)"
                     "<ol style='margin:2px 0;max-height:160px;overflow:auto'>")
        parts += [f"<li>[{i}] <code>{e(asin)}</code> {e(text)}</li>" for i, asin, text in view.history]
        parts.append("</ol>")
        if view.topk:
            where = (f"rank {view.target_rank}" if view.target_rank
                     else f"not in the recommender's top {view.extra.get('ranked', len(view.topk))}")
            parts.append(f"<b>Top-{len(view.topk)} recommendations</b> (held-out target [{view.target}] <code>{e(view.target_item[1])}</code>: {where})"
                         "<ol style='margin:2px 0'>")
            for r, i, asin, text, hit in view.topk:
                style = " style='background:#d8f0d8;font-weight:bold'" if hit else ""
                mark = " ★ held-out target" if hit else ""
                parts.append(f"<li{style}>[{i}] <code>{e(asin)}</code> {e(text)}{mark}</li>")
            parts.append("</ol>")
        if view.note:
            parts.append(f"<i>{e(view.note)}</i>")
        parts.append("</div>")
        return "\n".join(parts)

    # ------------------------------------------------------------------ widgets
    def widget(self):
        """Build (once) and return the ipywidgets app: controls + an HTML view.

        Controls (attributes, set ``.value`` to drive them): ``user_box`` (Combobox: reviewerID or
        index), ``paradigm_buttons`` (ToggleButtons), ``backbone_dropdown`` (Dropdown),
        ``k_slider`` (IntSlider); the view is ``html`` (HTML) and ``error`` (HTML).

        Raises:
            ImportError: ipywidgets is not installed.
        """
        if self._widget is not None:
            return self._widget
        import ipywidgets as w

        self.user_box = w.Combobox(
            value=str(self.dataset.user_ids[self.state["user"]]),
            options=[str(self.dataset.user_ids[u]) for u in self.users],
            placeholder="reviewerID or user index", description="user", ensure_option=False,
        )
        self.paradigm_buttons = w.ToggleButtons(options=list(PARADIGMS), value=self.state["paradigm"],
                                                description="paradigm")
        self.backbone_dropdown = w.Dropdown(options=list(self.backbones), value=self.state["backbone"],
                                            description="backbone")
        self.k_slider = w.IntSlider(value=self.k, min=1, max=50, description="top-K")
        self.error = w.HTML("")
        self.html = w.HTML("")
        for control in (self.user_box, self.paradigm_buttons, self.backbone_dropdown, self.k_slider):
            control.observe(self._on_change, names="value")
        self._refresh()
        self._widget = w.VBox([
            w.HBox([self.user_box, self.backbone_dropdown, self.k_slider]),
            self.paradigm_buttons, self.error, self.html,
        ])
        return self._widget

    def _on_change(self, _change=None) -> None:
        self._refresh()

    def _refresh(self) -> None:
        try:
            user = self.resolve_user(self.user_box.value)
        except ValueError as exc:
            self.error.value = f"<span style='color:#C44E52'>{html.escape(str(exc))}</span>"
            return
        self.error.value = ""
        self.state.update(user=user, paradigm=self.paradigm_buttons.value, backbone=self.backbone_dropdown.value)
        self.k = int(self.k_slider.value)
        self.current = self.view(k=self.k)
        self.html.value = self.to_html(self.current)

    def show(self) -> None:
        """Display the widget app in a notebook; print the static view where that is impossible."""
        if widgets_available():
            from IPython.display import display

            from rarec_lite.course import enable_colab_widgets

            enable_colab_widgets()
            display(self.widget())
        else:
            print(self.render_static())


def widgets_available() -> bool:
    """True when ipywidgets imports and a notebook kernel (a front end) is attached."""
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(dataset: Any, recommenders: Mapping[str, Recommender], backbones: Mapping[str, Any], **kwargs) -> PromptInspector:
    """Build a :class:`PromptInspector`, display it (or its static view) and return it."""
    inspector = PromptInspector(dataset, recommenders, backbones, **kwargs)
    inspector.show()
    return inspector
