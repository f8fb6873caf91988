"""Alignment training on a tiny random LLaMA: the loss goes down, the LLM stays frozen, resume is exact."""

from __future__ import annotations

import math

import pytest
import torch

from rarec_lite.alignment import RAAlignment, TwoTower
from rarec_lite.files import load_checkpoint
from rarec_lite.sampling import Sample
from rarec_lite.train import TextCache, TrainConfig, build_text_cache, train_alignment

ID_DIM = 8
ITEM_TEXT = ["red shoe", "blue hat", "gold ring", "black belt", "green sock", "white shirt"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from rarec_lite.llm import load_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAREC_HOME", str(tmp_path_factory.mktemp("tiny_home")))
        yield load_backbone("tiny-llama", quantization=None)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(backbone):
    g = torch.Generator().manual_seed(0)
    samples = [Sample(u, (u % 6, (u + 2) % 6), (u + 1) % 6) for u in range(8)]
    user_prompts = [f"bought: {ITEM_TEXT[s.history[-1]]}" for s in samples]
    item_prompts = [f"Product: {t}" for t in ITEM_TEXT]
    user_emb = torch.randn(8, ID_DIM, generator=g)
    item_emb = torch.randn(6, ID_DIM, generator=g)
    cache = build_text_cache(TwoTower(backbone), user_prompts, item_prompts, list(range(6)), max_user_tokens=32)
    return samples, user_prompts, item_prompts, user_emb, item_emb, cache


def _tower(backbone, **kw):
    return TwoTower(backbone, RAAlignment(backbone.info, ID_DIM, num_id_tokens=1, num_instruction_tokens=2, seed=0, **kw))


def _run(backbone, data, out, cfg, tower=None):
    samples, up, ip, ue, ie, cache = data
    tower = tower or _tower(backbone)
    return tower, train_alignment(tower, samples, up, ip, ue, ie, cache, cfg, out, progress=False)


def test_text_cache_roundtrip(data, tmp_path):
    cache = data[-1]
    assert cache.user_layers.shape == (8, 2, 64) and cache.item_layers.shape == (6, 2, 64)
    back = TextCache.load(cache.save(tmp_path / "cache.safetensors"))
    assert torch.equal(back.items([3, 1]), cache.item_layers[[3, 1]])
    with pytest.raises(KeyError, match="item 9"):
        cache.items([9])


def test_training_lowers_the_loss_and_only_alignment_moves(backbone, data, tmp_path):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    # score_scale 1/sqrt(H) (the default 1/H saturates BPR more slowly): 40 steps show the fall on a tiny model
    cfg = TrainConfig(steps=40, batch_size=8, lr=3e-2, lam=0.1, temperature=0.1, checkpoint_every=100,
                      score_scale=64 ** -0.5)
    tower, result = _run(backbone, data, tmp_path, cfg)  # batch = all 8 samples: a fixed batch
    assert result.steps == 40 and len(result.total) == 40 and result.resumed_from == 0
    assert result.total[-1] < 0.7 * result.total[0]
    assert result.bpr[-1] < 0.7 * result.bpr[0] and result.infonce[-1] < 0.7 * result.infonce[0]
    assert result.total[0] == pytest.approx(result.bpr[0] + 0.1 * result.infonce[0], rel=1e-5)
    assert result.trainable_params == RAAlignment.expected_num_params(2, 64, ID_DIM, 1, 2)
    assert tower.alignment.gate_offset == 0.0  # trained: the warm-up offset is gone
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen LLM did not move
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 40 and "optim.0.exp_avg" in tensors and "rng.torch" in tensors


def test_resume_gives_identical_parameters(backbone, data, tmp_path):
    # the schedule (lr and gate warm-up) depends on the total steps: a run extended from 2 to 4 steps
    # equals a straight 4-step run when neither depends on it
    flat = dict(schedule="constant", gate_warmup=0.0, negatives=3)
    cfg4 = TrainConfig(steps=4, batch_size=4, lr=1e-2, checkpoint_every=2, **flat)
    straight, r4 = _run(backbone, data, tmp_path / "a", cfg4)
    _, r2 = _run(backbone, data, tmp_path / "b", TrainConfig(steps=2, batch_size=4, lr=1e-2, checkpoint_every=2, **flat))
    resumed, r22 = _run(backbone, data, tmp_path / "b", cfg4)  # fresh module, state from the checkpoint
    assert r2.steps == 2 and r22.resumed_from == 2 and r22.steps == 4
    for (name, a), (_, b) in zip(straight.alignment.state_dict().items(), resumed.alignment.state_dict().items()):
        assert torch.equal(a, b), name
    assert r22.total == r4.total  # the loss history survives the resume
    # a finished run loads open (the gate's warm-up offset is over), exactly as it was trained
    from rarec_lite.train import load_alignment

    fresh = _tower(backbone)
    assert fresh.alignment.gate_offset == fresh.alignment.gate_init  # untrained: closed
    assert load_alignment(fresh.alignment, tmp_path / "a") == 4 and fresh.alignment.gate_offset == 0.0
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        _run(backbone, data, tmp_path / "b", TrainConfig(steps=6, batch_size=4, lr=5e-3, **flat))


@pytest.mark.parametrize("kw,lam", [({"use_id": False}, 0.0), ({"use_instruction": False}, 0.1),
                                    ({"layer_specific": False}, 0.1), ({}, 0.0)])
def test_every_variant_trains(backbone, data, tmp_path, kw, lam):
    cfg = TrainConfig(steps=2, batch_size=4, lam=lam)
    samples, up, ip, ue, ie, cache = data
    tower = _tower(backbone, **kw)
    start = {k: v.clone() for k, v in tower.alignment.state_dict().items()}
    result = train_alignment(tower, samples, up, ip, None if kw.get("use_id") is False else ue, ie,
                             None if lam == 0 else cache, cfg, tmp_path, progress=False)
    assert result.steps == 2 and (result.infonce == [0.0, 0.0]) == (lam == 0)
    assert any(not torch.equal(start[k], v) for k, v in tower.alignment.state_dict().items())


def test_bad_inputs_raise(backbone, data, tmp_path):
    samples, up, ip, ue, ie, cache = data
    cfg = TrainConfig(steps=1, batch_size=4)
    with pytest.raises(ValueError, match="alignment"):
        train_alignment(TwoTower(backbone), samples, up, ip, ue, ie, cache, cfg, tmp_path)
    with pytest.raises(ValueError, match="text_cache"):
        train_alignment(_tower(backbone), samples, up, ip, ue, ie, None, cfg, tmp_path)
    with pytest.raises(ValueError, match="needs use_id=True"):
        train_alignment(_tower(backbone, use_id=False), samples, up, ip, None, None, cache, cfg, tmp_path)
    with pytest.raises(ValueError, match="user prompts"):
        train_alignment(_tower(backbone), samples, up[:3], ip, ue, ie, cache, cfg, tmp_path)
    param = next(backbone.model.parameters())
    param.requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="frozen"):
            train_alignment(_tower(backbone), samples, up, ip, ue, ie, cache, cfg, tmp_path)
    finally:
        param.requires_grad_(False)


