"""Metric code against hand-computed cases and an independent pure-Python implementation.

Both tie rules: pessimistic (target below its ties) against an independent sort, and the
expected rule (exact expectation under a random tie order) against hand-enumerated cases,
a brute force over every order of the tied items, and a Monte-Carlo average.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rarec_lite.metrics import (
    RankTies,
    _harmonic_diff,
    evaluate,
    format_metrics,
    full_ranking_rank_ties,
    full_ranking_ranks,
    metrics_from_ranks,
    paired_bootstrap,
    per_user_metric,
    sample_negatives,
    sampled_rank_ties,
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


def test_constant_scorer_pessimistic_is_worst_not_perfect():
    num_items = 50
    histories = [np.array([1, 2, 3]), np.array([7])]
    targets = np.array([0, 9])
    res = evaluate(lambda h: torch.zeros(len(h), num_items), histories, targets, num_items, ks=(10,),
                   ties="pessimistic")
    # every unmasked item ties with the target and ranks above it
    assert res.ranks.tolist() == [num_items - 1 - 3, num_items - 1 - 1]
    assert res.tied.tolist() == [0, 0] and res.ties == "pessimistic"
    assert res.metrics["HR@10"] == 0.0 and res.metrics["NDCG@10"] == 0.0
    assert res.protocol == "full-ranking"
    assert res.to_dict()["ties"] == "pessimistic" and "pessimistic" in str(res)


def test_constant_scorer_expected_is_exactly_chance():
    num_items = 50
    histories = [np.array([1, 2, 3]), np.array([7])]
    targets = np.array([0, 9])
    res = evaluate(lambda h: torch.zeros(len(h), num_items), histories, targets, num_items, ks=(1, 10, 47, 100))
    assert res.ties == "expected" and res.to_dict()["ties"] == "expected" and "expected" in str(res)
    n = np.array([num_items - 3, num_items - 1])  # candidates: the target and every unmasked item
    assert res.ranks.tolist() == [0, 0] and res.tied.tolist() == (n - 1).tolist()
    for k in (1, 10, 47, 100):
        assert res.per_user(f"HR@{k}").tolist() == np.minimum(k / n, 1.0).tolist()  # exactly K / N
        ndcg = [sum(1 / math.log2(r + 2) for r in range(min(k, m))) / m for m in n]
        np.testing.assert_allclose(res.per_user(f"NDCG@{k}"), ndcg, rtol=1e-14)
    np.testing.assert_allclose(res.per_user("MRR"), [sum(1 / (r + 1) for r in range(m)) / m for m in n], rtol=1e-14)
    assert res.metrics["HR@10"] == pytest.approx((10 / 47 + 10 / 49) / 2, rel=1e-15)
    assert res.pessimistic_ranks.tolist() == [46, 48] and res.expected_ranks.tolist() == [23.0, 24.0]
    # sampled-100: the target and 100 negatives, all tied -> HR@10 = 10 / 101 for every user
    smp = evaluate(lambda h: torch.ones(len(h), 300), [np.array([1])] * 3, [0, 2, 3], 300, ks=(10,),
                   protocol="sampled-100")
    assert smp.per_user("HR@10").tolist() == [10 / 101] * 3 and smp.metrics["HR@10"] == pytest.approx(10 / 101)
    assert smp.tied.tolist() == [100] * 3 and "sampled-100" in str(smp) and "expected" in str(smp)


def test_expected_hand_case_g3_t4():
    """3 items strictly above the target, 4 tied with it: the rank is uniform on 3..7."""
    scores = torch.tensor([[0.2, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.5, 0.1]])
    target, history = 4, np.array([9, 10, 4])  # a 0.9 and a 0.5 masked: they count neither way
    g, t = full_ranking_rank_ties(scores, [target], [history])
    assert (g.tolist(), t.tolist()) == ([3], [4])
    assert full_ranking_ranks(scores, [target], [history]).tolist() == [7]  # pessimistic
    counts = full_ranking_ranks(scores, [target], [history], ties="expected")
    assert isinstance(counts, RankTies) and counts.pessimistic.tolist() == [7]
    m = metrics_from_ranks(counts, ks=(5, 3, 8))
    assert m["HR@5"] == 2 / 5  # ranks 3 and 4 of {3, 4, 5, 6, 7} are < 5
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(6)) / 5, rel=1e-15)
    assert m["HR@3"] == 0.0 and m["NDCG@3"] == 0.0
    assert m["HR@8"] == 1.0
    assert m["NDCG@8"] == pytest.approx(sum(1 / math.log2(r + 2) for r in range(3, 8)) / 5, rel=1e-15)
    assert m["MRR"] == pytest.approx((1 / 4 + 1 / 5 + 1 / 6 + 1 / 7 + 1 / 8) / 5, rel=1e-15)
    # the same from separate arrays, and per user
    assert metrics_from_ranks(np.array([3]), (5, 3, 8), tied=np.array([4])) == m
    assert per_user_metric(np.array([3]), "HR@5", tied=np.array([4])).tolist() == [0.4]


def test_masked_items_never_tie_even_with_a_minus_inf_target():
    # the target scores -inf like the masked history items would under a -inf mask: only the
    # unmasked item 3 (also -inf) ties with it
    scores = torch.tensor([[float("-inf"), float("-inf"), 1.0, float("-inf"), 0.0]])
    g, t = full_ranking_rank_ties(scores, [0], [np.array([1, 4])])
    assert (g.tolist(), t.tolist()) == ([1], [1])
    assert full_ranking_ranks(scores, [0], [np.array([1, 4])]).tolist() == [2]
    # history items tied with the target are not ties; a NaN score of another item ranks below
    scores = torch.tensor([[0.5, 0.5, 0.5, float("nan"), 0.7]])
    g, t = full_ranking_rank_ties(scores, [0], [np.array([1])])
    assert (g.tolist(), t.tolist()) == ([1], [1])
    res = evaluate(lambda h: scores.repeat(len(h), 1), [np.array([1])], [0], 5, ks=(1, 2))
    assert res.metrics["HR@1"] == 0.0 and res.metrics["HR@2"] == 0.5


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
    with pytest.raises(ValueError, match="unknown ties rule 'optimistic'"):
        evaluate(lambda h: torch.zeros(len(h), 4), [np.array([0])], [1], 4, ties="optimistic")
    with pytest.raises(ValueError, match="unknown ties rule"):
        full_ranking_ranks(torch.zeros(1, 4), [1], ties="random")
    with pytest.raises(ValueError, match="1-D"):  # a RankTies stacked by np.asarray is refused, not misread
        metrics_from_ranks(np.asarray(RankTies(np.array([0, 1]), np.array([2, 0]))))
    with pytest.raises(ValueError, match="tied has shape"):
        per_user_metric(np.array([0, 1]), "MRR", tied=np.array([1]))
    with pytest.raises(ValueError, match="tied must be >= 0"):
        per_user_metric(np.array([0]), "MRR", tied=np.array([-1]))


# ----------------------------------------------------------------------------- cross-check


def _tied_case(seed: int, num_users: int, num_items: int, levels: int, max_history: int):
    """Integer scores in 0..levels-1 (many ties), random targets and histories."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=(num_users, num_items)).astype(np.float32)
    targets = rng.integers(0, num_items, size=num_users)
    histories = [rng.choice(num_items, size=rng.integers(0, max_history), replace=False) for _ in range(num_users)]
    return scores, targets, histories


