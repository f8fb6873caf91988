"""A synthetic dataset for quick mode and tests: clustered, sequential, popularity-skewed."""

from __future__ import annotations

import numpy as np

from .prepared import FORMAT_VERSION, Dataset
from .stats import compute_stats
from .text import build_item_texts


_TOY_CLUSTERS = [
    ("Women > Shoes > Sandals", ["SunStep", "Marina", "Solea"]),
    ("Men > Clothing > Shirts", ["Oxford & Co", "Harbor", "Tailwise"]),
    ("Girls > Clothing > Active > Active Skirts", ["Boutique Cutie", "Kidsport", "Little Star"]),
    ("Jewelry > Necklaces & Pendants", ["Aurelia", "Silverline", "Gemma"]),
    ("Luggage & Travel Gear > Backpacks", ["Trekker", "Nomad", "CityPack"]),
    ("Men > Shoes > Boots", ["Timberline", "Ridge", "Stoneway"]),
    ("Women > Clothing > Dresses", ["Bella Rosa", "Linen Lane", "Vesta"]),
    ("Watches > Wrist Watches", ["Chronos", "Tempo", "Meridian"]),
]


#: users of the synthetic toy dataset (``load_dataset("toy")``)
TOY_USERS = 200


def synthetic_dataset(
    num_users: int = TOY_USERS,
    num_items: int = 100,
    seed: int = 0,
    num_clusters: int = 4,
    min_len: int = 5,
    max_len: int = 15,
    p_next: float = 0.6,
    p_cluster: float = 0.3,
) -> Dataset:
    """A small synthetic dataset with learnable structure, for quick mode without real data.

    Items are split into ``num_clusters`` taste clusters (cluster ``c`` = items ``i`` with
    ``i % num_clusters == c``), each with its own category path and brands, so the item
    text (brand + categories, like the real Clothing data) reveals the cluster. Each user
    belongs to one cluster. A sequence starts at a random item of the user's cluster; each
    next item is, with probability ``p_next``, the next unseen item of the cluster in id
    order (a sequential pattern), with probability ``p_cluster`` a popularity-weighted item
    of the cluster, and otherwise a popularity-weighted item of the whole catalogue (noise).
    Items never repeat within a sequence. A sequence model, or even item-to-item
    co-occurrence, beats popularity on it.

    Raises:
        ValueError: ``num_clusters`` outside 1..8, or fewer than ``max_len`` items per cluster.
    """
    if not 1 <= num_clusters <= len(_TOY_CLUSTERS):
        raise ValueError(f"num_clusters must be in 1..{len(_TOY_CLUSTERS)}, got {num_clusters}")
    if num_items // num_clusters < max_len or not 3 <= min_len <= max_len:
        raise ValueError(
            f"need 3 <= min_len <= max_len <= num_items // num_clusters (got min_len={min_len}, "
            f"max_len={max_len}, {num_items // num_clusters} items per cluster)"
        )
    rng = np.random.default_rng(seed)
    cluster = np.arange(num_items) % num_clusters
    members = [np.flatnonzero(cluster == c) for c in range(num_clusters)]
    popularity = 1.0 / (1.0 + rng.permutation(num_items)) ** 0.8  # Zipf-like weights
    sequences = []
    for u in range(num_users):
        c = u % num_clusters
        length = int(rng.integers(min_len, max_len + 1))
        own = members[c]
        seq = [int(rng.choice(own))]
        seen = set(seq)
        while len(seq) < length:
            r = rng.random()
            if r < p_next:
                pos = int(np.searchsorted(own, seq[-1]))
                ring = [int(own[(pos + step) % len(own)]) for step in range(1, len(own))]
                nxt = next((i for i in ring if i not in seen), None)
            else:
                pool = own if r < p_next + p_cluster else np.arange(num_items)
                pool = np.array([i for i in pool if i not in seen])
                nxt = int(rng.choice(pool, p=popularity[pool] / popularity[pool].sum())) if len(pool) else None
            if nxt is None:
                pool = np.array([i for i in range(num_items) if i not in seen])
                nxt = int(rng.choice(pool))
            seq.append(nxt)
            seen.add(nxt)
        sequences.append(np.array(seq, dtype=np.int64))
    titles = [""] * num_items
    brands = [_TOY_CLUSTERS[cluster[i]][1][(i // num_clusters) % 3] for i in range(num_items)]
    categories = ["Clothing, Shoes & Jewelry | " + _TOY_CLUSTERS[cluster[i]][0].replace(" > ", " | ") for i in range(num_items)]
    item_ids = [f"TOY{i:07d}" for i in range(num_items)]
    texts, coverage = build_item_texts(titles, brands, categories, item_ids)
    stats = compute_stats(sequences, num_items)
    stats.update(
        format_version=FORMAT_VERSION, dataset="toy", source_format="synthetic", text_coverage=coverage,
        config={"num_users": num_users, "num_items": num_items, "seed": seed, "num_clusters": num_clusters,
                "min_len": min_len, "max_len": max_len, "p_next": p_next, "p_cluster": p_cluster},
    )
    return Dataset(
        name="toy", user_ids=[f"U{u:05d}" for u in range(num_users)], item_ids=item_ids, sequences=sequences,
        item_text=texts, item_title=titles, item_brand=brands, item_categories=categories, stats=stats,
    )