def test_infonce_floor_is_log_b_for_an_empty_soft_prompt():
    # the paper's InfoNCE: ID side = what the soft prompt carries. If it carries nothing (every
    # user's d^(l) equal), the loss is log B whatever the text side; it falls only when each ID maps
    # to its own text representation.
    from rarec_lite.losses import alignment_loss

    g = torch.Generator().manual_seed(0)
    B, H = 8, 16
    text = [torch.randn(B, H, generator=g)]
    empty = [torch.ones(B, H)]
    u = torch.randn(B, H, generator=g)
    out = alignment_loss(u, u, empty, text, empty, text, lam=1.0, temperature=0.1)
    assert out["infonce"].item() >= math.log(B) - 1e-5  # Jensen: a constant query cannot beat log B
    same = alignment_loss(u, u, empty, empty, empty, empty, lam=1.0, temperature=0.1)
    assert same["infonce"].item() == pytest.approx(math.log(B), abs=1e-5)
    aligned = alignment_loss(u, u, text, text, text, text, lam=1.0, temperature=0.1)
    assert aligned["infonce"].item() < 0.01


def test_fresh_negatives_and_statistics_that_follow_the_towers(backbone, data, tmp_path):
    # every step encodes its own uniformly drawn negatives with the current item tower (no stale
    # cache to exploit); the statistics follow each step's states. With lr = 0 the towers never
    # change and with momentum 0 the statistics are exactly the last step's: the moments of that
    # step's negatives (items) and of its batch (users), recomputed here by hand.
    import numpy as np

    from rarec_lite.train import _batch_indices

    samples, up, ip, ue, ie, cache = data
    tower = _tower(backbone)
    tower.set_standardization(torch.randn(20, 64), torch.randn(20, 64))
    cfg = TrainConfig(steps=3, batch_size=4, lr=0.0, negatives=4, stats_momentum=0.0, gate_warmup=0.0,
                      rank_loss="softmax", checkpoint_every=3)
    result = train_alignment(tower, samples, up, ip, ue, ie, cache, cfg, tmp_path, progress=False)
    assert result.steps == 3
    ids = np.sort(np.random.default_rng([cfg.seed, 7919, 2]).choice(len(ip), size=4, replace=False))
    items = tower.encode_batched([ip[i] for i in ids], "item", ie[torch.as_tensor(ids)], progress=False)
    batch = _batch_indices(2, len(samples), 4, cfg.seed)
    users = tower.encode_batched([up[i] for i in batch], "user", ue[batch], progress=False)
    for name, states in (("item", items), ("user", users)):
        mu, sigma = tower.stats[name]
        assert torch.allclose(mu, states.mean(0), atol=1e-5), name
        assert torch.allclose(sigma, states.std(0), atol=1e-5), name
    tensors, _ = load_checkpoint(tmp_path / "checkpoint.safetensors")  # saved for an exact resume
    assert torch.equal(tensors["stats.mu_item"], tower.stats["item"][0])
    # momentum m: the new statistics are m * old + (1 - m) * this step's (variances mix)
    tower.set_standardization(torch.zeros(2, 64) + torch.tensor([[0.0], [2.0]]), torch.ones(2, 64))
    old_mu, old_sigma = tower.stats["item"]
    cfg2 = TrainConfig(steps=1, batch_size=4, lr=0.0, negatives=4, stats_momentum=0.5, gate_warmup=0.0)
    train_alignment(tower, samples, up, ip, ue, ie, cache, cfg2, tmp_path / "m", progress=False)
    ids = np.sort(np.random.default_rng([cfg2.seed, 7919, 0]).choice(len(ip), size=4, replace=False))
    items = tower.encode_batched([ip[i] for i in ids], "item", ie[torch.as_tensor(ids)], progress=False)
    assert torch.allclose(tower.stats["item"][0], 0.5 * old_mu + 0.5 * items.mean(0), atol=1e-5)
    assert torch.allclose(tower.stats["item"][1] ** 2, 0.5 * old_sigma ** 2 + 0.5 * items.var(0), atol=1e-4)


