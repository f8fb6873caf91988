"""Hard prompts for the three paradigms of LLM-based recommendation (RA-Rec, Yu et al. 2024, Sec. 1-2).

* **ID Direct**: the LLM reads raw ids ("User 15 has bought items 115, 301."). Short, but the
  numbers mean nothing to a language model.
* **ID Translation**: the history is written out as item text. Meaningful, but the prompt
  grows with the history and overflows the context window: the builder keeps the most recent
  items that fit a token budget and reports how many tokens the full prompt would need.
* **Hybrid (RA-Rec)**: a short hard prompt (instruction + the ``k`` most recent item texts);
  the rest of the user is carried by the soft prompt of :mod:`rarec_lite.alignment`.

Every builder returns a :class:`PromptResult`. Token counts are filled when a tokenizer is
given (counted with ``add_special_tokens=True``, as the model sees the prompt); without a
tokenizer they are ``None`` and no budget can be applied.

The wording lives in the module constants below so the prompt inspector can show it.
Histories are given oldest first (chronological); prompts list the items **most recent first**,
so cutting the prompt to a budget drops the oldest items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

__all__ = [
    "PromptResult",
    "ID_DIRECT_USER",
    "ID_DIRECT_ITEM",
    "TRANSLATION_HEAD",
    "HYBRID_HEAD",
    "ITEM_LINE",
    "TAIL",
    "ITEM_TEXT",
    "id_direct_user",
    "id_direct_item",
    "id_translation_user",
    "item_text_prompt",
    "hybrid_user",
    "count_tokens",
    "budget_report",
]

# ---- the wording (module constants: the inspector shows them) -------------------------------
ID_DIRECT_USER = "User {user} has bought items {items}. Recommend the next item."
"""ID Direct user prompt; ``{items}`` are raw item ids, most recent first, ", "-joined."""
ID_DIRECT_ITEM = "Item {item}"
"""ID Direct item prompt."""
TRANSLATION_HEAD = "A customer bought these products, most recent first:"
"""ID Translation: the instruction before the item list."""
HYBRID_HEAD = "A customer recently bought:"
"""Hybrid (RA-Rec) user prompt: the instruction before the k most recent items."""
ITEM_LINE = "\n- {text}"
"""One history item in a user prompt."""
TAIL = "\nRecommend the next product."
"""The closing instruction of the text user prompts."""
ITEM_TEXT = "Product: {text}"
"""Item tower prompt (ID Translation and RA-Rec)."""
ID_SEPARATOR = ", "


@dataclass(frozen=True)
class PromptResult:
    """A built prompt and its token accounting.

    Attributes:
        text: the prompt.
        tokens_needed: tokens of the prompt with the whole history (``None`` without tokenizer).
        tokens_kept: tokens of ``text`` (``None`` without tokenizer).
        truncated: ``True`` when the budget dropped items (or item words).
        items_kept: history items (or words, for item prompts) in ``text``.
        items_total: history items (or words) before the budget.
    """

    text: str
    tokens_needed: int | None
    tokens_kept: int | None
    truncated: bool
    items_kept: int
    items_total: int


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` as the model sees it (special tokens included)."""
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def _check_budget(tokenizer: Any, budget: int | None) -> None:
    if budget is not None:
        if tokenizer is None:
            raise ValueError("a token budget needs a tokenizer (budget given, tokenizer=None)")
        if int(budget) < 1:
            raise ValueError(f"budget must be a positive number of tokens; got {budget}")