def test_full_ranking_matches_reference_on_random_ties():
    num_users, num_items = 40, 30
    scores, targets, histories = _tied_case(0, num_users, num_items, 5, 8)
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
    table = np.random.default_rng(12).normal(size=(num_users, num_items)).astype(np.float32)
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
    table = np.random.default_rng(12).normal(size=(num_users, num_items)).astype(np.float32)
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


# ----------------------------------------------------------------------------- expected ties


def test_rank_ties_match_a_python_loop_across_row_blocks_and_never_write_scores():
    """More users than one block of RANK_ROWS; histories with repeats, the target itself and items tied
    with it; NaN and -inf scores of other items. Checked against a loop over the items."""
    from rarec_lite.metrics import RANK_ROWS

    rng = np.random.default_rng(21)
    num_users, num_items = 2 * RANK_ROWS + 7, 50
    scores = rng.integers(0, 4, size=(num_users, num_items)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.03] = np.nan
    scores[rng.random(scores.shape) < 0.03] = -np.inf
    targets = rng.integers(0, num_items, size=num_users)
    scores[np.arange(num_users), targets] = rng.integers(0, 4, size=num_users)  # a target is never NaN
    histories = [np.concatenate([rng.integers(0, num_items, size=rng.integers(0, 12)), [t] * (u % 2)])
                 for u, t in enumerate(targets)]  # repeats, and the target in every other history
    before = torch.from_numpy(scores.copy())
    tensor = torch.from_numpy(scores)
    g, t = full_ranking_rank_ties(tensor, targets, histories)
    assert torch.equal(tensor.isnan(), before.isnan()) and torch.equal(tensor.nan_to_num(), before.nan_to_num())
    for u in range(num_users):
        ts, removed = scores[u, targets[u]], set(histories[u].tolist()) - {int(targets[u])}
        others = [scores[u, j] for j in range(num_items) if j != targets[u] and j not in removed]
        assert (g[u], t[u]) == (sum(v > ts for v in others), sum(v == ts for v in others)), u
    assert g.dtype == t.dtype == np.int64


