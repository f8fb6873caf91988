"""The prompt inspector: drive its widgets programmatically and check what it shows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from rarec_lite import inspector as insp
from rarec_lite import prompts


@dataclass
class _Split:
    test_history: list
    test_target: np.ndarray


class _TinyDataset:
    """A 5-user, 12-item dataset following the Dataset contract (user_ids, item_ids, item_text, split())."""

    name = "tiny"

    def __init__(self):
        self.user_ids = [f"AUSER{u:02d}" for u in range(5)]
        self.item_ids = [f"B00ITEM{i:03d}" for i in range(12)]
        self.item_text = [f"Brand{i % 3} sneaker model {i}. Categories: Shoes > Size {i}" for i in range(12)]
        self.sequences = [np.array(s, dtype=np.int64) for s in
                          ([0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11], [1, 3, 5, 7, 9, 11], [2, 4, 6])]

    def split(self):
        return _Split([s[:-1] for s in self.sequences], np.array([s[-1] for s in self.sequences]))


def _spec(tokenizer, layers=4, window=4096):
    return insp.BackboneSpec("tiny", tokenizer, layers, window)


@pytest.fixture(scope="module")
def tokenizer():
    from rarec_lite.llm import _byte_level_tokenizer

    return _byte_level_tokenizer("llama")


def _recommenders():
    # "ID Direct": a fixed ranking, target of user 1 (item 8) at rank 3;
    # "RA-Rec hybrid": item ids in reverse order (user 2's target 11 is first).
    return {
        "ID Direct": lambda u: [0, 2, 8, 1, 3, 4, 5, 6, 7, 9, 10, 11],
        "RA-Rec hybrid": lambda u: list(range(11, -1, -1)),
    }


def test_view_prompt_tokens_and_target(tokenizer):
    ds = _TinyDataset()
    ins = insp.PromptInspector(ds, _recommenders(), {"tiny": _spec(tokenizer)}, k=3)
    v = ins.view(1, "ID Direct")
    # ID Direct: the raw item ids of the history, most recent first
    assert v.prompt.text == "User 1 has bought items 7, 6, 5, 4. Recommend the next item."
    # byte-level tokenizer: one token per byte + <s>
    assert v.prompt.tokens_kept == len(v.prompt.text.encode()) + 1 == len(v.tokens)
    assert v.tokens[0] == "<s>"
    assert [t[1] for t in v.topk] == [0, 2, 8]
    assert [t[4] for t in v.topk] == [False, False, True] and v.target == 8 and v.target_rank == 3
    assert v.num_instruction_slots == v.num_id_slots == 0
    # ID Translation writes every history item's text and has no recommender here
    v = ins.view("AUSER03", "ID Translation")
    for i in (1, 3, 5, 7, 9):
        assert ds.item_text[i] in v.prompt.text
    assert v.topk == [] and "no recommender" in v.note
    assert [h[0] for h in v.history] == [1, 3, 5, 7, 9]


def test_budget_truncation_and_slots(tokenizer):
    ds = _TinyDataset()
    ins = insp.PromptInspector(ds, _recommenders(), {"tiny": _spec(tokenizer, layers=3, window=200)},
                               num_instruction_tokens=2, num_id_tokens=3, k_recent=2)
    v = ins.view(3, "ID Translation")  # 5 items of ~55 bytes cannot fit 200 tokens
    assert v.budget == 200
    assert v.prompt.truncated and v.prompt.tokens_kept <= 200 < v.prompt.tokens_needed
    assert v.prompt.items_kept == 2 and ds.item_text[9] in v.prompt.text  # most recent kept
    h = ins.view(3, "RA-Rec hybrid")
    assert (h.num_instruction_slots, h.num_id_slots, h.num_layers) == (2, 3, 3)
    assert h.budget == 200 - 5  # the soft prompt takes positions from the window
    rows = ins.slot_rows(h)
    assert len(rows) == 3 and rows[0][1].startswith("I I D D D | t")
    assert h.target_rank == 1 and h.topk[0][4]  # user 3's target 11 is ranked first
    # the hybrid prompt writes only k_recent items by design: not reported as a budget cut
    assert "2 most recent of 5 items as text" in ins.render_static(3, "RA-Rec hybrid")
    assert "TRUNCATED to 2 of 5 items" in ins.render_static(3, "ID Translation")


def test_widgets_driven_programmatically(tokenizer):
    pytest.importorskip("ipywidgets")
    ds = _TinyDataset()
    ins = insp.PromptInspector(ds, _recommenders(), {"tiny": _spec(tokenizer), "tiny-b": _spec(tokenizer, 2)}, k=3)
    ins.widget()
    ins.paradigm_buttons.value = "ID Direct"
    ins.user_box.value = "AUSER01"
    html = ins.html.value
    assert "User 1 has bought items 7, 6, 5, 4." in html
    assert f"{len(ins.current.tokens)} tokens" in html
    assert "★ held-out target" in html and "B00ITEM008" in html
    assert html.count("★") == 1
    ins.k_slider.value = 2  # target (rank 3) falls out of the top-2
    assert "★" not in ins.html.value and "rank 3" in ins.html.value
    ins.user_box.value = "4"  # typing a user index
    ins.paradigm_buttons.value = "ID Translation"
    assert ins.current.user == 4 and prompts.TRANSLATION_HEAD in ins.html.value
    assert ds.item_text[4].split(".")[0] in ins.html.value
    ins.backbone_dropdown.value = "tiny-b"
    assert ins.current.num_layers == 2
    ins.user_box.value = "NOBODY"
    assert "NOBODY" in ins.error.value and ins.current.user == 4  # last good view kept


def test_static_fallback_same_content(tokenizer, capsys, monkeypatch):
    ds = _TinyDataset()
    ins = insp.PromptInspector(ds, _recommenders(), {"tiny": _spec(tokenizer)}, k=3)
    text = ins.render_static(1, "ID Direct")
    v = ins.view(1, "ID Direct")
    assert v.prompt.text in text
    assert f"{v.prompt.tokens_kept} tokens" in text
    assert "*  3. [8] B00ITEM008" in text and "<- held-out target" in text
    for i, asin, item_text in v.history:
        assert f"[{i}] {asin}  {item_text}" in text
    # no front end (plain pytest): show() prints the static view of the current state
    monkeypatch.setattr(insp, "widgets_available", lambda: False)
    ins.state.update(user=1, paradigm="ID Direct")
    ins.show()
    assert capsys.readouterr().out.strip() == text.strip() == repr(ins).strip()


def test_bad_input_errors(tokenizer):
    ds = _TinyDataset()
    with pytest.raises(ValueError, match="unknown paradigm"):
        insp.PromptInspector(ds, {"P5": lambda u: []}, {"tiny": _spec(tokenizer)})
    ins = insp.PromptInspector(ds, {}, {"tiny": _spec(tokenizer)})
    with pytest.raises(ValueError, match="out of range 0..4"):
        ins.resolve_user(7)
    with pytest.raises(ValueError, match="backbone"):
        ins.view(0, "ID Direct", "gpt-9")
