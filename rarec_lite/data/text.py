"""Item text: the short text that stands for an item in every prompt.

RA-Rec's hard prompt is made of item titles (Yu et al. 2024, Sec. 4.1: "... based on their purchase
history: <title>, <title>, ..."). :func:`build_item_text` uses the title where there is one, then
``"<brand> — <most specific category path>"``, then either alone, then ``"item <id>"``; HTML entities
are unescaped and HTML tags removed (:func:`rarec_lite.data._io._clean`). :func:`build_item_texts`
does it for a catalogue and reports where each text came from and how many items share a text
(items with the same text are indistinguishable to every text method).
"""

from __future__ import annotations

import re
from collections import Counter

from ._io import _clean, _paths_from
from .catalog import root_names

#: Root category nodes dropped wherever they appear in a path (the course's first two datasets).
ROOT_CATEGORIES = frozenset({"Clothing, Shoes & Jewelry", "Clothing, Shoes and Jewelry", "Books"})
#: Every category's root (:func:`rarec_lite.data.catalog.root_names`): dropped when a path starts with it.
CATEGORY_ROOTS = root_names() | ROOT_CATEGORIES

_SHIPPING_SUFFIX = re.compile(r":\s*International Shipping Available$")


def category_path_text(categories, brand: str = "", max_nodes: int = 4) -> str:
    """The most specific category path as ``"A > B > C"`` (at most ``max_nodes`` nodes).

    ``categories`` is a ``" | "``-joined string (root first), one path (list of names) or
    several paths (list of lists; the longest is taken). The root category (the path's first
    node when it is a category's root, e.g. "Industrial & Scientific"; "Clothing, Shoes & Jewelry"
    and "Books" anywhere), one-letter alphabet-index nodes ("S"), Amazon's
    nodes equal to the brand, and repeated nodes are dropped, Amazon's ": International
    Shipping Available" suffix is cut, and the last ``max_nodes`` nodes are kept. When only
    the root is left (and no brand is given) the root is returned.
    """
    paths_ = _paths_from(categories)
    if not paths_:
        return ""
    nodes = max(paths_, key=len)  # max keeps the first of equal-length paths
    brand_key = _clean(brand).casefold()
    kept: list[str] = []
    roots: list[str] = []
    for position, raw in enumerate(nodes):
        node = _clean(raw)
        if node.endswith("International Shipping Available"):
            node = _SHIPPING_SUFFIX.sub("", node).strip()
        if _is_root(node, position):
            roots.append(node)
            continue
        if len(node) <= 1 or (brand_key and node.casefold() == brand_key) or node in kept:
            continue
        kept.append(node)
    if not kept and not brand_key:
        kept = roots[:1]  # only the root is known: better than nothing
    return " > ".join(kept[-max_nodes:]) if max_nodes > 0 else ""


def build_item_text(title, brand, categories, asin: str | None = None, max_nodes: int = 4) -> str:
    """The text that stands for an item in prompts (RA-Rec Sec. 4.1 uses the item title).

    Rules: the title if there is one; otherwise ``"<brand> — <category path>"`` (either part
    alone when the other is missing; see :func:`category_path_text`); otherwise
    ``"item <asin>"``. HTML entities are unescaped and whitespace collapsed. Never empty.

    Example: ``build_item_text("", "Boutique Cutie", "Clothing, Shoes & Jewelry | Girls |
    Clothing | Active | Active Skirts")`` gives
    ``"Boutique Cutie — Girls > Clothing > Active > Active Skirts"``.
    """
    return _item_text_and_source(title, brand, categories, asin, max_nodes)[0]


def _item_text_and_source(title, brand, categories, asin, max_nodes=4) -> tuple[str, str]:
    title, brand = _clean(title), _clean(brand)
    if title:
        return title, "title"
    path = category_path_text(categories, brand, max_nodes)
    if brand and path:
        return f"{brand} — {path}", "brand+categories"
    if path:
        return path, "categories"
    if brand:
        return brand, "brand"
    return f"item {asin}" if asin else "item (no text)", "fallback"


def build_item_texts(titles, brands, categories, asins, max_nodes: int = 4) -> tuple[list[str], dict]:
    """:func:`build_item_text` over a catalogue, plus its coverage report.

    Returns:
        ``(texts, coverage)``: ``coverage`` has ``items``, how many items have a ``title``,
        a ``brand`` and ``categories``; ``text_from``: how many texts came from the
        title, brand+categories, categories only, brand only, or the ``"item <asin>"``
        fallback; ``distinct_texts``; ``items_sharing_text``: items whose text is also another
        item's (a text method cannot tell them apart); ``largest_text_group``: the most items
        that share one text.
    """
    texts, sources = [], []
    n_title = n_brand = n_cat = 0
    for t, b, c, a in zip(titles, brands, categories, asins):
        text, source = _item_text_and_source(t, b, c, a, max_nodes)
        texts.append(text)
        sources.append(source)
        n_title += bool(_clean(t))
        n_brand += bool(_clean(b))
        n_cat += any(_is_root(n.strip(), k) is False for path in _paths_from(c) for k, n in enumerate(path) if n.strip())
    keys = ("title", "brand+categories", "categories", "brand", "fallback")
    coverage = {
        "items": len(texts),
        "title": n_title,
        "brand": n_brand,
        "categories": n_cat,
        "text_from": {k: sources.count(k) for k in keys},
        **text_sharing(texts),
    }
    return texts, coverage


def _is_root(node: str, position: int) -> bool:
    """A root node: dropped from item text and not counted as a category."""
    return node in ROOT_CATEGORIES or (position == 0 and node in CATEGORY_ROOTS)


def top_category(categories) -> str:
    """The first category node under the root (``"Girls"`` for ``"Clothing, Shoes & Jewelry | Girls |
    Clothing"``, ``"Fasteners"`` for ``"Industrial & Scientific | Fasteners | Screws"``), or ``"(none)"``.
    Accepts the forms of :func:`category_path_text` (the longest path is used)."""
    paths_ = _paths_from(categories)
    if not paths_:
        return "(none)"
    nodes = [(k, _clean(n)) for k, n in enumerate(max(paths_, key=len))]
    rest = [n for k, n in nodes if n and not _is_root(n, k)]
    return rest[0] if rest else "(none)"


def text_sharing(texts) -> dict:
    """How many of ``texts`` are distinct, how many items share their text with another item, and
    the size of the largest group of items with one text."""
    counts = Counter(texts)
    return {"distinct_texts": len(counts), "items_sharing_text": int(sum(c for c in counts.values() if c > 1)),
            "largest_text_group": int(max(counts.values(), default=0))}


def _categories_string(categories) -> str:
    """Stored form of categories: nodes of all paths, root first, de-duplicated, joined by " | "."""
    nodes: list[str] = []
    for path in _paths_from(categories):
        for node in path:
            node = node.strip() if "&" not in node else _clean(node)
            if node and node not in nodes:
                nodes.append(node)
    return " | ".join(nodes)
