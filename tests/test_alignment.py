"""RA-Rec alignment module and two towers on tiny random backbones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import numpy as np
import torch

from rarec_lite.alignment import RAAlignment, TwoTower, hidden_state_rms


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny random LLaMA / GPT-2 / BERT, built once for this module in its own RAREC_HOME."""
    from rarec_lite.llm import load_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is much faster on a shared 2-core box
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAREC_HOME", str(tmp_path_factory.mktemp("tiny_home")))
        yield {name: load_backbone(name, quantization=None) for name in ("tiny-llama", "tiny-gpt2", "tiny-bert")}
    torch.set_num_threads(threads)


INFO = SimpleNamespace(num_layers=3, hidden_size=8)


@pytest.mark.parametrize("kw", [
    {},
    {"layer_specific": False},
    {"use_instruction": False},
    {"use_id": False},
    {"num_id_tokens": 3, "num_instruction_tokens": 2},
])
def test_num_trainable_matches_closed_form(kw):
    args = {"num_id_tokens": 1, "num_instruction_tokens": 4, **kw}
    al = RAAlignment(INFO, id_dim=5, **args)
    assert al.num_trainable() == RAAlignment.expected_num_params(3, 8, 5, **args)


def test_closed_form_hand_values():
    # per tower: instruction L*n_instr*H = 3*4*8 = 96; reparam L*(d+1)*n_id*H = 3*6*1*8 = 144;
    # gates: L = 3 per-layer gates (gated attention, the default) + 3 for the instruction's own softmax,
    # or 1 scalar (joint attention)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4) == 2 * (96 + 144 + 3 + 3)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, instruction_softmax="shared") == 2 * (96 + 144 + 3)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, use_instruction=False) == 2 * (144 + 3)
    joint = {"attention": "joint"}
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, **joint) == 2 * (96 + 144 + 1)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, gate=False, **joint) == 2 * (96 + 144)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, layer_specific=False, **joint) == 2 * (96 + 48 + 1)
    assert RAAlignment.expected_num_params(3, 8, 5, 1, 4, use_id=False, **joint) == 2 * (96 + 1)
    # SmolLM2 first 8 layers, H=576, SASRec d=64 (the docstring's example)
    assert RAAlignment.expected_num_params(8, 576, 64, 1, 4, gate=False, **joint) == 635_904
    assert RAAlignment(INFO, 5, gate_init=None, attention="joint").num_trainable() == 2 * (96 + 144)
    assert RAAlignment(INFO, 5).num_trainable() == 2 * (96 + 144 + 3 + 3)
    assert RAAlignment(INFO, 5, instruction_softmax="shared").num_trainable() == 2 * (96 + 144 + 3)


@pytest.mark.parametrize("layer_specific", [True, False])
def test_tied_start_same_draw_for_both_towers_then_apart(layer_specific):
    # tie_init: both towers start from one random draw, so the ID parts of a user and an item state
    # start as the same random map of the SASRec space (their dot product tracks SASRec's score)
    tied = RAAlignment(INFO, id_dim=5, layer_specific=layer_specific, tie_init=True, seed=3)
    apart = RAAlignment(INFO, id_dim=5, layer_specific=layer_specific, tie_init=False, seed=3)
    e = torch.randn(4, 5)
    for u, i in zip(tied.prefixes("user", e), tied.prefixes("item", e)):
        assert torch.equal(u, i)
    assert not torch.equal(apart.prefixes("user", e)[0], apart.prefixes("item", e)[0])
    # the user tower's instruction is drawn first, the same either way; the copies are separate parameters
    assert torch.equal(tied.instruction["user"], apart.instruction["user"])
    assert tied.reparam["user"][0].weight is not tied.reparam["item"][0].weight
    with torch.no_grad():
        tied.reparam["item"][0].weight.add_(1.0)
        tied.instruction["item"].add_(1.0)
    assert not torch.equal(tied.reparam["user"][0].weight, tied.reparam["item"][0].weight)
    assert not torch.equal(tied.instruction["user"], tied.instruction["item"])


def test_prefixes_instruction_first_then_reparameterized_id():
    al = RAAlignment(INFO, id_dim=5, num_id_tokens=2, num_instruction_tokens=3)
    e = torch.randn(4, 5)
    pre = al.prefixes("item", e)
    assert len(pre) == 3 and all(p.shape == (4, 5, 8) for p in pre)
    for layer, p in enumerate(pre):
        assert torch.equal(p[:, :3], al.instruction["item"][layer].expand(4, 3, 8))
        lin = al.reparam["item"][layer]
        expected = (e @ lin.weight.T + lin.bias).view(4, 2, 8)  # independent of nn.Linear's call
        torch.testing.assert_close(p[:, 3:], expected)
    # towers are separate parameters (a tied start makes them equal until they train)
    assert torch.equal(al.prefixes("user", e)[0], pre[0])
    assert al.instruction["user"] is not al.instruction["item"]