def old_pessimistic_ranks(scores, targets, exclude) -> np.ndarray:
    """The package's rule before tie-aware metrics: -inf mask, rank = #(score >= target's) - 1."""
    s = np.array(scores, dtype=np.float64)
    for u, h in enumerate(exclude):
        keep = s[u, targets[u]]
        s[u, np.asarray(h, dtype=np.int64)] = -np.inf
        s[u, targets[u]] = keep
    return (s >= s[np.arange(len(targets)), targets][:, None]).sum(1) - 1


def brute_force_expected(scores_row, target, history, ks):
    """Average of the plain metrics over **every** order of the items tied with the target."""
    import itertools

    cands = [j for j in range(len(scores_row)) if j == target or j not in set(history)]
    group = [j for j in cands if scores_row[j] == scores_row[target]]
    sums = {**{f"HR@{k}": 0.0 for k in ks}, **{f"NDCG@{k}": 0.0 for k in ks}, "MRR": 0.0}
    perms = list(itertools.permutations(group))
    for perm in perms:
        priority = {j: p for p, j in enumerate(perm)}
        order = sorted(cands, key=lambda j: (-scores_row[j], priority.get(j, 0)))
        r = order.index(target)
        for k in ks:
            sums[f"HR@{k}"] += r < k
            sums[f"NDCG@{k}"] += 1 / math.log2(r + 2) if r < k else 0.0
        sums["MRR"] += 1 / (r + 1)
    return {name: v / len(perms) for name, v in sums.items()}


def test_expected_matches_brute_force_over_all_tie_orders():
    rng = np.random.default_rng(7)
    num_users, num_items, ks = 30, 14, (1, 3, 5)
    scores = rng.integers(0, 4, size=(num_users, num_items)).astype(np.float32)
    targets = rng.integers(0, num_items, size=num_users)
    histories = [rng.choice(num_items, size=rng.integers(0, 5), replace=False) for _ in range(num_users)]
    # at most 6 tied items (7! = 5040 orders): re-draw the scores of users with more
    for u in range(num_users):
        while True:
            cands = [j for j in range(num_items) if j == targets[u] or j not in set(histories[u].tolist())]
            if sum(scores[u, j] == scores[u, targets[u]] for j in cands) <= 7:
                break
            scores[u] = rng.integers(0, 6, size=num_items)
    res = evaluate(lambda h, users: scores[users], histories, targets, num_items, ks=ks, batch_size=7)
    assert res.tied.max() >= 3  # the case really has ties
    ref = [brute_force_expected(scores[u].tolist(), int(targets[u]), histories[u].tolist(), ks)
           for u in range(num_users)]
    for name in ref[0]:
        np.testing.assert_allclose(res.per_user(name), [r[name] for r in ref], rtol=1e-12, atol=0)
        assert res.metrics[name] == pytest.approx(np.mean([r[name] for r in ref]), rel=1e-12)


def test_expected_matches_monte_carlo_over_random_tie_orders():
    """Large tie groups (text look-alikes): the mean over random tie orders converges to ours."""
    rng = np.random.default_rng(3)
    g = np.array([0, 5, 40, 90, 99, 150, 3, 0])
    t = np.array([3000, 200, 100, 20, 1, 10, 0, 1])
    draws = 200_000
    for name in ("HR@10", "HR@100", "NDCG@10", "NDCG@100", "MRR"):
        ours = per_user_metric(g, name, tied=t)
        for u in range(len(g)):
            ranks = g[u] + rng.integers(0, t[u] + 1, size=draws)  # U uniform on 0..t
            values = per_user_metric(ranks, name)
            se = values.std(ddof=1) / math.sqrt(draws)
            assert abs(values.mean() - ours[u]) <= 5 * se + 1e-12, (name, u, values.mean(), ours[u], se)


