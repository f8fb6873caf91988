"""MostPop, ItemTextKNN and late fusion against hand counts, hand-computed values and an independent dense TF-IDF."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from rarec_lite.baselines import ItemTextKNN, MostPop, item_popularity, late_fusion, tokenize
from rarec_lite.metrics import evaluate


def test_mostpop_counts_train_items_and_ranks_by_them():
    train = [np.array([0, 1, 1]), np.array([1, 2]), np.array([3])]
    pop = MostPop().fit(train, num_items=5)
    assert pop.counts.tolist() == [1, 3, 1, 1, 0]
    scores = pop.score([np.array([0]), np.array([], dtype=np.int64)])
    assert scores.shape == (2, 5)
    assert scores[1].tolist() == [1.0, 3.0, 1.0, 1.0, 0.0]
    # user 0 (history {0}) with target 2: item 1 is above, item 3 ties -> pessimistic rank 2,
    # under the default expected rule rank 1 or 2 with probability 1/2 each
    res = evaluate(pop.score, [np.array([0]), np.array([2])], np.array([2, 1]), 5, ks=(1, 2))
    assert res.ranks.tolist() == [1, 0] and res.tied.tolist() == [1, 0]
    assert res.per_user("HR@2").tolist() == [0.5, 1.0]
    assert evaluate(pop.score, [np.array([0]), np.array([2])], np.array([2, 1]), 5, ks=(1, 2),
                    ties="pessimistic").ranks.tolist() == [2, 0]
    # scores are a fresh tensor: masking one batch cannot corrupt the next
    s = pop.score([np.array([0])])
    s[0, 1] = -1.0
    assert pop.score([np.array([0])])[0, 1] == 3.0
    with pytest.raises(ValueError, match="sequence 0"):
        item_popularity([np.array([7])], 5)
    with pytest.raises(RuntimeError, match="before fit"):
        MostPop().score([np.array([0])])


def test_tokenize_words_and_phrases():
    toks = tokenize("Nike | Men | Running Shoes")
    assert Counter(toks) == Counter(["nike", "men", "running", "shoes", "[nike]", "[men]", "[running shoes]"])
    assert tokenize("Levi's Jeans") == ["levi's", "jeans"]


def _dense_tfidf(texts: list[str], min_df: int) -> np.ndarray:
    """Independent TF-IDF (dense, dictionary-based) following the documented formula."""
    docs = [tokenize(t) for t in texts]
    n = len(docs)
    df = Counter(t for d in docs for t in set(d))
    vocab = sorted(t for t, c in df.items() if c >= min_df)
    m = np.zeros((n, len(vocab)))
    for i, d in enumerate(docs):
        for j, t in enumerate(vocab):
            tf = d.count(t)
            if tf:
                m[i, j] = tf * (math.log((1 + n) / (1 + df[t])) + 1)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1, norms)


def test_item_text_knn_matches_dense_reference():
    texts = [
        "Nike | Men | Running Shoes",
        "Adidas | Men | Running Shoes",
        "Nike | Women | Dresses",
        "Casio | Watches",
        "",
        "Adidas | Women | Running Shoes",
    ]
    train = [np.array([0, 1]), np.array([1, 2, 5]), np.array([5, 3])]
    knn = ItemTextKNN(k_recent=2, decay=0.5, min_df=1).fit(texts, train)
    ref = _dense_tfidf(texts, min_df=1)
    histories = [np.array([3, 0, 1]), np.array([4])]
    scores = knn.score(histories)
    assert scores.shape == (2, 6)
    # user 0: last 2 items newest first -> weights 1.0 for item 1, 0.5 for item 0
    profile = 1.0 * ref[1] + 0.5 * ref[0]
    expected = ref @ profile
    assert scores[0].numpy() == pytest.approx(expected, abs=1e-5)
    # item 5 shares "adidas", "running", "shoes" with item 1: it beats the unrelated watch
    assert scores[0, 5] > scores[0, 3]
    # an item without text gives an all-zero profile: only the popularity tie-break remains
    pop = item_popularity(train, 6)
    assert scores[1].numpy() == pytest.approx(1e-6 * pop / pop.max(), abs=1e-9)
    assert torch.argmax(scores[1]).item() == int(np.argmax(pop))


def test_late_fusion_hand_computed():
    # user 0: scorer A [1, 2, 3] -> z = [-1.2247, 0, 1.2247] (population std sqrt(2/3));
    #         scorer B [10, 10, 40] -> mean 20, std sqrt(200) -> z = [-0.7071, -0.7071, 1.4142]
    a = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    b = torch.tensor([[10.0, 10.0, 40.0], [0.0, 3.0, 0.0]])
    got = late_fusion([a, b])
    za = math.sqrt(1.5)
    row0 = [-za - 1 / math.sqrt(2), -1 / math.sqrt(2), za + math.sqrt(2)]
    # user 1: A is constant (contributes 0); B [0, 3, 0] -> mean 1, std sqrt(2) -> [-0.7071, 1.4142, -0.7071]
    row1 = [-1 / math.sqrt(2), math.sqrt(2), -1 / math.sqrt(2)]
    assert torch.allclose(got, torch.tensor([row0, row1]), atol=1e-5)
    # weights scale each scorer's z-scores
    assert torch.allclose(late_fusion([a, b], [2.0, 0.0])[0], torch.tensor([-2 * za, 0.0, 2 * za]), atol=1e-5)


def test_late_fusion_is_invariant_to_each_scorers_scale_and_checks_input():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 50, generator=g), torch.randn(4, 50, generator=g)
    scale = torch.tensor([[3.0], [0.5], [10.0], [1.0]])
    assert torch.allclose(late_fusion([a, b]), late_fusion([a * scale + 7.0, b]), atol=1e-4)
    with pytest.raises(ValueError, match="no score matrices"):
        late_fusion([])
    with pytest.raises(ValueError, match="score matrix 1 has shape"):
        late_fusion([a, b[:, :10]])
    with pytest.raises(ValueError, match="2 weights for 1"):
        late_fusion([a], [1.0, 1.0])
    with pytest.raises(ValueError, match=">= 0"):
        late_fusion([a, b], [1.0, -1.0])