def test_variants_and_errors():
    e = torch.randn(2, 5)
    shared = RAAlignment(INFO, id_dim=5, num_instruction_tokens=0, use_instruction=False, layer_specific=False)
    pre = shared.prefixes("user", e)
    assert all(torch.equal(p, pre[0]) for p in pre)  # one projector for every layer
    no_id = RAAlignment(INFO, id_dim=5, use_id=False)
    assert no_id.prefixes("user", None, batch_size=2)[0].shape == (2, 4, 8)
    assert torch.equal(no_id.prefixes("user", e)[1], no_id.prefixes("user", None, batch_size=2)[1])  # ids ignored
    with pytest.raises(ValueError, match="nothing to train"):
        RAAlignment(INFO, 5, use_id=False, use_instruction=False)
    with pytest.raises(ValueError, match="id_emb"):
        RAAlignment(INFO, 5).prefixes("user", None)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        RAAlignment(INFO, 5).prefixes("user", torch.randn(2, 4))
    with pytest.raises(ValueError, match="tower"):
        RAAlignment(INFO, 5).prefixes("shop", e)
    with pytest.raises(ValueError, match="init_scale"):
        RAAlignment(INFO, 5, init_scale=[1.0, 2.0])


def test_init_scale_sets_prefix_rms():
    al = RAAlignment(SimpleNamespace(num_layers=2, hidden_size=256), id_dim=64, num_instruction_tokens=8,
                     init_scale=[0.5, 3.0])
    e = torch.randn(64, 64)
    for layer, target in enumerate([0.5, 3.0]):
        p = al.prefixes("user", e)[layer]
        assert p[:, :8].pow(2).mean().sqrt().item() == pytest.approx(target, rel=0.15)
        assert p[:, 8:].pow(2).mean().sqrt().item() == pytest.approx(target, rel=0.15)


def test_text_only_encoding_is_the_plain_model(backbones):
    bb = backbones["tiny-llama"]
    tower = TwoTower(bb, None)
    texts = ["a red shoe", "gold", "a long text about hats and belts"]
    final, layers = tower.encode_text_only(texts, per_layer=True, batch_size=2)
    assert final.shape == (3, 64) and layers.shape == (3, 2, 64)
    # independent: the plain Hugging Face model, last real token of each text
    for k, text in enumerate(texts):
        ids = bb.tokenizer(text, return_tensors="pt")["input_ids"]
        out = bb.model(input_ids=ids, output_hidden_states=True)
        torch.testing.assert_close(final[k], out.hidden_states[-1][0, -1], atol=1e-4, rtol=1e-4)
        # per layer: the pooled *input* of each layer (layer 1's input = the token embeddings)
        torch.testing.assert_close(layers[k, 0].float(), out.hidden_states[0][0, -1], atol=2e-3, rtol=2e-3)
        torch.testing.assert_close(layers[k, 1].float(), out.hidden_states[1][0, -1], atol=2e-3, rtol=2e-3)
    # batched encoding puts rows back in input order
    torch.testing.assert_close(tower.encode(texts, "item"), final, atol=1e-4, rtol=1e-4)
    assert tower.score(final[:2], final).shape == (2, 3)
    torch.testing.assert_close(tower.score(final[:2], final)[1, 2], final[1] @ final[2])  # raw by default