def _fit(head: str, parts: list[str], tail: str, sep: str, tokenizer: Any, budget: int | None,
         render=None) -> PromptResult:
    """Keep the longest prefix ``parts[:k]`` whose prompt fits ``budget`` tokens.

    ``render(parts) -> str`` builds the prompt (default ``head + sep-joined parts + tail``).
    ``k`` is first estimated from per-part token counts, then corrected on the real prompt
    (tokenizers may merge across boundaries): raised while the next part fits, lowered while
    the prompt is over budget.
    """
    if render is None:
        def render(kept: list[str]) -> str:
            return head + sep.join(kept) + tail
    full = render(parts)
    if tokenizer is None:
        return PromptResult(full, None, None, False, len(parts), len(parts))
    needed = count_tokens(tokenizer, full)
    if budget is None or needed <= budget:
        return PromptResult(full, needed, needed, False, len(parts), len(parts))
    # estimate k from the parts' own counts, then correct on the rendered text
    fixed = count_tokens(tokenizer, render([]))
    used, k = fixed, 0
    for part in parts:
        cost = len(tokenizer(sep + part, add_special_tokens=False)["input_ids"])
        if used + cost > budget:
            break
        used, k = used + cost, k + 1
    while k < len(parts) and count_tokens(tokenizer, render(parts[:k + 1])) <= budget:
        k += 1  # the estimate was pessimistic (e.g. no separator before the first part)
    text = render(parts[:k])
    kept = count_tokens(tokenizer, text)
    while kept > budget and k > 0:
        k -= 1
        text = render(parts[:k])
        kept = count_tokens(tokenizer, text)
    return PromptResult(text, needed, kept, True, k, len(parts))


def _recent_first(history: Sequence[Any]) -> list[Any]:
    return list(history)[::-1]


def id_direct_user(user_id: int, history_item_ids: Sequence[int], tokenizer: Any = None,
                   budget: int | None = None) -> PromptResult:
    """ID Direct user prompt: ``"User 15 has bought items 301, 115. Recommend the next item."``.

    Args:
        user_id: the user's id (an int; the LLM sees its digits).
        history_item_ids: item ids, oldest first; written most recent first.
        tokenizer: optional Hugging Face tokenizer, for token counts and the budget.
        budget: optional max tokens; the oldest ids are dropped first.

    Raises:
        ValueError: a budget without a tokenizer, or a budget < 1.

    Source: RA-Rec (Yu et al. 2024), Fig. 1 "ID direct usage".
    """
    _check_budget(tokenizer, budget)
    ids = [str(int(i)) for i in _recent_first(history_item_ids)]

    def render(kept: list[str]) -> str:
        return ID_DIRECT_USER.format(user=int(user_id), items=ID_SEPARATOR.join(kept))

    return _fit("", ids, "", ID_SEPARATOR, tokenizer, budget, render)


def id_direct_item(item_id: int, tokenizer: Any = None) -> PromptResult:
    """ID Direct item prompt: ``"Item 402"``. Source: RA-Rec (Yu et al. 2024), Fig. 1."""
    text = ID_DIRECT_ITEM.format(item=int(item_id))
    n = count_tokens(tokenizer, text) if tokenizer is not None else None
    return PromptResult(text, n, n, False, 1, 1)


def id_translation_user(history_texts: Sequence[str], tokenizer: Any = None,
                        budget: int | None = None) -> PromptResult:
    """ID Translation user prompt: instruction + every history item as text, most recent first.

    With a ``budget`` the oldest items are dropped until the prompt fits;
    ``tokens_needed`` still counts the whole history (plot it against history length to see
    the context window overflow).

    Args:
        history_texts: item texts, oldest first.
        tokenizer: optional tokenizer (counts, budget).
        budget: optional max tokens of the prompt.

    Raises:
        ValueError: a budget without a tokenizer, or a budget < 1.

    Source: RA-Rec (Yu et al. 2024), Fig. 1 "ID translation".
    """
    _check_budget(tokenizer, budget)
    parts = [ITEM_LINE.format(text=t.strip()) for t in _recent_first(history_texts)]
    return _fit(TRANSLATION_HEAD, parts, TAIL, "", tokenizer, budget)