def test_pessimistic_matches_the_old_rule_and_expected_lies_between():
    num_users, num_items = 60, 40
    scores, targets, histories = _tied_case(11, num_users, num_items, 6, 9)
    old = old_pessimistic_ranks(scores, targets, histories)
    assert full_ranking_ranks(scores, targets, histories).tolist() == old.tolist()
    pes = evaluate(lambda h, users: scores[users], histories, targets, num_items, ks=(5, 10), ties="pessimistic")
    assert pes.ranks.tolist() == old.tolist() and not pes.tied.any()
    assert pes.metrics == metrics_from_ranks(old, ks=(5, 10))  # bit-identical to the old numbers
    exp = evaluate(lambda h, users: scores[users], histories, targets, num_items, ks=(5, 10))
    assert exp.pessimistic_ranks.tolist() == old.tolist()
    g, t = full_ranking_rank_ties(scores, targets, histories)
    assert exp.ranks.tolist() == g.tolist() and exp.tied.tolist() == t.tolist()
    for name in ("HR@5", "NDCG@10", "MRR"):
        worst, best = per_user_metric(g + t, name), per_user_metric(g, name)
        assert np.all(worst <= exp.per_user(name) + 1e-15) and np.all(exp.per_user(name) <= best + 1e-15)
        assert exp.metrics[name] > pes.metrics[name]  # ties exist, so expected is strictly above
    # no ties at all: both rules give the same numbers
    table = np.random.default_rng(12).normal(size=(num_users, num_items)).astype(np.float32)
    a = evaluate(lambda h, users: table[users], histories, targets, num_items, ks=(5,))
    b = evaluate(lambda h, users: table[users], histories, targets, num_items, ks=(5,), ties="pessimistic")
    assert a.metrics == b.metrics and a.ranks.tolist() == b.ranks.tolist()


def test_sampled_ties_both_rules():
    scores = np.array([[0.5, 0.5, 0.9, 0.5, 0.1, 0.5]], dtype=np.float32)
    negatives = np.array([[1, 2, 3, 4]])  # one above (item 2), two tied (1, 3), one below (4)
    g, t = sampled_rank_ties(scores, [0], negatives)
    assert (g.tolist(), t.tolist()) == ([1], [2])
    assert sampled_ranks(scores, [0], negatives).tolist() == [3]
    assert metrics_from_ranks(sampled_ranks(scores, [0], negatives, ties="expected"), ks=(2,))["HR@2"] == 1 / 3


def test_harmonic_differences_are_exact_to_float64():
    from fractions import Fraction

    pairs = [(0, 0), (0, 1), (3, 128), (127, 129), (128, 129), (129, 130), (5, 400), (200, 201), (200, 9000),
             (0, 23033), (20000, 20001), (23000, 23033)]
    a, b = np.array(pairs).T
    got = _harmonic_diff(a, b)
    for (lo, hi), value in zip(pairs, got):
        exact = sum((Fraction(1, r) for r in range(lo + 1, hi + 1)), Fraction(0))
        assert value == pytest.approx(float(exact), rel=4e-16, abs=0), (lo, hi)
    # MRR with ties through it, against exact fractions
    g, t = np.array([0, 150, 20000, 7]), np.array([23032, 3, 5, 0])
    mrr = per_user_metric(g, "MRR", tied=t)
    for u in range(4):
        exact = sum((Fraction(1, r + 1) for r in range(g[u], g[u] + t[u] + 1)), Fraction(0)) / (t[u] + 1)
        assert mrr[u] == pytest.approx(float(exact), rel=4e-16, abs=0)


def test_format_metrics_names_the_tie_rule():
    m = metrics_from_ranks(np.array([0, 1]), ks=(10, 100))
    table = format_metrics({"a": {**m, "protocol": "full-ranking", "ties": "expected"}, "b": m})
    a_row, b_row = table.splitlines()[1:]
    assert "ties" in table.splitlines()[0] and "expected" in a_row and "?" in b_row


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