def test_standardized_score_matches_numpy_and_undoes_a_massive_dimension(backbones):
    tower = TwoTower(backbones["tiny-llama"], None)
    h = tower.backbone.info.hidden_size
    gen = torch.Generator().manual_seed(0)
    # item states with one "massive activation" dimension: large, item-specific, meaningless
    items = torch.randn(50, h, generator=gen)
    items[:, 7] = 200 + 30 * torch.randn(50, generator=gen)
    users = items[:5].clone() + 0.1 * torch.randn(5, h, generator=gen)  # each user resembles one item
    users[:, 7] = 210.0
    raw = tower.score(users, items)
    # raw: the massive dimension decides, so every user gets the same top item
    assert len(set(raw.argmax(1).tolist())) == 1
    tower.set_standardization(items)
    z = tower.score(users, items)
    # independent computation in numpy (float64)
    it, us = items.double().numpy(), users.double().numpy()
    mu, sd = it.mean(0), it.std(0, ddof=1)
    expected = ((us - mu) / sd) @ ((it - mu) / sd).T
    np.testing.assert_allclose(z.double().numpy(), expected, rtol=1e-4, atol=1e-3)
    assert z.argmax(1).tolist() == [0, 1, 2, 3, 4]  # each user finds its own item again
    assert tower.mu.requires_grad is False and list(tower.parameters()) == []
    # per tower: the user side is centred and scaled by the users' own statistics
    other = torch.randn(30, h, generator=gen) * 3.0 + 1.0  # e.g. states of training users' prompts
    tower.set_standardization(items, other)
    us_mu, us_sd = other.double().numpy().mean(0), other.double().numpy().std(0, ddof=1)
    expected = ((us - us_mu) / us_sd) @ ((it - mu) / sd).T
    np.testing.assert_allclose(tower.score(users, items).double().numpy(), expected, rtol=1e-4, atol=1e-3)
    tower.set_standardization(None)
    torch.testing.assert_close(tower.score(users, items), raw)
    with pytest.raises(ValueError, match=r"states must be \(N >= 2"):
        tower.set_standardization(items[:, :3])
    # the cosine item tower: each standardised item row rescaled to length sqrt(H), users untouched
    cos_tower = TwoTower(backbones["tiny-llama"], None, item_norm=True).set_standardization(items, other)
    zi = (it - mu) / sd
    zi_unit = zi / np.linalg.norm(zi, axis=1, keepdims=True)
    zu = (us - us_mu) / us_sd
    np.testing.assert_allclose(cos_tower.score(users, items).double().numpy(), np.sqrt(h) * zu @ zi_unit.T,
                               rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(cos_tower.standardize(items, "item").norm(dim=1).numpy(), np.sqrt(h), rtol=1e-5)
    torch.testing.assert_close(cos_tower.standardize(users, "user"), tower.set_standardization(items, other)
                               .standardize(users, "user"))
    cosine = zu @ zi_unit.T / np.linalg.norm(zu, axis=1, keepdims=True)  # each user's ranking: the cosine's
    assert (cos_tower.score(users, items).argsort(1) == torch.as_tensor(cosine).argsort(1)).all()


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
@pytest.mark.parametrize("attention", ["gated", "joint"])
def test_soft_prompt_changes_output_and_only_alignment_gets_gradients(backbones, name, attention):
    bb = backbones[name]
    al = RAAlignment(bb.info, id_dim=6, num_id_tokens=1, num_instruction_tokens=2, gate_init=None, attention=attention)
    if attention == "gated":  # every layer's gate open (they start closed except the last one's), the instruction's too
        with torch.no_grad():
            for g in [*al.gate.values(), *al.instruction_gate.values()]:
                g.fill_(0.5)
    tower = TwoTower(bb, al)
    assert tower.pooling == ("last" if bb.info.is_causal else "mean")
    assert sum(p.numel() for p in tower.parameters()) == al.num_trainable()  # backbone not registered
    texts, e = ["red shoe", "blue hat!"], torch.randn(2, 6)
    final, layers = tower.encode_users(texts, e, per_layer=True)
    assert final.shape == (2, 64) and len(layers) == bb.info.num_layers
    plain = tower.encode(texts, "user", use_prefix=False)
    assert (final - plain).abs().max() > 1e-3  # the soft prompt is read by the model
    w = torch.randn(64, generator=torch.Generator().manual_seed(0))  # not .sum(): a LayerNorm output sums to a constant
    ((final @ w).sum() + sum((x @ w).sum() for x in layers)).backward()
    assert all(p.grad is None for p in bb.model.parameters())
    for name, p in al.named_parameters():  # the user tower's parameters learn, the item tower's are untouched
        assert (p.grad is not None and p.grad.abs().sum() > 0) == name.split(".")[1].startswith("user"), name


def test_hidden_state_rms_of_embeddings(backbones):
    bb = backbones["tiny-llama"]
    rms = hidden_state_rms(bb, ["abc", "hello"])
    assert len(rms) == bb.info.num_layers
    ids = bb.tokenizer(["abc", "hello"], padding=True, return_tensors="pt")
    emb = bb.model.get_input_embeddings()(ids["input_ids"])[ids["attention_mask"].bool()]
    per_token = sorted(float(v.pow(2).mean().sqrt()) for v in emb)  # 4 + 6 tokens (BOS + bytes)
    assert len(per_token) == 10
    assert rms[0] == pytest.approx(per_token[4], rel=1e-4)  # torch.median: the lower middle value


def test_alignment_for_another_backbone_is_rejected(backbones):
    with pytest.raises(ValueError, match="alignment is for"):
        TwoTower(backbones["tiny-llama"], RAAlignment(INFO, 5))


def test_closed_gate_is_the_zero_shot_model_and_still_passes_gradients(backbones):
    bb = backbones["tiny-llama"]
    al = RAAlignment(bb.info, id_dim=6, num_id_tokens=1, num_instruction_tokens=2, gate_init=-30.0, attention="joint")
    tower = TwoTower(bb, al)
    texts, e = ["red shoe", "blue hat!"], torch.randn(2, 6)
    plain = tower.encode(texts, "user", use_prefix=False)
    closed = tower.encode_users(texts, e)
    torch.testing.assert_close(closed, plain, atol=1e-5, rtol=1e-5)  # exp(-30) of attention: nothing visible
    closed.pow(2).sum().backward()
    # the instruction gets a (tiny, non-zero) gradient through the closed gate, and so does the gate
    assert al.instruction["user"].grad.abs().sum() > 0 and al.gate["user"].grad is not None
    al.gate_offset = 0.0  # a trained module: the gate is its learned value (0 = plain prefix tuning)
    opened = tower.encode_users(texts, e)
    assert (opened - plain).abs().max() > 1e-3


def test_gated_warmup_starts_exactly_zero_shot_and_opens_the_last_layer_first(backbones):
    bb = backbones["tiny-llama"]  # 2 layers
    al = RAAlignment(bb.info, id_dim=6, num_id_tokens=1, num_instruction_tokens=2, last_layer_gate=0.5)
    tower = TwoTower(bb, al)
    texts, e = ["red shoe", "blue hat!"], torch.randn(2, 6)
    plain = tower.encode(texts, "user", use_prefix=False)
    assert al.warmup_open == 0.0 and not al.soft_prompt_visible  # untrained: gate_offset = gate_init
    torch.testing.assert_close(tower.encode_users(texts, e), plain, rtol=0, atol=0)
    assert al.gate["user"].tolist() == [0.0, 0.5] and al.instruction_gate["user"].tolist() == [0.0, 0.0]
    assert al.prefix_groups == (2, 1)  # the instruction's softmax and gates are its own
    assert al.closed_parameter_names() == ({f"reparam.{t}.0.{w}" for t in ("user", "item") for w in ("weight", "bias")}
                                           | {"instruction.user", "instruction.item"})
    al.gate_offset = al.gate_init / 4  # three quarters of the warm-up
    assert al.warmup_open == pytest.approx(0.75) and al.soft_prompt_visible
    torch.testing.assert_close(al.prefix_gate("user"), torch.tensor([[0.0, 0.0], [0.0, 0.375]]))
    opened = tower.encode_users(texts, e)
    assert (opened - plain).abs().max() > 1e-3
    # with the instruction's gates closed, the random instruction vectors change nothing: the ID slot alone
    no_instr = RAAlignment(bb.info, id_dim=6, num_id_tokens=1, use_instruction=False, last_layer_gate=0.5)
    no_instr.load_state_dict({k: v for k, v in al.state_dict().items() if not k.startswith("instruction")})
    no_instr.gate_offset = al.gate_offset
    torch.testing.assert_close(TwoTower(bb, no_instr).encode_users(texts, e), opened, rtol=0, atol=1e-6)
    opened.pow(2).sum().backward()
    assert (al.gate["user"].grad != 0).all()  # the closed layer's gate learns too
    assert (al.instruction_gate["user"].grad != 0).all()  # and so do the instruction's gates
    assert al.instruction["user"].grad is None or al.instruction["user"].grad.abs().sum() == 0
    assert al.reparam["user"][1].weight.grad.abs().sum() > 0
    assert al.reparam["user"][0].weight.grad is None or al.reparam["user"][0].weight.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="instruction_softmax"):
        RAAlignment(bb.info, 6, instruction_softmax="joint")
    assert RAAlignment(bb.info, 6, instruction_softmax="shared").prefix_groups is None
    assert al.prefix_bias("user") is None and RAAlignment(bb.info, 6, attention="joint").prefix_gate("user") is None
    with pytest.raises(ValueError, match="attention must be"):
        RAAlignment(bb.info, 6, attention="sum")