def hybrid_user(history_texts: Sequence[str], tokenizer: Any = None, k_recent: int = 3,
                budget: int | None = None) -> PromptResult:
    """Hybrid (RA-Rec) user hard prompt: instruction + the ``k_recent`` most recent item texts.

    The soft prompt (ID representation) is added by :class:`rarec_lite.alignment.RAAlignment`;
    this is only its short text part. ``items_total`` is the full history length.

    Raises:
        ValueError: ``k_recent < 0``, a budget without a tokenizer, or a budget < 1.

    Source: RA-Rec (Yu et al. 2024), Sec. 3 hybrid prompt.
    """
    if k_recent < 0:
        raise ValueError(f"k_recent must be >= 0; got {k_recent}")
    _check_budget(tokenizer, budget)
    parts = [ITEM_LINE.format(text=t.strip()) for t in _recent_first(history_texts)[:k_recent]]
    result = _fit(HYBRID_HEAD, parts, TAIL, "", tokenizer, budget)
    truncated = result.truncated or len(history_texts) > result.items_kept
    return PromptResult(result.text, result.tokens_needed, result.tokens_kept, truncated,
                        result.items_kept, len(history_texts))


def item_text_prompt(text: str, tokenizer: Any = None, budget: int | None = None) -> PromptResult:
    """Item prompt ``"Product: <text>"``; a budget drops the last words of the text.

    ``items_kept``/``items_total`` count words of ``text`` here.

    Raises:
        ValueError: a budget without a tokenizer, or a budget < 1.
    """
    _check_budget(tokenizer, budget)
    words = text.split()

    def render(kept: list[str]) -> str:
        return ITEM_TEXT.format(text=" ".join(kept))

    if tokenizer is None or budget is None:
        return _fit("", words, "", " ", tokenizer, None, render)
    full = render(words)
    needed = count_tokens(tokenizer, full)
    if needed <= budget:
        return PromptResult(full, needed, needed, False, len(words), len(words))
    lo, hi = 0, len(words)  # largest k with render(words[:k]) within budget: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(tokenizer, render(words[:mid])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept_text = render(words[:lo])
    return PromptResult(kept_text, needed, count_tokens(tokenizer, kept_text), True, lo, len(words))


def budget_report(results: Sequence[PromptResult], wanted: Sequence[int] | None = None) -> dict:
    """What a token budget did to a set of prompts (all built with the same budget).

    Args:
        results: the prompts (:class:`PromptResult` with token counts).
        wanted: per prompt, how many history items it should hold whole (``min(k, len(history))``
            for the hybrid prompt, the whole history for ID Translation); ``None`` for item prompts,
            whose ``items_*`` count words.

    Returns:
        ``prompts``; ``tokens_needed`` and ``tokens_kept`` (means); ``over_budget_share``: the share
        whose full prompt did not fit; with ``wanted``: ``items_wanted`` and ``items_kept`` (means)
        and ``lost_item_share`` (share of prompts that lost at least one wanted item); without:
        ``words_kept_share`` (mean share of the words kept, over the prompts that were cut).

    Raises:
        ValueError: prompts built without a tokenizer, or ``wanted`` of another length.
    """
    results = list(results)
    if not results:
        return {"prompts": 0}
    if any(r.tokens_needed is None for r in results):
        raise ValueError("budget_report needs prompts built with a tokenizer")
    n = len(results)
    over = [r for r in results if r.tokens_needed > r.tokens_kept]
    out = {"prompts": n, "tokens_needed": sum(r.tokens_needed for r in results) / n,
           "tokens_kept": sum(r.tokens_kept for r in results) / n, "over_budget_share": len(over) / n}
    if wanted is not None:
        wanted = list(wanted)
        if len(wanted) != n:
            raise ValueError(f"wanted has {len(wanted)} entries for {n} prompts")
        out.update(items_wanted=sum(wanted) / n, items_kept=sum(r.items_kept for r in results) / n,
                   lost_item_share=sum(r.items_kept < w for r, w in zip(results, wanted)) / n)
    else:
        out["words_kept_share"] = (sum(r.items_kept / max(r.items_total, 1) for r in over) / len(over)) if over else 1.0
    return out
