"""Per-layer prefix keys/values for a frozen transformer: how RA-Rec talks to the LLM.

RA-Rec (Yu et al. 2024, arXiv 2402.04527, Sec. 3) turns an ID embedding into soft prompts
that are prepended at *every* layer of the frozen LLM, like deep prompt tuning (P-tuning v2,
Liu et al. 2022) and prefix tuning (Li & Liang 2021). This module is that mechanism, written
once for the three families the course uses (LLaMA, GPT-2, BERT).

What a prefix is here
---------------------
For layer ``l`` we are given ``P`` vectors ``d^(l)`` of shape ``(B, P, H)``. They are treated
as *hidden states at the input of layer l*: they go through that layer's own frozen

* input norm (pre-LN models: LLaMA ``input_layernorm``, GPT-2 ``ln_1``; BERT is post-LN, so
  its layer inputs are already normalised and there is none),
* key and value projections (LLaMA ``k_proj``/``v_proj``, GPT-2 the K/V thirds of ``c_attn``,
  BERT ``key``/``value``),
* rotary position embedding at positions ``0..P-1`` (LLaMA only),

and the resulting keys/values are placed in front of the text's own keys/values at that layer.
The text tokens then sit at positions ``P..P+T-1`` (LLaMA rotary, GPT-2 learned positions);
for BERT the text keeps positions ``0..T-1`` (prefix tuning of encoders does not shift them,
so ``[CLS]`` stays at the position it was trained at). The attention mask grows to
``(B, 1, T, P + T)``: every text token sees all ``P`` prefix slots, then the text causally
(LLaMA, GPT-2) or bidirectionally (BERT), minus padding. The prefix slots are keys/values
only: they produce no output rows, so the hidden states returned are for the ``T`` text tokens.

How: the per-layer prefix K/V go into a ``transformers.DynamicCache`` passed as the "past"
key/values, exactly as if the model had already read ``P`` tokens; the model's own attention
code concatenates them with the text's K/V. The 4-D additive mask is built here, explicitly.
All of this is differentiable, so gradients flow from the output back into ``d^(l)`` while
every LLM weight stays frozen (also for bitsandbytes NF4/int8 layers, which are callable like
``nn.Linear``).

``P`` is the same for all layers (one mask serves every layer); ``P = 0`` gives exactly the
plain model's computation.
"""

from __future__ import annotations

import inspect

import torch

__all__ = ["forward_with_prefix", "prefix_key_values", "extended_attention_mask", "pool"]


# ----------------------------------------------------------------------------- per family