def test_id_representation_is_the_mean_of_the_id_slots():
    al = RAAlignment(INFO, id_dim=5, num_id_tokens=2, num_instruction_tokens=3)
    e = torch.randn(4, 5)
    reps, pre = al.id_representations("user", e), al.prefixes("user", e)
    assert len(reps) == 3
    for layer in range(3):
        torch.testing.assert_close(reps[layer], pre[layer][:, 3:].mean(1))
    with pytest.raises(ValueError, match="no ID representation"):
        RAAlignment(INFO, 5, use_id=False).id_representations("user", e)


def test_batched_text_only_encoding_encodes_each_distinct_text_once(backbones):
    tower = TwoTower(backbones["tiny-llama"], None)
    texts = ["red shoe", "gold", "red shoe", "a hat", "gold"]
    calls = []
    real = tower.encode
    tower.encode = lambda t, *a, **k: calls.append(list(t)) or real(t, *a, **k)
    final, layers = tower.encode_batched(texts, "item", per_layer=True, batch_size=2)
    assert sorted(x for c in calls for x in c) == ["a hat", "gold", "red shoe"]
    torch.testing.assert_close(final[2], final[0]) and torch.testing.assert_close(layers[4], layers[1])
    torch.testing.assert_close(final, real(texts, "item"), atol=1e-4, rtol=1e-4)


