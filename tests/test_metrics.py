"""Metric code against hand-computed cases and an independent pure-Python implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rarec_lite.metrics import (
    evaluate,
    format_metrics,
    full_ranking_ranks,
    metrics_from_ranks,
    paired_bootstrap,
    sample_negatives,
    sampled_ranks,
)


# ----------------------------------------------------------------------------- reference


def reference_rank(scores_row: list[float], target: int, history: list[int]) -> int:
    """Independent 0-based rank: sort the candidate list, ties put the target last."""
    candidates = [(s, j) for j, s in enumerate(scores_row) if j == target or j not in set(history)]
    # sort by score descending; among equal scores the target goes after every other item
    ordered = sorted(candidates, key=lambda sj: (-sj[0], sj[1] == target))
    return [j for _, j in ordered].index(target)


def reference_metrics(ranks: list[int], k: int) -> tuple[float, float, float]:
    hr = sum(1 for r in ranks if r < k) / len(ranks)
    ndcg = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
    mrr = sum(1 / (r + 1) for r in ranks) / len(ranks)
    return hr, ndcg, mrr


# ----------------------------------------------------------------------------- hand cases


def test_hand_computed_ranks_ties_and_masking():
    scores = torch.tensor(
        [
            [0.9, 0.5, 0.5, 0.1, 0.7],  # target 2 ties with item 1 -> below it: rank = #{0.9, 0.7, 0.5(item1)} = 3
            [0.9, 0.8, 0.1, 0.2, 0.3],  # target 3, history {0, 1} masked -> only item 4 above: rank 1
            [0.1, 0.2, 0.3, 0.4, 0.5],  # target 4 is the best -> rank 0; its own presence in history is ignored
        ]
    )
    targets = [2, 3, 4]
    exclude = [np.array([], dtype=np.int64), np.array([0, 1]), np.array([4, 0])]
    ranks = full_ranking_ranks(scores, targets, exclude)
    assert ranks.tolist() == [3, 1, 0]
    # the input is not modified
    assert scores[1, 0] == pytest.approx(0.9)


def test_metrics_from_ranks_hand_values():
    ranks = np.array([0, 3, 9, 10, 150])  # 10 and 150 sit beyond K=10
    m = metrics_from_ranks(ranks, ks=(10, 100))
    assert m["HR@10"] == pytest.approx(3 / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11)) / 5)
    assert m["HR@100"] == pytest.approx(4 / 5)
    assert m["NDCG@100"] == pytest.approx((1 + 1 / math.log2(5) + 1 / math.log2(11) + 1 / math.log2(12)) / 5)
    assert m["MRR"] == pytest.approx((1 + 1 / 4 + 1 / 10 + 1 / 11 + 1 / 151) / 5)


def test_constant_scorer_is_worst_not_perfect():
    num_items = 50
    histories = [np.array([1, 2, 3]), np.array([7])]
    targets = np.array([0, 9])
    res = evaluate(lambda h: torch.zeros(len(h), num_items), histories, targets, num_items, ks=(10,))
    # every unmasked item ties with the target and ranks above it
    assert res.ranks.tolist() == [num_items - 1 - 3, num_items - 1 - 1]
    assert res.metrics["HR@10"] == 0.0 and res.metrics["NDCG@10"] == 0.0
    assert res.protocol == "full-ranking"


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="targets\\[1\\] = 5"):
        full_ranking_ranks(torch.zeros(2, 5), [0, 5])
    with pytest.raises(ValueError, match="user 0 has item id 9"):
        full_ranking_ranks(torch.zeros(1, 5), [0], [np.array([9])])
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_ranks(torch.tensor([[float("nan"), 0.0]]), [0])
    with pytest.raises(ValueError, match="unknown metric"):
        from rarec_lite.metrics import per_user_metric

        per_user_metric(np.array([0]), "Recall@x")
    with pytest.raises(ValueError, match="expected"):
        evaluate(lambda h: torch.zeros(len(h), 3), [np.array([0])], [1], 4)


# ----------------------------------------------------------------------------- cross-check


def test_full_ranking_matches_reference_on_random_ties():
    rng = np.random.default_rng(0)
    num_users, num_items = 40, 30
    # integer scores in 0..4 -> many ties
    scores = rng.integers(0, 5, size=(num_users, num_items)).astype(np.float32)
    targets = rng.integers(0, num_items, size=num_users)
    histories = [rng.choice(num_items, size=rng.integers(0, 8), replace=False) for _ in range(num_users)]
    ranks = full_ranking_ranks(scores, targets, histories)
    expected = [reference_rank(scores[u].tolist(), int(targets[u]), histories[u].tolist()) for u in range(num_users)]
    assert ranks.tolist() == expected
    m = metrics_from_ranks(ranks, ks=(5, 10))
    for k in (5, 10):
        hr, ndcg, mrr = reference_metrics(expected, k)
        assert m[f"HR@{k}"] == pytest.approx(hr)
        assert m[f"NDCG@{k}"] == pytest.approx(ndcg)
        assert m["MRR"] == pytest.approx(mrr)


def test_evaluate_batches_agree_and_users_keyword():
    rng = np.random.default_rng(1)
    num_users, num_items = 23, 17
    table = rng.normal(size=(num_users, num_items)).astype(np.float32)
    histories = [rng.choice(num_items, size=3, replace=False) for _ in range(num_users)]
    targets = rng.integers(0, num_items, size=num_users)

    def score(h, users):
        return torch.from_numpy(table[users])

    a = evaluate(score, histories, targets, num_items, ks=(5,), batch_size=4)
    b = evaluate(score, histories, targets, num_items, ks=(5,), batch_size=100)
    ref = [reference_rank(table[u].tolist(), int(targets[u]), histories[u].tolist()) for u in range(num_users)]
    assert a.ranks.tolist() == ref == b.ranks.tolist()
    assert a.per_user("HR@5").tolist() == [float(r < 5) for r in ref]
    assert "full-ranking" in str(a)


def test_sampled_protocol_labelled_and_correct():
    rng = np.random.default_rng(2)
    num_users, num_items = 12, 300
    table = rng.normal(size=(num_users, num_items)).astype(np.float32)
    histories = [rng.choice(num_items, size=5, replace=False) for _ in range(num_users)]
    targets = np.array([rng.choice(np.setdiff1d(np.arange(num_items), h)) for h in histories])
    negatives = sample_negatives(histories, targets, num_items, 100, seed=3)
    assert negatives.shape == (num_users, 100)
    for u in range(num_users):
        assert len(set(negatives[u].tolist())) == 100
        assert not (set(negatives[u].tolist()) & (set(histories[u].tolist()) | {int(targets[u])}))
    # same seed -> same negatives
    assert np.array_equal(negatives, sample_negatives(histories, targets, num_items, 100, seed=3))
    ranks = sampled_ranks(table, targets, negatives)
    expected = [int((table[u, negatives[u]] >= table[u, targets[u]]).sum()) for u in range(num_users)]
    assert ranks.tolist() == expected
    res = evaluate(lambda h, users: table[users], histories, targets, num_items, ks=(10,), protocol="sampled-100", seed=3)
    assert res.protocol == "sampled-100"
    assert res.to_dict()["protocol"] == "sampled-100"
    assert res.ranks.tolist() == expected
    full = evaluate(lambda h, users: table[users], histories, targets, num_items, ks=(10,))
    # sampling only removes competitors: a sampled rank is never worse than the full one
    assert (res.ranks <= full.ranks).all()
    assert "sampled-100" in format_metrics({"m": res})


# ----------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    better = base + 0.05 + rng.normal(0, 0.02, size=400)
    res = paired_bootstrap(better, base, num_resamples=500, seed=1)
    assert res.mean_diff == pytest.approx(float((better - base).mean()))
    assert res.ci_low < res.mean_diff < res.ci_high
    assert res.ci_low > 0.04 and res.ci_high < 0.06
    assert res.p_value == pytest.approx(1 / 501)  # no sign flip reaches a consistent +0.05 shift
    # identical methods: difference 0, p = 1
    same = paired_bootstrap(base, base, num_resamples=200)
    assert same.mean_diff == 0.0 and same.p_value == 1.0
    # a pure-noise difference is not significant
    noise = paired_bootstrap(base + rng.normal(0, 0.1, size=400), base, num_resamples=500)
    assert noise.ci_low < 0 < noise.ci_high or noise.p_value > 0.01


def test_paired_bootstrap_ci_matches_normal_approximation():
    rng = np.random.default_rng(5)
    d = rng.normal(0.1, 1.0, size=2000)
    res = paired_bootstrap(d, np.zeros_like(d), num_resamples=2000, seed=0)
    se = d.std(ddof=1) / math.sqrt(d.size)
    assert res.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.2 * se)
    assert res.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.2 * se)
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(d, d[:-1])


def test_sample_users_is_a_fixed_sorted_sample_or_everyone():
    from rarec_lite.metrics import sample_users

    a = sample_users(1000, 50, seed=3)
    assert len(a) == 50 and len(set(a.tolist())) == 50
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    np.testing.assert_array_equal(a, sample_users(1000, 50, seed=3))
    assert not np.array_equal(a, sample_users(1000, 50, seed=4))
    np.testing.assert_array_equal(sample_users(7, 50), np.arange(7))
    np.testing.assert_array_equal(sample_users(7, None), np.arange(7))