def test_gradient_guard_names_the_silent_tensor(backbone, data, tmp_path):
    from rarec_lite.train import check_gradients

    p = torch.nn.Parameter(torch.ones(3))
    q = torch.nn.Parameter(torch.ones(3))
    (p * 2).sum().backward()
    q.grad = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"zero gradient: q .*tiny-llama"):
        check_gradients([("p", p), ("q", q)], backbone.info)
    check_gradients([("p", p)], backbone.info)  # fine
    # inside training: an alignment whose instruction is cut off from the LLM fails on step 1 (in one softmax
    # with the ID slot: with its own, still closed gates the instruction is rightly left out of the guard)
    samples, up, ip, ue, ie, cache = data
    tower = _tower(backbone, instruction_softmax="shared")
    real = tower.alignment.prefixes
    tower.alignment.prefixes = lambda *a, **k: [x.detach() for x in real(*a, **k)]
    with pytest.raises(RuntimeError, match="gradient guard"):
        train_alignment(tower, samples, up, ip, ue, ie, cache, TrainConfig(steps=2, batch_size=4), tmp_path,
                        progress=False)


@pytest.mark.parametrize("attention", ["gated", "joint"])
@pytest.mark.parametrize("quantization,cpu", [(None, "this"), ("nf4", "this"), ("nf4", "avx512_bf16"),
                                              ("nf4", "no_avx512_bf16"), ("bf16", "this")])