def test_isometric_reparameterization_inverts_the_frozen_last_layer_path(backbones):
    """W = top-d right singular vectors of J = diag(g_final / sigma) O R V diag(g_input), J rebuilt here
    from the raw weight matrices (the package reads the maps by feeding the identity through them)."""
    bb = backbones["tiny-llama"]
    info, model = bb.info, bb.model
    d = 6
    al = RAAlignment(info, id_dim=d, num_id_tokens=1, use_instruction=False, last_layer_gate=0.5)
    tower = TwoTower(bb, al, pooling="mean")
    with pytest.raises(ValueError, match="standardisation statistics"):
        tower.init_isometric_reparameterization()
    items = tower.encode(["red shoe", "blue hat", "green sock!", "a yellow scarf", "black boots"], "item",
                         use_prefix=False)
    tower.set_standardization(items)
    sv = tower.init_isometric_reparameterization()

    block = model.layers[info.num_layers - 1]
    rep = info.num_heads // info.num_kv_heads
    v = block.self_attn.v_proj.weight.detach().view(info.num_kv_heads, info.head_dim, -1)
    v = v.repeat_interleave(rep, 0).reshape(info.num_heads * info.head_dim, -1)
    j = (model.norm.weight.detach() / tower.sigma)[:, None] * (block.self_attn.o_proj.weight.detach() @ v) \
        * block.input_layernorm.weight.detach()[None, :]
    s_ref = torch.linalg.svdvals(j)
    torch.testing.assert_close(sv, s_ref, rtol=1e-4, atol=1e-5)
    w = al.reparam["user"][info.num_layers - 1].weight.detach()
    assert w.shape == (info.hidden_size, d)
    c = s_ref[:d].mean()
    # W = V_d S_d^-1 c: orthogonal columns of norms c / s_k, and J W = c U_d, so (J W)^T (J W) = c^2 I: the
    # ID part's dot product is c^2 times SASRec's, no direction of SASRec's space weighted more than another
    torch.testing.assert_close(w.T @ w, torch.diag((c / s_ref[:d]) ** 2), rtol=1e-4, atol=1e-5)
    gram = (j @ w).T @ (j @ w)
    torch.testing.assert_close(gram, c ** 2 * torch.eye(d), rtol=1e-4, atol=1e-4)
    e_u, e_i = torch.randn(d), torch.randn(d)
    torch.testing.assert_close((j @ w @ e_u) @ (j @ w @ e_i), c ** 2 * (e_u @ e_i), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(al.reparam["item"][info.num_layers - 1].weight, w, rtol=0, atol=0)
    assert al.reparam["user"][info.num_layers - 1].bias.abs().max() == 0
    with pytest.raises(ValueError, match="LLaMA-family"):
        g = TwoTower(backbones["tiny-gpt2"], RAAlignment(backbones["tiny-gpt2"].info, 6), pooling="mean")
        g.init_isometric_reparameterization()
    with pytest.raises(ValueError, match="exceeds"):
        big = TwoTower(bb, RAAlignment(info, id_dim=info.hidden_size + 1), pooling="mean")
        big.set_standardization(items).init_isometric_reparameterization()
