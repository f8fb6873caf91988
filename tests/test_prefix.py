"""Per-layer prefix keys/values (RA-Rec Sec. 3) on tiny random LLaMA, GPT-2 and BERT models.

The independent checks: (1) for decoder LMs, a prefix made of the hidden states that real
tokens have at each layer must reproduce running the plain model on those tokens followed by
the text (prefix K/V are exactly a KV cache); (2) layer-0 prefix keys/values and a BERT layer
recomputed by hand from the weights with plain tensor ops.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rarec_lite.llm import load_backbone
from rarec_lite.prefix import extended_attention_mask, forward_with_prefix, pool, prefix_key_values

NAMES = ["tiny-llama", "tiny-gpt2", "tiny-bert"]
TEXTS = ["a red leather ankle boot", "hat"]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """fp32 tiny models of the three families, built once for this module."""
    import os

    old = os.environ.get("RAREC_HOME")
    os.environ["RAREC_HOME"] = str(tmp_path_factory.mktemp("prefix_home"))
    try:
        return {n: load_backbone(n, quantization=None) for n in NAMES}
    finally:
        if old is None:
            os.environ.pop("RAREC_HOME", None)
        else:
            os.environ["RAREC_HOME"] = old


def _batch(bb, texts=TEXTS):
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _prefixes(bb, B, P, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, P, bb.info.hidden_size, generator=g) for _ in range(bb.info.num_layers)]


@pytest.mark.parametrize("name", NAMES)
def test_zero_length_prefix_equals_plain_model(backbones, name):
    bb = backbones[name]
    ids, mask = _batch(bb)
    plain = bb.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    empty = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 0))  # goes through the cache path
    none = forward_with_prefix(bb, ids, mask, None)
    assert len(plain) == len(empty) == len(none) == bb.info.num_layers + 1
    for a, b, c in zip(plain, empty, none):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)
        torch.testing.assert_close(c, a, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_prefix_changes_outputs(backbones, name):
    bb = backbones[name]
    ids, mask = _batch(bb)
    plain = forward_with_prefix(bb, ids, mask, None)
    out = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 3))
    real = mask.bool()
    assert out[-1].shape == plain[-1].shape == (2, ids.shape[1], 64)
    assert (out[-1] - plain[-1])[real].abs().max() > 1e-3
    assert (out[1] - plain[1])[real].abs().max() > 1e-3  # already after the first layer


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_prefix_of_real_token_states_equals_running_those_tokens(backbones, name):
    """Decoder LMs: prefix d^(l) = the layer-l inputs of P real tokens must give exactly the
    plain model's states for the text placed after those tokens (positions P..P+T-1)."""
    bb = backbones[name]
    ids, mask = _batch(bb)
    B, T = ids.shape
    lead = torch.tensor([[70, 71, 72, 73]] * B)  # P = 4 byte tokens
    P = lead.shape[1]
    full_ids = torch.cat([lead, ids], dim=1)
    full_mask = torch.cat([torch.ones(B, P, dtype=mask.dtype), mask], dim=1)
    full = bb.model(input_ids=full_ids, attention_mask=full_mask, output_hidden_states=True).hidden_states
    d = [full[l][:, :P] for l in range(bb.info.num_layers)]  # inputs of each layer at the P lead tokens
    out = forward_with_prefix(bb, ids, mask, d)
    real = mask.bool()
    for l in range(bb.info.num_layers + 1):
        torch.testing.assert_close(out[l][real], full[l][:, P:][real], rtol=1e-4, atol=1e-5)


