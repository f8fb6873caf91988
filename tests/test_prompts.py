"""Hard prompts: wording, most-recent-first truncation, token accounting (hand-counted)."""

from __future__ import annotations

import pytest

from rarec_lite import prompts as P


class WordTokenizer:
    """Whitespace tokenizer with a BOS token: token counts can be done by hand."""

    def __call__(self, text, add_special_tokens=True):
        ids = list(range(len(text.split())))
        return {"input_ids": ([-1] if add_special_tokens else []) + ids}


class ByteTokenizer:
    """Byte-level with BOS (as the tiny-llama tokenizer: no merges): tokens = bytes + 1."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + list(text.encode("utf-8"))}


TEXTS = ["red shoe", "blue hat", "gold ring", "black belt", "green sock"]  # oldest first


def test_id_direct_wording_and_order():
    r = P.id_direct_user(15, [115, 301])
    assert r.text == "User 15 has bought items 301, 115. Recommend the next item."
    assert (r.tokens_needed, r.truncated, r.items_kept, r.items_total) == (None, False, 2, 2)
    assert P.id_direct_item(402).text == "Item 402"
    # words: User 15 has bought items 301, 115. Recommend the next item. = 11 + BOS
    assert P.id_direct_user(15, [115, 301], WordTokenizer()).tokens_needed == 12
    # budget 11: one id goes; the oldest (115) is dropped
    r = P.id_direct_user(15, [115, 301], WordTokenizer(), budget=11)
    assert r.text == "User 15 has bought items 301. Recommend the next item."
    assert (r.tokens_needed, r.tokens_kept, r.truncated, r.items_kept) == (12, 11, True, 1)


def test_id_translation_keeps_most_recent_within_budget():
    tok = WordTokenizer()
    full = P.id_translation_user(TEXTS, tok)
    # BOS + head (8 words) + tail (4 words) + 5 lines of 3 tokens ("-", colour, noun)
    assert full.tokens_needed == full.tokens_kept == 1 + 8 + 4 + 15
    assert full.text.index("green sock") < full.text.index("red shoe")  # most recent first
    assert full.text.startswith(P.TRANSLATION_HEAD) and full.text.endswith(P.TAIL)
    cut = P.id_translation_user(TEXTS, tok, budget=20)  # 13 fixed + 2 items * 3 = 19 <= 20 < 22
    assert (cut.tokens_needed, cut.tokens_kept, cut.truncated, cut.items_kept, cut.items_total) == (28, 19, True, 2, 5)
    assert "green sock" in cut.text and "black belt" in cut.text and "gold ring" not in cut.text
    tiny = P.id_translation_user(TEXTS, tok, budget=5)  # not even the instruction fits: no item kept
    assert tiny.items_kept == 0 and tiny.truncated


def test_token_count_grows_with_history_byte_tokenizer():
    tok = ByteTokenizer()
    needed = [P.id_translation_user(TEXTS[:n], tok).tokens_needed for n in range(1, 6)]
    lines = [len(("\n- " + t).encode()) for t in TEXTS]
    base = 1 + len(P.TRANSLATION_HEAD) + len(P.TAIL)
    assert needed == [base + sum(lines[:n]) for n in range(1, 6)]
    r = P.id_translation_user(TEXTS, tok, budget=base + lines[-1] + lines[-2])
    assert r.items_kept == 2 and r.tokens_kept == base + lines[-1] + lines[-2]


def test_hybrid_user_k_recent():
    r = P.hybrid_user(TEXTS, WordTokenizer(), k_recent=2)
    assert r.text == P.HYBRID_HEAD + "\n- green sock\n- black belt" + P.TAIL
    assert (r.items_kept, r.items_total, r.truncated) == (2, 5, True)
    assert r.tokens_kept == 1 + 4 + 6 + 4  # BOS, head, 2 lines, tail
    assert P.hybrid_user(TEXTS[:1], k_recent=3).truncated is False


def test_item_prompt_cut_by_words():
    r = P.item_text_prompt("Nike | Men | Shoes | Running", WordTokenizer(), budget=5)
    # "Product:" + words; BOS + 1 + 3 words = 5
    assert r.text == "Product: Nike | Men"
    assert (r.tokens_needed, r.tokens_kept, r.items_kept, r.items_total, r.truncated) == (9, 5, 3, 7, True)


def test_bad_budget_raises():
    with pytest.raises(ValueError, match="tokenizer"):
        P.id_translation_user(TEXTS, None, budget=10)
    with pytest.raises(ValueError, match="positive"):
        P.id_translation_user(TEXTS, WordTokenizer(), budget=0)
    with pytest.raises(ValueError, match="k_recent"):
        P.hybrid_user(TEXTS, k_recent=-1)


def test_budget_report_counts_kept_items_and_cut_titles():
    tok = WordTokenizer()
    # hybrid, k=2: BOS + "A customer recently bought:" (4) + 3 words per item ("- green sock") + "Recommend the next product." (4)
    long_hist, short_hist = TEXTS, TEXTS[:1]
    full = P.hybrid_user(long_hist, tok, 2)
    assert full.tokens_needed == 1 + 4 + 3 + 3 + 4
    cut = P.hybrid_user(long_hist, tok, 2, budget=12)  # only one recent item fits
    one = P.hybrid_user(short_hist, tok, 2, budget=12)  # a 1-item history wants only 1, and fits
    assert (cut.items_kept, one.items_kept) == (1, 1)
    rep = P.budget_report([cut, one], wanted=[2, 1])
    assert rep == {"prompts": 2, "tokens_needed": (15 + 12) / 2, "tokens_kept": 12.0,
                   "over_budget_share": 0.5, "items_wanted": 1.5, "items_kept": 1.0, "lost_item_share": 0.5}
    # item prompts: "Product: " + words; a budget of 4 keeps 2 of 4 words of one title, the other fits
    items = [P.item_text_prompt("a b c d", tok, 4), P.item_text_prompt("e f", tok, 4)]
    rep = P.budget_report(items)
    assert rep["over_budget_share"] == 0.5 and rep["words_kept_share"] == 0.5
    with pytest.raises(ValueError, match="tokenizer"):
        P.budget_report([P.item_text_prompt("a b")])