def _layers(model, arch: str):
    if arch == "llama":
        return model.layers
    if arch == "gpt2":
        return model.h
    if arch == "bert":
        return model.encoder.layer
    raise ValueError(f"architecture {arch!r} not supported (llama, gpt2, bert)")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def prefix_key_values(backbone, layer: int, d: torch.Tensor, rotary: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values that prefix vectors ``d`` produce at ``layer`` (RA-Rec Sec. 3).

    Args:
        backbone: a :class:`rarec_lite.llm.Backbone`.
        layer: layer index, ``0 <= layer < info.num_layers``.
        d: ``(B, P, H)`` prefix vectors, hidden states at the input of ``layer``.
        rotary: LLaMA only: give the keys rotary position embedding at positions ``0..P-1`` (the
            joint attention, where the prefix sits in front of the text); False for the gated
            attention, whose prefix slots have no position (:func:`forward_with_prefix`).

    Returns:
        ``(keys, values)``, each ``(B, num_kv_heads, P, head_dim)``; for LLaMA with ``rotary`` the
        keys carry rotary position embedding at positions ``0..P-1``. For ``P = 0`` (or ``B = 0``) both
        are empty views of ``d`` and no layer of the model is called: a zero-length input into
        a bitsandbytes 4-bit layer whose weight was repacked for AVX512-BF16 kills the
        interpreter with SIGFPE (bitsandbytes 0.50.2; see
        :func:`rarec_lite.llm.ensure_trainable_4bit_path`).
    """
    info, model = backbone.info, backbone.model
    block = _layers(model, info.architecture)[layer]
    B, P, _ = d.shape
    kv_shape = (B, P, info.num_kv_heads, info.head_dim)
    if B == 0 or P == 0:  # nothing to project: never hand an empty tensor to a (4-bit) layer
        empty = d[..., :1].expand(B, P, info.num_kv_heads * info.head_dim).reshape(kv_shape).transpose(1, 2)
        return empty, empty.clone()
    if info.architecture == "llama":
        attn = block.self_attn
        x = block.input_layernorm(d)
        k = attn.k_proj(x).view(kv_shape)
        if hasattr(attn, "k_norm"):  # Qwen3-style per-head key norm
            k = attn.k_norm(k)
        k = k.transpose(1, 2)
        v = attn.v_proj(x).view(kv_shape).transpose(1, 2)
        if not rotary:
            return k, v
        positions = torch.arange(P, device=d.device).unsqueeze(0)
        cos, sin = model.rotary_emb(x, positions)  # (1, P, head_dim) each
        cos, sin = cos.unsqueeze(1).to(k.dtype), sin.unsqueeze(1).to(k.dtype)
        k = k * cos + _rotate_half(k) * sin
        return k, v
    if info.architecture == "gpt2":
        x = block.ln_1(d)
        _, k, v = block.attn.c_attn(x).split(block.attn.split_size, dim=2)
        k = k.view(kv_shape).transpose(1, 2)
        v = v.view(kv_shape).transpose(1, 2)
        return k, v
    # bert: post-LN, no input norm
    attn = block.attention.self
    k = attn.key(d).view(kv_shape).transpose(1, 2)
    v = attn.value(d).view(kv_shape).transpose(1, 2)
    return k, v


def extended_attention_mask(
    attention_mask: torch.Tensor, num_prefix: int, causal: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Additive attention mask over prefix + text keys.

    Args:
        attention_mask: ``(B, T)`` with 1 for real tokens, 0 for padding.
        num_prefix: ``P``, prefix slots every query may attend to.
        causal: text attends only to itself and earlier text (decoder LMs) if True.
        dtype: dtype of the returned mask (the model's compute dtype).

    Returns:
        ``(B, 1, T, P + T)``: 0 where query ``i`` may attend to key ``j``, the dtype's most
        negative value elsewhere.
    """
    B, T = attention_mask.shape
    keys_ok = attention_mask.bool()[:, None, :].expand(B, T, T)  # (B, query, key)
    if causal:
        keys_ok = keys_ok & torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
    prefix_ok = torch.ones(B, T, num_prefix, dtype=torch.bool, device=attention_mask.device)
    allowed = torch.cat([prefix_ok, keys_ok], dim=-1)[:, None]  # (B, 1, T, P + T)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def _cache_kwarg(model) -> str:
    """``cache`` in transformers >= 5.2x, ``past_key_values`` before."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _refuse_checkpointing_with_prefixes(model, arch: str, P: int) -> None:
    """Raise if transformers would drop the prefix cache: gradient checkpointing is on, the
    layers are in training mode and autograd records (transformers 5.x
    ``GradientCheckpointingLayer`` sets ``cache=None`` then, so the text sees no prefix and the
    (B, 1, T, P + T) mask no longer fits: "The size of tensor a (T) must match the size of
    tensor b (P + T)")."""
    if not torch.is_grad_enabled():
        return
    layers = _layers(model, arch)
    if any(getattr(layer, "gradient_checkpointing", False) and layer.training for layer in layers):
        raise ValueError(
            f"forward_with_prefix: gradient checkpointing is on and the backbone is in training mode; "
            f"transformers then drops the past-key-value cache that carries the {P} prefix slot(s) per "
            "layer, so the prefixes would be ignored. Fix: backbone.model.eval() (checkpointing is "
            "inactive in eval mode; the backbone is frozen and load_backbone returns it in eval mode) "
            "or backbone.model.gradient_checkpointing_disable()."
        )


def _gated_prefix_hooks(backbone, kv: list, gate: torch.Tensor, groups: tuple[int, ...]) -> list:
    """Hooks that add each layer's gated prefix attention to its attention output (see
    :func:`forward_with_prefix`, ``prefix_gate``). Returns the hook handles (remove them after use).

    Per layer ``l`` the text's own queries ``q`` (the layer's frozen query projection, before any
    rotary embedding) attend over the ``P`` prefix slots alone, ``a = softmax(q k_P^T / sqrt(head_dim))``,
    and ``gate[l] * a v_P`` is added to the heads' output right before the layer's output projection
    (LLaMA ``o_proj``, GPT-2 ``c_proj``, BERT: the self-attention's output, before ``output.dense``).
    The text's attention over itself is untouched. ``groups`` (slot counts summing to ``P``; ``(P,)`` for
    one softmax over all slots): each group of consecutive slots has a softmax of its own and ``gate[l, g]``
    (``gate``: ``(L, G)``) scales group ``g``'s share."""
    info, model = backbone.info, backbone.model
    arch, nh, hd = info.architecture, info.num_heads, info.head_dim
    rep = nh // info.num_kv_heads
    handles, queries = [], {}

    def prefix_output(l, x):  # x: (B, T, nh * hd) whose rows get the prefix's share
        B, T = x.shape[:2]
        q = queries.pop(l).reshape(B, T, nh, hd)
        if arch == "llama" and hasattr(block_attn[l], "q_norm"):  # Qwen3-style per-head query norm
            q = block_attn[l].q_norm(q)
        k, v = kv[l]
        if rep > 1:  # grouped-query attention: each key/value head serves `rep` query heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        logits = (q.transpose(1, 2) @ k.transpose(-1, -2)).float() / hd ** 0.5  # (B, nh, T, P)
        start = 0
        for g, size in enumerate(groups):  # one softmax per group of slots, one gate per group
            if size:
                a = torch.softmax(logits[..., start:start + size], dim=-1)
                o = (a.to(v.dtype) @ v[:, :, start:start + size]).transpose(1, 2).reshape(B, T, nh * hd)
                x = x + gate[l, g].to(x.dtype) * o.to(x.dtype)
            start += size
        return x

    block_attn = []
    for l, block in enumerate(_layers(model, arch)):
        if arch == "llama":
            attn = block.self_attn
            q_mod, out_mod, q_of = attn.q_proj, attn.o_proj, (lambda out: out)
        elif arch == "gpt2":
            attn = block.attn
            q_mod, out_mod, q_of = attn.c_attn, attn.c_proj, (lambda out, s=attn.split_size: out[..., :s])
        else:
            attn = block.attention.self
            q_mod, out_mod, q_of = attn.query, None, (lambda out: out)
        block_attn.append(attn)
        handles.append(q_mod.register_forward_hook(lambda m, i, out, l=l, f=q_of: queries.__setitem__(l, f(out))))
        if out_mod is not None:
            handles.append(out_mod.register_forward_pre_hook(lambda m, args, l=l: (prefix_output(l, args[0]),) + args[1:]))
        else:  # BERT: add to the self-attention's output (B, T, H) before output.dense
            handles.append(attn.register_forward_hook(lambda m, i, out, l=l: (prefix_output(l, out[0]),) + tuple(out[1:])))
    return handles


def forward_with_prefix(backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefixes=None,
                        prefix_bias: torch.Tensor | float | None = None, prefix_gate: torch.Tensor | float | None = None,
                        prefix_groups: tuple[int, ...] | None = None):
    """Run the frozen backbone with per-layer prefix keys/values (RA-Rec Sec. 3).

    Args:
        backbone: a :class:`rarec_lite.llm.Backbone` (LLaMA, GPT-2 or BERT family; any
            quantization).
        input_ids: ``(B, T)`` token ids, right-padded.
        attention_mask: ``(B, T)``, 1 for real tokens, 0 for padding.
        prefixes: ``None`` (plain model), or a list with one entry per layer
            (``info.num_layers`` entries), each ``(B, P, H)`` with the same ``P`` for every
            layer (``P = 0`` allowed). Gradients flow into them.
        prefix_bias: optional scalar (a float or a 0-d tensor, differentiable) added to the
            attention logits of every prefix slot at every layer: a **gate** in log space. A
            very negative bias makes the prefix invisible (the plain model's computation, up to
            ``exp(bias)``), 0 is plain prefix tuning. RA-Rec's alignment starts from a closed
            gate so that training starts from the zero-shot model
            (:class:`rarec_lite.alignment.RAAlignment`).
        prefix_gate: ``None`` (the **joint** attention above: the prefix K/V sit in front of the text's
            and share one softmax with them) or a scalar / ``(L,)`` tensor of per-layer gates, the
            **gated** attention (LLaMA-Adapter's zero-init attention, Zhang et al. 2023, arXiv
            2303.16199, Sec. 3.2): the text runs exactly as in the plain model (positions ``0..T-1``,
            its own softmax), and at layer ``l`` its queries also attend over the ``P`` prefix slots
            alone (keys without rotary embedding); ``gate[l]`` times that output is added to the
            heads' output before the layer's output projection. Gate 0 gives exactly the plain
            model; the gate is differentiable. ``prefix_bias`` must then be ``None``.
        prefix_groups: gated attention only: slot counts ``(P_1, ..., P_G)`` summing to ``P``; each group
            of consecutive slots gets a softmax of its own and ``prefix_gate`` is then ``(L, G)``, one gate
            per layer and group (RA-Rec's contextual instruction and ID slots:
            :meth:`rarec_lite.alignment.RAAlignment.prefix_groups`). ``None``: one softmax over all ``P``.

    Returns:
        tuple of ``num_layers + 1`` hidden states, each ``(B, T, H)`` for the text tokens
        (the model's ``output_hidden_states``: embeddings first, last layer last).

        An empty batch (``B = 0``) returns empty ``(0, T, H)`` states without calling the
        model (no zero-length input ever reaches a 4-bit layer; see :func:`prefix_key_values`).

    Raises:
        ValueError: wrong number of prefixes, shapes that disagree (names the layer), a
            ``None`` entry mixed with tensors, ``P + T`` beyond GPT-2's position table (joint attention), no
            tokens (``T = 0``), or prefixes on a model in training mode with gradient
            checkpointing on (transformers then drops the cache that carries the prefixes;
            the message names the fix: ``backbone.model.eval()`` or
            ``backbone.model.gradient_checkpointing_disable()``).
    """
    info, model = backbone.info, backbone.model
    if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} must both be (B, T)"
        )
    device = info.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    B, T = input_ids.shape
    if T == 0:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: no tokens (T = 0); every text needs at least one token")
    if B == 0:  # an empty batch: nothing to run (and no empty tensor into a 4-bit layer)
        dtype = model.get_input_embeddings().weight.dtype
        empty = torch.zeros(0, T, info.hidden_size, dtype=dtype, device=device)
        return tuple(empty for _ in range(info.num_layers + 1))
    if prefixes is not None and all(p is None for p in prefixes):
        prefixes = None
    if prefixes is None:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return tuple(out.hidden_states)

    if len(prefixes) != info.num_layers:
        raise ValueError(f"prefixes has {len(prefixes)} entries; the backbone has {info.num_layers} layers")
    P = None
    for l, d in enumerate(prefixes):
        if d is None:
            raise ValueError(
                f"prefixes[{l}] is None while other layers have a prefix; give every layer a "
                "(B, P, H) tensor (the mask is shared by all layers), or pass prefixes=None"
            )
        if d.dim() != 3 or d.shape[0] != B or d.shape[2] != info.hidden_size:
            raise ValueError(f"prefixes[{l}] has shape {tuple(d.shape)}; expected ({B}, P, {info.hidden_size})")
        if P is None:
            P = d.shape[1]
        elif d.shape[1] != P:
            raise ValueError(f"prefixes[{l}] has P={d.shape[1]} but prefixes[0] has P={P}; P must match across layers")
    if prefix_gate is None and info.architecture == "gpt2" and P + T > info.max_position:  # joint: text at P..P+T-1
        raise ValueError(f"P + T = {P} + {T} exceeds GPT-2's {info.max_position} positions")
    if P > 0:
        _refuse_checkpointing_with_prefixes(model, info.architecture, P)

    dtype = model.get_input_embeddings().weight.dtype
    if prefix_groups is not None and prefix_gate is None:
        raise ValueError("prefix_groups is for the gated attention: give prefix_gate too")
    if prefix_gate is not None:
        if prefix_bias is not None:
            raise ValueError("prefix_bias is for the joint attention; the gated attention (prefix_gate) has none")
        gate = torch.as_tensor(prefix_gate, device=device)
        if prefix_groups is not None:
            prefix_groups = tuple(int(g) for g in prefix_groups)
            if sum(prefix_groups) != P or min(prefix_groups, default=0) < 0:
                raise ValueError(f"prefix_groups {prefix_groups} must be counts >= 0 summing to P = {P}")
            if gate.shape != (info.num_layers, len(prefix_groups)):
                raise ValueError(f"prefix_gate must be ({info.num_layers}, {len(prefix_groups)}) with prefix_groups "
                                 f"{prefix_groups}; got shape {tuple(gate.shape)}")
        else:
            gate = gate.expand(info.num_layers) if gate.dim() == 0 else gate
            if gate.shape != (info.num_layers,):
                raise ValueError(f"prefix_gate must be a scalar or ({info.num_layers},); got shape {tuple(gate.shape)}")
            prefix_groups, gate = (P,), gate[:, None]  # one group: every slot in one softmax
        if P == 0:
            return forward_with_prefix(backbone, input_ids, attention_mask, None)
        kv = [prefix_key_values(backbone, l, d.to(device=device, dtype=dtype), rotary=False)
              for l, d in enumerate(prefixes)]
        handles = _gated_prefix_hooks(backbone, kv, gate, prefix_groups)
        try:
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        finally:
            for h in handles:
                h.remove()
        return tuple(out.hidden_states)

    from transformers import DynamicCache

    kv = [prefix_key_values(backbone, l, d.to(device=device, dtype=dtype)) for l, d in enumerate(prefixes)]
    cache = DynamicCache(kv)
    mask = extended_attention_mask(attention_mask, P, causal=info.is_causal, dtype=dtype)
    if prefix_bias is not None and P > 0:
        bias = torch.as_tensor(prefix_bias, device=device).to(dtype)
        if bias.dim() != 0:
            raise ValueError(f"prefix_bias must be a scalar; got shape {tuple(bias.shape)}")
        mask = torch.cat([mask[..., :P] + bias, mask[..., P:]], dim=-1)  # differentiable in the bias
    offset = 0 if info.architecture == "bert" else P
    position_ids = (torch.arange(T, device=device) + offset).unsqueeze(0).expand(B, T)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids,
        output_hidden_states=True,
        **{_cache_kwarg(model): cache},
    )
    return tuple(out.hidden_states)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "last",
         exclude: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence from token states.

    Args:
        hidden: ``(B, T, H)`` token states.
        attention_mask: ``(B, T)``, 1 for real tokens, right-padded (real tokens first).
        how: ``"last"``, the state of the last real token (causal LMs: it has read the whole
            text); ``"mean"``, the mean over real tokens (Sentence-BERT's pooling).
        exclude: optional ``(B, T)`` bool, True at real tokens to leave out of a ``"mean"`` (the
            BOS of a Llama-3 tokenizer: :func:`rarec_lite.llm.pooling_exclusion`). A row whose real
            tokens are all excluded keeps them all. ``"last"`` ignores it.

    Returns:
        ``(B, H)``.

    Raises:
        ValueError: unknown ``how``, a row without real tokens, a left-padded mask, or an
            ``exclude`` of another shape.
    """
    if hidden.shape[:2] != attention_mask.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and attention_mask {tuple(attention_mask.shape)} disagree on (B, T)")
    m = attention_mask.to(hidden.device).long()
    lengths = m.sum(dim=1)
    if (lengths == 0).any():
        raise ValueError(f"attention_mask rows {torch.nonzero(lengths == 0).flatten().tolist()} have no real token")
    positions = torch.arange(m.shape[1], device=m.device)
    if not torch.equal(m.bool(), positions[None, :] < lengths[:, None]):
        raise ValueError("attention_mask must be right-padded (1s first, then 0s); set tokenizer.padding_side='right'")
    if how == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    if how == "mean":
        if exclude is not None:
            if exclude.shape != attention_mask.shape:
                raise ValueError(f"exclude {tuple(exclude.shape)} and attention_mask {tuple(m.shape)} differ")
            kept = m * (~exclude.to(m.device)).long()
            m = torch.where(kept.sum(dim=1, keepdim=True) > 0, kept, m)
        w = m.to(hidden.dtype).unsqueeze(-1)
        return (hidden * w).sum(dim=1) / w.sum(dim=1)
    raise ValueError(f"how={how!r}: expected 'last' or 'mean'")