def test_llama_layer0_prefix_kv_by_hand(backbones):
    """RMSNorm -> k/v projections -> rotary at positions 0..P-1, written out with plain ops."""
    bb = backbones["tiny-llama"]
    layer = bb.model.layers[0]
    cfg = bb.model.config
    B, P, hd, kvh = 2, 3, bb.info.head_dim, bb.info.num_kv_heads
    d = _prefixes(bb, B, P)[0]
    x = d * torch.rsqrt(d.pow(2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * layer.input_layernorm.weight
    k = (x @ layer.self_attn.k_proj.weight.T).view(B, P, kvh, hd).transpose(1, 2)
    v = (x @ layer.self_attn.v_proj.weight.T).view(B, P, kvh, hd).transpose(1, 2)
    theta = cfg.rope_parameters["rope_theta"]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.arange(P, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (P, hd/2)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rotated = torch.cat([-k[..., hd // 2:], k[..., : hd // 2]], dim=-1)
    k_rot = k * cos + rotated * sin
    k_code, v_code = prefix_key_values(bb, 0, d)
    assert k_code.shape == v_code.shape == (B, kvh, P, hd)
    torch.testing.assert_close(k_code, k_rot, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v_code, v, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(k_code[:, :, 1], k[:, :, 1], atol=1e-3)  # position 1 is really rotated


def test_bert_layer0_with_prefix_by_hand(backbones):
    """One BERT layer with prefix keys/values, recomputed from its weights (post-LN)."""
    bb = backbones["tiny-bert"]
    ids, mask = _batch(bb)
    B, T = ids.shape
    P, nh, hd = 3, bb.info.num_heads, bb.info.head_dim
    d = _prefixes(bb, B, P)
    out = forward_with_prefix(bb, ids, mask, d)
    h = out[0]  # embeddings (text positions 0..T-1 for BERT)
    L0 = bb.model.encoder.layer[0]
    sa, so = L0.attention.self, L0.attention.output

    def heads(x):
        return x.view(B, -1, nh, hd).transpose(1, 2)

    q = heads(F.linear(h, sa.query.weight, sa.query.bias))
    k = heads(F.linear(torch.cat([d[0], h], 1), sa.key.weight, sa.key.bias))
    v = heads(F.linear(torch.cat([d[0], h], 1), sa.value.weight, sa.value.bias))
    keep = torch.cat([torch.ones(B, P), mask.float()], 1)[:, None, None, :]  # bidirectional, no pads
    scores = (q @ k.transpose(-1, -2)) / hd**0.5 + (1 - keep) * -1e9
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, nh * hd)
    a = F.layer_norm(F.linear(ctx, so.dense.weight, so.dense.bias) + h, (64,), so.LayerNorm.weight, so.LayerNorm.bias, so.LayerNorm.eps)
    inter = F.gelu(F.linear(a, L0.intermediate.dense.weight, L0.intermediate.dense.bias))
    o = L0.output
    expected = F.layer_norm(F.linear(inter, o.dense.weight, o.dense.bias) + a, (64,), o.LayerNorm.weight, o.LayerNorm.bias, o.LayerNorm.eps)
    real = mask.bool()
    torch.testing.assert_close(out[1][real], expected[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_prefix_source_not_the_llm(backbones, name):
    bb = backbones[name]
    ids, mask = _batch(bb)
    L, H, P = bb.info.num_layers, bb.info.hidden_size, 2
    torch.manual_seed(0)
    source = torch.nn.Linear(8, L * P * H)
    z = torch.randn(2, 8)
    prefixes = list(source(z).view(2, L, P, H).unbind(1))
    hs = forward_with_prefix(bb, ids, mask, prefixes)
    w = torch.randn(H)  # a random readout: a LayerNorm output's plain sum has zero gradient
    (pool(hs[-1], mask, "mean") @ w).sum().backward()
    assert source.weight.grad is not None and source.weight.grad.abs().sum() > 0
    # every layer's slice of the source gets gradient (each layer's prefix is used)
    per_layer = source.weight.grad.view(L, P * H, 8).abs().sum(dim=(1, 2))
    assert (per_layer > 0).all(), per_layer
    assert all(p.grad is None for p in bb.model.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["last", "mean"])
def test_right_padding_does_not_change_a_row(backbones, name, how):
    bb = backbones[name]
    ids, mask = _batch(bb)
    assert mask[1].sum() < mask.shape[1]  # row 1 is padded
    d = _prefixes(bb, 2, 2)
    both = pool(forward_with_prefix(bb, ids, mask, d)[-1], mask, how)
    n = int(mask[1].sum())
    alone = pool(forward_with_prefix(bb, ids[1:, :n], mask[1:, :n], [x[1:] for x in d])[-1], mask[1:, :n], how)
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)


CPU_KINDS = ["this-cpu", "avx512bf16"]  # the second: bitsandbytes as on an AMX Xeon (fixture amx_cpu)


@pytest.mark.parametrize("cpu", CPU_KINDS)
def test_nf4_tiny_llama_trains_a_step(cpu, request):
    amx_calls = request.getfixturevalue("amx_cpu") if cpu == "avx512bf16" else []
    bb = load_backbone("tiny-llama", quantization="nf4")
    assert type(bb.model.layers[0].self_attn.k_proj).__name__ == "Linear4bit"
    ids, mask = _batch(bb)
    L, H, P = bb.info.num_layers, bb.info.hidden_size, 2
    plain = forward_with_prefix(bb, ids, mask, None)
    empty = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 0))
    torch.testing.assert_close(empty[-1], plain[-1], rtol=0, atol=1e-6)

    torch.manual_seed(0)
    source = torch.nn.Linear(8, L * P * H)
    z, target = torch.randn(2, 8), torch.randn(2, H)
    opt = torch.optim.Adam(source.parameters(), lr=1e-2)

    def loss_fn():
        hs = forward_with_prefix(bb, ids, mask, list(source(z).view(2, L, P, H).unbind(1)))
        return F.mse_loss(pool(hs[-1], mask, "last"), target)

    loss0 = loss_fn()
    loss0.backward()
    assert source.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.model.parameters())
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        loss1 = loss_fn()
    assert loss1 < loss0, (loss0.item(), loss1.item())
    assert amx_calls == []


@pytest.mark.parametrize("cpu", CPU_KINDS)
@pytest.mark.parametrize("quantization", ["nf4", "int8"])
@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-bert"])
def test_quantized_gpt2_and_bert_take_prefixes(name, quantization, cpu, request):
    if cpu == "avx512bf16":
        request.getfixturevalue("amx_cpu")
    bb = load_backbone(name, quantization=quantization)
    with torch.no_grad():  # the no-grad pass that repacks 4-bit layers on such a CPU without the fix
        forward_with_prefix(bb, *_batch(bb), None)
    ids, mask = _batch(bb)
    plain = forward_with_prefix(bb, ids, mask, None)
    empty = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 0))
    torch.testing.assert_close(empty[-1], plain[-1], rtol=0, atol=1e-5)
    d = [x.requires_grad_() for x in _prefixes(bb, 2, 2)]
    out = forward_with_prefix(bb, ids, mask, d)
    (pool(out[-1], mask) @ torch.randn(bb.info.hidden_size)).sum().backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in d)


def test_extended_mask_by_hand():
    m = extended_attention_mask(torch.tensor([[1, 1, 0]]), num_prefix=2, causal=True)
    allowed = (m == 0).int()[0, 0]
    # rows: text queries 0..2; columns: 2 prefix slots, then text keys 0..2
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert torch.equal(allowed, expected)
    assert m.min() == torch.finfo(torch.float32).min
    bi = (extended_attention_mask(torch.tensor([[1, 1, 0]]), 1, causal=False) == 0).int()[0, 0]
    assert torch.equal(bi, torch.tensor([[1, 1, 1, 0]] * 3))


def test_pool_by_hand():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # row0: [0,1],[2,3],[4,5]
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(h, mask, "last"), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    assert torch.equal(pool(h, mask, "mean"), torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    with pytest.raises(ValueError, match="right-padded"):
        pool(h, torch.tensor([[0, 1, 1], [1, 1, 1]]), "last")
    with pytest.raises(ValueError, match="no real token"):
        pool(h, torch.tensor([[0, 0, 0], [1, 1, 1]]), "mean")
    with pytest.raises(ValueError, match="how='max'"):
        pool(h, mask, "max")


def test_bad_prefixes_are_named(backbones):
    bb = backbones["tiny-gpt2"]
    ids, mask = _batch(bb)
    d = _prefixes(bb, 2, 2)
    with pytest.raises(ValueError, match="2 layers"):
        forward_with_prefix(bb, ids, mask, d[:1])
    with pytest.raises(ValueError, match=r"prefixes\[1\] is None"):
        forward_with_prefix(bb, ids, mask, [d[0], None])
    with pytest.raises(ValueError, match=r"prefixes\[1\] has P=3"):
        forward_with_prefix(bb, ids, mask, [d[0], torch.zeros(2, 3, 64)])
    with pytest.raises(ValueError, match=r"prefixes\[0\] has shape \(2, 2, 32\)"):
        forward_with_prefix(bb, ids, mask, [torch.zeros(2, 2, 32), d[1]])
    with pytest.raises(ValueError, match="256 positions"):
        forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 250))


