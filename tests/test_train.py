"""Alignment training on a tiny random LLaMA: the loss goes down, the LLM stays frozen, resume is exact."""

from __future__ import annotations

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
    cfg = TrainConfig(steps=12, batch_size=8, lr=3e-2, lam=0.1, temperature=0.1, checkpoint_every=100)
    tower, result = _run(backbone, data, tmp_path, cfg)  # batch = all 8 samples: a fixed batch
    assert result.steps == 12 and len(result.total) == 12 and result.resumed_from == 0
    assert result.total[-1] < 0.7 * result.total[0]
    assert result.bpr[-1] < result.bpr[0] and result.infonce[0] > 0
    assert result.total[0] == pytest.approx(result.bpr[0] + 0.1 * result.infonce[0], rel=1e-5)
    assert result.trainable_params == RAAlignment.expected_num_params(2, 64, ID_DIM, 1, 2)
    after = backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the frozen LLM did not move
    tensors, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 12 and "optim.0.exp_avg" in tensors and "rng.torch" in tensors


def test_resume_gives_identical_parameters(backbone, data, tmp_path):
    cfg4 = TrainConfig(steps=4, batch_size=4, lr=1e-2, checkpoint_every=2)
    straight, r4 = _run(backbone, data, tmp_path / "a", cfg4)
    _, r2 = _run(backbone, data, tmp_path / "b", TrainConfig(steps=2, batch_size=4, lr=1e-2, checkpoint_every=2))
    resumed, r22 = _run(backbone, data, tmp_path / "b", cfg4)  # fresh module, state from the checkpoint
    assert r2.steps == 2 and r22.resumed_from == 2 and r22.steps == 4
    for (name, a), (_, b) in zip(straight.alignment.state_dict().items(), resumed.alignment.state_dict().items()):
        assert torch.equal(a, b), name
    assert r22.total == r4.total  # the loss history survives the resume
    with pytest.raises(ValueError, match=r"config differs in \['lr'\]"):
        _run(backbone, data, tmp_path / "b", TrainConfig(steps=6, batch_size=4, lr=5e-3))


@pytest.mark.parametrize("kw,lam", [({"use_id": False}, 0.1), ({"use_instruction": False}, 0.1),
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
    with pytest.raises(ValueError, match="user prompts"):
        train_alignment(_tower(backbone), samples, up[:3], ip, ue, ie, cache, cfg, tmp_path)
    param = next(backbone.model.parameters())
    param.requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="frozen"):
            train_alignment(_tower(backbone), samples, up, ip, ue, ie, cache, cfg, tmp_path)
    finally:
        param.requires_grad_(False)