def test_alignment_moves_after_a_no_grad_pass_in_fp32_and_nf4(tmp_path, quantization, cpu, attention, request):
    # the pipeline's order: a no-grad pass first (standardisation statistics), then training. On CPUs
    # with AVX512-BF16, bitsandbytes 0.50.2 used to repack 4-bit weights on that pass and pass no
    # gradient afterwards; load_backbone switches that path off, and the guard would catch it.
    if quantization == "nf4":
        pytest.importorskip("bitsandbytes")
    if cpu == "avx512_bf16":  # bitsandbytes as on such a CPU (conftest.amx_cpu: its repacked, gradient-less path)
        calls = request.getfixturevalue("amx_cpu")
    elif cpu == "no_avx512_bf16":  # as on the other CPU family, whatever this machine's flags (conftest.plain_cpu)
        request.getfixturevalue("plain_cpu")
    from rarec_lite.llm import load_backbone

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAREC_HOME", str(tmp_path / "home"))
        bb = load_backbone("tiny-llama", quantization=quantization)
    samples = [Sample(u, (u % 6, (u + 2) % 6), (u + 1) % 6) for u in range(8)]
    up = [f"bought: {ITEM_TEXT[s.history[-1]]}" for s in samples]
    ip = [f"Product: {t}" for t in ITEM_TEXT]
    g = torch.Generator().manual_seed(0)
    ue, ie = torch.randn(8, ID_DIM, generator=g), torch.randn(6, ID_DIM, generator=g)
    tower = TwoTower(bb, RAAlignment(bb.info, ID_DIM, num_id_tokens=1, num_instruction_tokens=2, seed=0,
                                     attention=attention), pooling="mean", item_norm=True)  # the pipeline's scoring
    tower.set_standardization(tower.sample_text_states(ip, 6, seed=0), tower.sample_text_states(up, 8, seed=0))
    cache = build_text_cache(tower, up, ip, list(range(6)), max_user_tokens=32)
    start = {k: v.clone() for k, v in tower.alignment.state_dict().items()}
    cfg = TrainConfig(steps=3, batch_size=4, lr=1e-2, negatives=4)
    train_alignment(tower, samples, up, ip, ue, ie, cache, cfg, tmp_path / "run", progress=False)
    moved = {k: float((v - start[k]).abs().max()) for k, v in tower.alignment.state_dict().items()}
    # every tensor moved: the instruction and the gate only learn through the (4-bit / bf16) LLM layers
    assert all(m > 0 for m in moved.values()), moved
    # the trainable parameters stay fp32 whatever the backbone's precision (AdamW on bf16 weights would round
    # most updates away); only the activations they feed are cast
    assert {v.dtype for v in tower.alignment.state_dict().values()} == {torch.float32}
    assert tower.dtype == (torch.bfloat16 if quantization == "bf16" else torch.float32)
    if cpu == "avx512_bf16":
        assert calls == []  # load_backbone kept every 4-bit layer off the repacked kernel