# ----------------------------------------------------------------------------- 4-bit on AVX512-BF16 CPUs (issue 12)
#
# bitsandbytes 0.50.2 on a CPU with avx512_bf16: every Linear4bit is built with
# support_avx512bf16_for_cpu = True; its first no-grad CPU forward repacks the weight
# (quant_state.packing_format_for_cpu = True) and from then on bnb.matmul_4bit calls
# bitsandbytes.functional.gemv_4bit, a bf16 kernel with no autograd formula (an empty input
# there is a SIGFPE). `amx_cpu` reproduces that on any CPU: bnb's feature check says yes, and
# gemv_4bit is replaced by a stand-in that computes what the real kernel computes (bf16, from
# the repacked layout) without a graph, and raises instead of crashing on an empty input. The
# real kernel is never called, so nothing here can kill the interpreter.


def _prefix_grads(bb, ids, mask, seed=0, P=2):
    """Gradient of a fixed readout w.r.t. per-layer prefixes; zeros where none reaches them."""
    d = [x.requires_grad_() for x in _prefixes(bb, ids.shape[0], P, seed)]
    hs = forward_with_prefix(bb, ids, mask, d)
    w = torch.randn(bb.info.hidden_size, generator=torch.Generator().manual_seed(seed))
    loss = (pool(hs[-1], mask, "mean") @ w).sum()
    if not loss.requires_grad:  # nothing connects the output to the prefixes
        return [torch.zeros_like(x) for x in d]
    grads = torch.autograd.grad(loss, d, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(d, grads)]


