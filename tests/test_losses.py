"""BPR, InfoNCE and the RA-Rec alignment loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from rarec_lite.losses import alignment_loss, bpr_loss, info_nce


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
    keep = [_softplus(-(dot(u[i], v[i]) - dot(u[i], v[j]))) for i in range(5) for j in range(5)
            if j != i and ids[i] != ids[j]]
    assert len(keep) == 18
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
    # ids 0 and 1 equal: each of them sees 3 candidates instead of 4
    ids = torch.tensor([5, 5, 6, 7])
    expected = (2 * math.log(3) + 2 * math.log(4)) / 4
    assert info_nce(a, torch.ones(4, 3), 0.1, ids).item() == pytest.approx(expected, abs=1e-6)


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