def test_popularity_negatives_with_logq(backbone, data, tmp_path):
    # negative_sampling="popularity": negatives drawn with replacement in proportion to count + 1, and the
    # loss is the logQ-corrected softmax; with lr = 0 the first step's loss is recomputed here by hand
    import numpy as np

    from rarec_lite.losses import sampled_softmax_loss
    from rarec_lite.train import _batch_indices

    with pytest.raises(ValueError, match="needs rank_loss='softmax'"):
        TrainConfig(negative_sampling="popularity")
    with pytest.raises(ValueError, match="must be 'uniform' or 'popularity'"):
        TrainConfig(negative_sampling="hard", rank_loss="softmax")
    samples, up, ip, ue, ie, cache = data
    counts = np.array([1000, 0, 0, 0, 0, 0])  # item 0 draws ~99.5% of the negatives
    cfg = TrainConfig(steps=1, batch_size=4, lr=0.0, negatives=8, gate_warmup=0.0, lam=0.0, rank_loss="softmax",
                      negative_sampling="popularity", restandardize=False, checkpoint_every=1)
    with pytest.raises(ValueError, match="item_popularity with one count per item"):
        train_alignment(_tower(backbone), samples, up, ip, ue, ie, cache, cfg, tmp_path / "x", progress=False)
    tower = _tower(backbone)
    result = train_alignment(tower, samples, up, ip, ue, ie, cache, cfg, tmp_path / "p", progress=False,
                             item_popularity=counts)
    p = (counts + 1.0) / (counts + 1.0).sum()
    ids = np.sort(np.random.default_rng([cfg.seed, 7919, 0]).choice(len(ip), size=8, replace=True, p=p))
    assert (ids == 0).sum() >= 6  # popularity-drawn, with replacement
    batch = _batch_indices(0, len(samples), 4, cfg.seed)
    targets = [samples[i].target for i in batch]
    tower.alignment.gate_offset = 0.0  # gate_warmup 0: the step ran with the warm-up open
    with torch.no_grad():
        u = tower.encode_users([up[i] for i in batch], ue[batch])
        v = tower.encode_items([ip[t] for t in targets], ie[targets])
        neg = tower.encode_items([ip[i] for i in ids], ie[torch.as_tensor(ids)])
        log_p = torch.log(torch.as_tensor(p, dtype=torch.float32))
        want = sampled_softmax_loss(u, v, torch.tensor(targets), 1 / 64, neg, torch.as_tensor(ids),
                                    log_p[targets], log_p[torch.as_tensor(ids)])
    assert result.bpr[0] == pytest.approx(want.item(), rel=1e-4)


def test_text_mean_user_statistics_stay_fixed_share_the_item_sigma_and_resume(backbone, data, tmp_path):
    """``user_sigma="item"`` (the pipeline's ``user_statistics = "text"``): while the item statistics follow
    the training, the user tower keeps its text-only mean and is scaled by the items' sigma; checkpoints
    (which refuse tensors sharing memory) hold both, and a resumed run ends where a straight one does."""
    samples, up, ip, ue, ie, cache = data
    flat = dict(schedule="constant", gate_warmup=0.0, negatives=3, batch_size=4, lr=1e-2, checkpoint_every=2)

    def tower():
        t = _tower(backbone)
        items = t.encode(ip, "item", use_prefix=False)
        users = t.encode(up, "user", use_prefix=False)
        return t.set_standardization(items, users, user_sigma="item"), users.mean(0)

    straight, user_mean = tower()
    _, r4 = _run(backbone, data, tmp_path / "a", TrainConfig(steps=4, **flat), straight)
    torch.testing.assert_close(straight.stats["user"][0], user_mean, rtol=0, atol=1e-6)  # the mean did not move
    torch.testing.assert_close(straight.stats["user"][1], straight.stats["item"][1], rtol=0, atol=0)
    assert not torch.equal(straight.stats["item"][1], tower()[0].stats["item"][1])  # the items' sigma did
    _run(backbone, data, tmp_path / "b", TrainConfig(steps=2, **flat), tower()[0])
    resumed, _ = tower()
    _, r22 = _run(backbone, data, tmp_path / "b", TrainConfig(steps=4, **flat), resumed)
    assert r22.resumed_from == 2 and r22.total == r4.total
    for t in ("user", "item"):
        for a, b in zip(straight.stats[t], resumed.stats[t]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="user_sigma"):
        straight.set_standardization(straight.stats["item"][0][None].expand(3, -1), user_sigma="users")