def test_nf4_no_grad_then_train_broken_path_gives_no_gradient(amx_cpu):
    """(a) Without ensure_trainable_4bit_path: a no-grad pass repacks every 4-bit layer and the
    prefixes then receive no gradient at all, although the forward output is right."""
    from rarec_lite.llm import untrainable_4bit_layers

    bb = load_backbone("tiny-llama", quantization="nf4")
    ids, mask = _batch(bb)
    with torch.no_grad():
        ref = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 2))[-1]
    import bitsandbytes as bnb

    for m in bb.model.modules():  # undo the fix: the state bnb gives its layers on such a CPU
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    with torch.no_grad():
        out = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 2))[-1]
    assert len(untrainable_4bit_layers(bb.model)) == 14
    assert all(m.weight.quant_state.packing_format_for_cpu for m in bb.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert amx_cpu, "the repacked kernel was called"
    torch.testing.assert_close(out, ref, rtol=0, atol=0.1)  # same function, computed in bf16
    grads = _prefix_grads(bb, ids, mask)
    assert all(float(g.abs().sum()) == 0.0 for g in grads)
    # the P = 0 guard: an empty prefix never reaches the repacked layers (no SIGFPE)
    n = len(amx_cpu)
    forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 0))
    assert all(0 not in shape for shape in amx_cpu[n:])


def test_nf4_no_grad_then_train_gives_the_prefix_its_gradient(amx_cpu):
    """(b) load_backbone's fix: after a no-grad pass on an (emulated) AVX512-BF16 CPU the
    prefixes get the same finite, non-zero gradient as on a fresh model that never ran one."""
    bb = load_backbone("tiny-llama", quantization="nf4")
    ids, mask = _batch(bb)
    with torch.no_grad():
        forward_with_prefix(bb, ids, mask, None)
        forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 2))
    grads = _prefix_grads(bb, ids, mask)
    assert amx_cpu == []  # the repacked kernel never ran
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert all(g.abs().sum() > 0 for g in grads)  # every layer's prefix (each goes through 4-bit K/V)


