"""BPR, InfoNCE and the RA-Rec alignment loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rarec_lite.losses import alignment_loss, bpr_loss, info_nce, sampled_softmax_loss


def _softplus(x: float) -> float:  # -log sigmoid(-x) = log(1 + e^x)
    return math.log1p(math.exp(x))


def test_bpr_hand_computed_2x2():
    # s = user @ item.T = [[2, 1], [0, 1]]; both pairs have margin 1: loss = log(1 + e^-1)
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    assert bpr_loss(user, item).item() == pytest.approx(0.3132617, abs=1e-6)
    assert bpr_loss(user, item).item() == pytest.approx(_softplus(-1.0), abs=1e-6)


def test_bpr_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    user, item = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    u, v = user.tolist(), item.tolist()
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    terms = [_softplus(-(dot(u[i], v[i]) - dot(u[i], v[j]))) for i in range(5) for j in range(5) if j != i]
    assert bpr_loss(user, item).item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # duplicate targets are not negatives: items 0 and 1 share an id
    ids = torch.tensor([7, 7, 1, 2, 3])
    # ... and an item present twice is one negative (its first column): rows 2-4 lose column 1
    keep = [_softplus(-(dot(u[i], v[i]) - dot(u[i], v[j]))) for i in range(5) for j in range(5)
            if j != i and ids[i] != ids[j] and not (j == 1 and ids[i] != 7)]
    assert len(keep) == 15
    assert bpr_loss(user, item, ids).item() == pytest.approx(sum(keep) / len(keep), rel=1e-5)


def test_info_nce_hand_computed():
    # cos(a0,b0)=1, cos(a0,b1)=1/sqrt2, cos(a1,b0)=0, cos(a1,b1)=1/sqrt2, tau = 1
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [1.0, 1.0]])  # norms do not matter (cosine)
    r = 1 / math.sqrt(2)
    l0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(r)))
    l1 = -math.log(math.exp(r) / (math.exp(0) + math.exp(r)))
    assert info_nce(a, b, temperature=1.0).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    assert (l0 + l1) / 2 == pytest.approx(0.479110, abs=1e-5)
    # temperature divides the similarities
    l0 = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + math.exp(r / 0.5)))
    l1 = -math.log(math.exp(r / 0.5) / (1 + math.exp(r / 0.5)))
    assert info_nce(a, b, temperature=0.5).item() == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_info_nce_uninformative_is_log_b_and_duplicates_leave_denominator():
    a = torch.ones(4, 3)
    assert info_nce(a, torch.ones(4, 3), 0.1).item() == pytest.approx(math.log(4), abs=1e-6)
    # ids 0 and 1 equal: every row sees its positive plus one column per distinct other id -> 3
    ids = torch.tensor([5, 5, 6, 7])
    assert info_nce(a, torch.ones(4, 3), 0.1, ids).item() == pytest.approx(math.log(3), abs=1e-6)
    # the case: ids [7, 3, 7], all-zero logits -> ln 2 for every row (not 0.8283)
    z = torch.zeros(3, 2)
    z[:, 0] = 1.0
    assert info_nce(z, z, 1.0, torch.tensor([7, 3, 7])).item() == pytest.approx(math.log(2), abs=1e-6)


def test_bpr_with_cached_extra_negatives_by_hand():
    # B = 2 in-batch + 2 cached extras; extra id 11 equals row 1's target and is not its negative
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    extra = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    ids, extra_ids = torch.tensor([10, 11]), torch.tensor([12, 11])
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigmoid(x)  # noqa: E731
    # row 0: s_00 = 2; negatives s_01 = 0, extra 12: 1, extra 11: 0 -> diffs 2, 1, 2
    # row 1: s_11 = 1; negatives s_10 = 0, extra 12: 1 (extra 11 is its own item) -> diffs 1, 0
    want = (sp(2) + sp(1) + sp(2) + sp(1) + sp(0)) / 5
    got = bpr_loss(user, item, ids, 1.0, extra, extra_ids).item()
    assert got == pytest.approx(want, rel=1e-6)
    # sampled softmax over the same candidates: row 0 logits [2, 0, 1, 0] -> CE; row 1 [0, 1, 1]
    l0 = -2 + math.log(math.exp(2) + 1 + math.e + 1)
    l1 = -1 + math.log(1 + math.e + math.e)
    got = sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # equal scores: log(1 + number of negatives)
    flat = sampled_softmax_loss(torch.zeros(2, 2), torch.zeros(2, 2), ids, 1.0, torch.zeros(2, 2), extra_ids)
    assert flat.item() == pytest.approx((math.log(4) + math.log(3)) / 2, rel=1e-6)


def test_batch_of_one_and_bad_shapes_raise():
    x = torch.randn(1, 4)
    with pytest.raises(ValueError, match="at least 2"):
        bpr_loss(x, x)
    with pytest.raises(ValueError, match="at least 2"):
        info_nce(x, x, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        bpr_loss(torch.randn(2, 4), torch.randn(2, 3))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), 0.0)
    with pytest.raises(ValueError, match="no negative"):
        bpr_loss(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([1, 1]))


def test_alignment_loss_combines_bpr_and_mean_layer_infonce():
    g = torch.Generator().manual_seed(1)
    r = lambda: torch.randn(4, 6, generator=g)  # noqa: E731
    u, v = r(), r()
    ul, ut, vl, vt = [r(), r()], [r(), r()], [r(), r()], [r(), r()]
    out = alignment_loss(u, v, ul, ut, vl, vt, lam=0.3, temperature=0.2)
    nce = (info_nce(ul[0], ut[0], 0.2) + info_nce(ul[1], ut[1], 0.2)
           + info_nce(vl[0], vt[0], 0.2) + info_nce(vl[1], vt[1], 0.2)) / 4
    assert out["bpr"].item() == pytest.approx(bpr_loss(u, v).item(), abs=1e-6)
    assert out["infonce"].item() == pytest.approx(nce.item(), abs=1e-6)
    assert out["total"].item() == pytest.approx(bpr_loss(u, v).item() + 0.3 * nce.item(), abs=1e-6)
    # lam = 0: the "w/o InfoNCE" ablation needs no layers
    off = alignment_loss(u, v, lam=0.0)
    assert off["total"].item() == pytest.approx(out["bpr"].item(), abs=1e-6) and off["infonce"].item() == 0.0
    with pytest.raises(ValueError, match="layers"):
        alignment_loss(u, v, lam=0.1)


def test_bpr_scale_equals_scaling_one_tower_by_hand():
    # s = c * <u, v>: with c = 0.5 the 2x2 case is BPR on the halved user vectors,
    # i.e. -1/2 * (log sigmoid(0.5*(2-0)) + log sigmoid(0.5*(3-1)))
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[2.0, 1.0], [0.0, 3.0]])
    # scores: s = [[2, 0], [1, 3]]; diffs s_00 - s_01 = 2, s_11 - s_10 = 2
    expected = -math.log(1 / (1 + math.exp(-1.0)))
    assert bpr_loss(user, item, scale=0.5).item() == pytest.approx(expected, rel=1e-6)
    assert bpr_loss(user, item, scale=0.5).item() == pytest.approx(bpr_loss(0.5 * user, item).item(), rel=1e-6)
    with pytest.raises(ValueError, match="scale"):
        bpr_loss(user, item, scale=0.0)


def test_sampled_softmax_logq_correction_by_hand():
    # the candidates of the test above, each logit minus its column's log q (Yi et al. 2019, Eq. 3)
    user = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    item = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    extra = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    ids, extra_ids = torch.tensor([10, 11]), torch.tensor([12, 11])
    log_q = torch.tensor([math.log(0.5), math.log(0.25)])  # columns 10, 11 (in-batch)
    extra_log_q = torch.tensor([math.log(0.125), math.log(0.25)])  # columns 12, 11 (extras)
    # row 0: logits [2 - ln .5, 0 - ln .25, 1 - ln .125, 0 - ln .25]
    r0 = [2 - math.log(0.5), -math.log(0.25), 1 - math.log(0.125), -math.log(0.25)]
    l0 = -r0[0] + math.log(sum(math.exp(x) for x in r0))
    # row 1: logits [0 - ln .5 (item 10), 1 - ln .25 (its target), 1 - ln .125 (extra 12)]; extra 11 is its own item
    r1 = [-math.log(0.5), 1 - math.log(0.25), 1 - math.log(0.125)]
    l1 = -r1[1] + math.log(sum(math.exp(x) for x in r1))
    got = sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids, log_q, extra_log_q).item()
    assert got == pytest.approx((l0 + l1) / 2, rel=1e-6)
    # a constant log q changes nothing (it cancels in the softmax)
    plain = sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids).item()
    const = sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids, torch.full((2,), -3.0),
                                 torch.full((2,), -3.0)).item()
    assert const == pytest.approx(plain, rel=1e-6) and got != pytest.approx(plain, rel=1e-3)
    with pytest.raises(ValueError, match="together with extra_log_q"):
        sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids, log_q, None)
    with pytest.raises(ValueError, match="one value per candidate"):
        sampled_softmax_loss(user, item, ids, 1.0, extra, extra_ids, log_q, extra_log_q[:1])
    with pytest.raises(ValueError, match="BPR has none"):
        alignment_loss(user, item, lam=0.0, item_ids=ids, rank_loss="bpr", log_q=log_q)