def test_nf4_prefix_gradient_after_no_grad_pass_matches_a_fresh_model(amx_cpu):
    bb = load_backbone("tiny-llama", quantization="nf4")
    ids, mask = _batch(bb)
    with torch.no_grad():
        forward_with_prefix(bb, ids, mask, None)
    after = _prefix_grads(bb, ids, mask)
    fresh = load_backbone("tiny-llama", quantization="nf4")  # same seed, same NF4 weights, no prior pass
    expected = _prefix_grads(fresh, ids, mask)
    for a, e in zip(after, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_zero_length_inputs_never_reach_a_layer(quantization):
    bb = load_backbone("tiny-llama", quantization=quantization)
    ids, mask = _batch(bb)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
             for m in bb.model.modules() if type(m).__name__ in ("Linear4bit", "Linear")]
    try:
        d = [x.requires_grad_() for x in _prefixes(bb, 2, 0)]
        out = forward_with_prefix(bb, ids, mask, d)
        assert seen and all(0 not in s for s in seen), seen
        assert out[-1].requires_grad  # the empty prefixes stay part of the graph (their grad is empty)
        empty = forward_with_prefix(bb, ids[:0], mask[:0], [x[:0] for x in d])
        assert [tuple(h.shape) for h in empty] == [(0, ids.shape[1], 64)] * 3
        assert all(0 not in s for s in seen), seen
    finally:
        for h in hooks:
            h.remove()
    with pytest.raises(ValueError, match="T = 0"):
        forward_with_prefix(bb, ids[:, :0], mask[:, :0], None)


def test_gradient_checkpointing_in_training_mode_is_refused_with_the_fix(backbones):
    bb = load_backbone("tiny-llama", quantization=None)
    ids, mask = _batch(bb)
    d = _prefixes(bb, 2, 2)
    expected = forward_with_prefix(bb, ids, mask, d)[-1]
    bb.model.gradient_checkpointing_enable()
    # eval mode (what load_backbone returns): checkpointing is inactive, prefixes work
    torch.testing.assert_close(forward_with_prefix(bb, ids, mask, d)[-1], expected, rtol=0, atol=0)
    bb.model.train()
    with pytest.raises(ValueError, match=r"gradient checkpointing.*drops the past-key-value cache.*model\.eval\(\)"):
        forward_with_prefix(bb, ids, mask, d)
    with torch.no_grad():  # no backward to replay: transformers keeps the cache, so this is fine
        torch.testing.assert_close(forward_with_prefix(bb, ids, mask, d)[-1], expected, rtol=0, atol=0)
    plain = forward_with_prefix(bb, ids, mask, None)  # no prefix: nothing to drop
    assert len(plain) == 3
    bb.model.gradient_checkpointing_disable()
    torch.testing.assert_close(forward_with_prefix(bb, ids, mask, d)[-1], expected, rtol=0, atol=0)


# ---------------------------------------------------------------- the gated attention (prefix_gate)

def _attention_output(bb, layer_idx, ids, mask, **kw):
    """The output of one layer's attention sub-module (LLaMA/GPT-2: after the output projection;
    BERT: the self-attention's context, before output.dense), captured with a hook."""
    arch = bb.info.architecture
    block = (bb.model.layers if arch == "llama" else bb.model.h if arch == "gpt2" else bb.model.encoder.layer)[layer_idx]
    got = {}
    if arch == "bert":  # the self-attention's context as BertSelfOutput receives it
        h = block.attention.output.register_forward_pre_hook(lambda m, args: got.__setitem__("out", args[0]))
    else:
        mod = block.self_attn if arch == "llama" else block.attn
        h = mod.register_forward_hook(lambda m, i, out: got.__setitem__("out", out[0]))
    try:
        forward_with_prefix(bb, ids, mask, **kw)
    finally:
        h.remove()
    return got["out"]


@pytest.mark.parametrize("name", NAMES)
def test_gated_prefix_closed_gate_is_exactly_the_plain_model(backbones, name):
    bb = backbones[name]
    ids, mask = _batch(bb)
    plain = forward_with_prefix(bb, ids, mask, None)
    closed = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 3), prefix_gate=torch.zeros(bb.info.num_layers))
    for a, b in zip(plain, closed):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    opened = forward_with_prefix(bb, ids, mask, _prefixes(bb, 2, 3), prefix_gate=1.0)
    assert (opened[-1] - plain[-1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_gated_prefix_layer0_by_hand(backbones, name):
    """Layer 0's attention output moves by exactly g * proj(softmax(q k^T / sqrt(hd)) v), with q the
    text's own query projection (no rotary), k/v the prefix's (no rotary), recomputed from the weights."""
    bb = backbones[name]
    info, arch = bb.info, bb.info.architecture
    ids, mask = _batch(bb)
    B, P, nh, hd = 2, 3, info.num_heads, info.head_dim
    prefixes = _prefixes(bb, B, P, seed=1)
    g = 0.7
    plain = _attention_output(bb, 0, ids, mask, prefixes=None)
    gated = _attention_output(bb, 0, ids, mask, prefixes=prefixes, prefix_gate=g)
    h0 = forward_with_prefix(bb, ids, mask, None)[0]  # the layer's input: the embeddings
    d = prefixes[0]
    if arch == "llama":
        blk = bb.model.layers[0]
        eps = bb.model.config.rms_norm_eps
        norm = lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + eps) * blk.input_layernorm.weight
        q = norm(h0) @ blk.self_attn.q_proj.weight.T
        k, v = norm(d) @ blk.self_attn.k_proj.weight.T, norm(d) @ blk.self_attn.v_proj.weight.T
        proj = lambda o: o @ blk.self_attn.o_proj.weight.T
    elif arch == "gpt2":
        blk = bb.model.h[0]
        W, b = blk.attn.c_attn.weight, blk.attn.c_attn.bias  # Conv1D: x @ W + b
        H = info.hidden_size
        q = (blk.ln_1(h0) @ W + b)[..., :H]
        kv = blk.ln_1(d) @ W + b
        k, v = kv[..., H:2 * H], kv[..., 2 * H:]
        proj = lambda o: o @ blk.attn.c_proj.weight
    else:
        blk = bb.model.encoder.layer[0].attention.self
        q, k, v = blk.query(h0), blk.key(d), blk.value(d)
        proj = lambda o: o
    rep = nh // info.num_kv_heads
    q = q.view(B, -1, nh, hd).transpose(1, 2)
    k = k.view(B, P, -1, hd).transpose(1, 2).repeat_interleave(rep, 1)
    v = v.view(B, P, -1, hd).transpose(1, 2).repeat_interleave(rep, 1)
    a = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5, dim=-1)
    expected = g * proj((a @ v).transpose(1, 2).reshape(B, -1, nh * hd))
    torch.testing.assert_close(gated - plain, expected, rtol=1e-4, atol=1e-5)

    # groups (RA-Rec's instruction slots and ID slot): slots 0-1 and slot 2 each get a softmax and a gate
    gates = torch.tensor([[0.3, 0.9]]).expand(info.num_layers, 2)
    grouped = _attention_output(bb, 0, ids, mask, prefixes=prefixes, prefix_gate=gates, prefix_groups=(2, 1))
    logits = q @ k.transpose(-1, -2) / hd ** 0.5
    head = lambda w, vv: proj((w @ vv).transpose(1, 2).reshape(B, -1, nh * hd))  # noqa: E731
    expected = 0.3 * head(torch.softmax(logits[..., :2], -1), v[:, :, :2]) + 0.9 * head(torch.ones_like(logits[..., 2:]), v[:, :, 2:])
    torch.testing.assert_close(grouped - plain, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gated_prefix_gradients_reach_prefixes_and_gate_not_the_llm(backbones, name):
    bb = backbones[name]
    ids, mask = _batch(bb)
    prefixes = [p.requires_grad_() for p in _prefixes(bb, 2, 2)]
    gate = torch.full((bb.info.num_layers,), 0.5, requires_grad=True)
    out = forward_with_prefix(bb, ids, mask, prefixes, prefix_gate=gate)
    out[-1].pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prefixes)
    assert gate.grad is not None and (gate.grad != 0).all()
    assert all(p.grad is None for p in bb.model.parameters())
    with pytest.raises(ValueError, match="prefix_gate must be"):
        forward_with_prefix(bb, ids, mask, prefixes, prefix_gate=torch.ones(bb.info.num_layers + 1))
    with pytest.raises(ValueError, match="joint attention"):
        forward_with_prefix(bb, ids, mask, prefixes, prefix_bias=0.0, prefix_gate=1.0)
    with pytest.raises(ValueError, match="summing to P"):
        forward_with_prefix(bb, ids, mask, prefixes, prefix_gate=torch.ones(bb.info.num_layers, 2), prefix_groups=(1, 2))
    with pytest.raises(ValueError, match=r"prefix_gate must be \("):
        forward_with_prefix(bb, ids, mask, prefixes, prefix_gate=gate, prefix_groups=(1, 1))
    with pytest.raises(ValueError, match="give prefix_gate too"):
        forward_with_prefix(bb, ids, mask, prefixes, prefix_groups=(1, 1))
