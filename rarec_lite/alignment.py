"""RA-Rec's ID representation alignment: soft prompts made from frozen ID embeddings, two towers.

RA-Rec (Yu et al. 2024, arXiv 2402.04527, Sec. 3) keeps both the LLM and the ID recommender
(SASRec) frozen and trains only a small **alignment module**. For every LLM layer ``l`` and
each tower (user, item) it builds prefix vectors (a per-layer soft prompt):

    prefix_l(e) = [ C_l ; reshape(W_l e + b_l, (n_id, H)) ]       shape (n_instr + n_id, H)

* ``C_l``: the **contextual instruction**, ``n_instr`` learnable vectors of layer ``l``.
* ``W_l``: the **reparameterization**, a layer-specific linear map of the ID embedding ``e``
  (SASRec user embedding for the user tower, SASRec item embedding for the item tower) into
  ``n_id`` vectors of width ``H``.

The prefix vectors enter layer ``l`` as hidden states, pushed through the layer's own frozen
norm and K/V projections: that layer's prefix keys/values (:func:`rarec_lite.prefix.forward_with_prefix`).
The user tower reads the hybrid prompt (a short hard prompt + the user soft prompt), the
item tower the item text + the item soft prompt; the score is the dot product of the (standardised) pooled
final states (:class:`TwoTower`), and :meth:`TwoTower.loss` is the training objective on one batch. This
file is the method; :mod:`rarec_lite.prefix` is how a prefix enters a layer, :mod:`rarec_lite.losses` the two
losses, :mod:`rarec_lite.train` the loop around :meth:`TwoTower.loss`.

Variants of the paper's ablations: ``use_id=False`` (no ID representation: prefix tuning with
the same budget), ``use_instruction=False`` (w/o contextual instruction), ``layer_specific=False``
(one projector shared by all layers). ``lam = 0`` (w/o InfoNCE) is a training option
(:mod:`rarec_lite.train`).

**How the text reads the soft prompt: gated attention (default) or joint attention.** The paper
prepends the soft prompt to every layer and leaves open how the text's attention mixes it with its own
context. ``attention="joint"`` is classic prefix tuning: the prefix keys sit in front of the text's and
share one softmax with them, so every prefix slot takes attention mass from the text at every layer.
``attention="gated"`` (the default) is LLaMA-Adapter's zero-init attention (Zhang et al. 2023, arXiv
2303.16199, Sec. 3.2): the text keeps its own attention exactly, attends to the prefix slots with a
softmax of their own, and a learned per-layer gate ``g_l`` scales what that adds to the layer's output.
Measured on a Clothing proxy (1,000 test users ranked among 5,033 items, 150 steps of 16, SmolLM2's first
6 layers): from the zero-shot HR@50 of 0.112, the joint attention fell to 0.061 as its gate opened (the
random prefix takes attention mass from the text in all 6 layers), the gated one rose to 0.124 (HR@10 0.036
-> 0.050); README, "Results".

**Starting from the zero-shot model and from SASRec's geometry.** In the gated attention the trainer's
warm-up multiplies every gate by a factor rising linearly from 0 (step 0: exactly the zero-shot model)
to 1 (:attr:`RAAlignment.warmup_open`). The gates start at 0 except the last layer's
(``last_layer_gate``): with ``tie_init`` both towers share one random reparameterization, so at the last
layer the user's and the item's soft prompts write ``M e_u`` and ``M e_i`` with the same ``M`` into their
final states, and the score gains ``e_u^T M^T M e_i``, a random-projection estimate of SASRec's own
score ``e_u . e_i``. Training starts from "zero-shot LLM + SASRec" instead of learning the ID route from
nothing (what 150 steps of 16 pairs could not do); a random map in the earlier layers goes through the
remaining frozen layers and lands as noise, so those gates start closed and open only as the loss asks.

**The isometric start** (:meth:`TwoTower.init_isometric_reparameterization`, the pipeline's
``[alignment] reparam_init = "isometric"``) replaces that random ``M`` with the map that inverts the last
layer's frozen linear path (input norm, value and output projections, final norm, the item
standardisation): the score's ID part then starts as a scaled copy of SASRec's own geometry instead of a
random projection of it. Two choices make that copy survive: the contextual instruction gets a softmax and
gates of its own (``instruction_softmax="own"``, gates starting at 0), so the ID slot keeps attention
weight 1 whatever the instruction vectors; and the user tower keeps its *text-only* mean and the items'
sigma (:meth:`TwoTower.set_standardization` ``user_sigma="item"``), so the user side is scaled like the
item side and SASRec's mean-user direction (its popularity prior) is not subtracted. Measured on the
main job (README, "Results", point 8).

**The joint attention's gate.** Every prefix slot's attention logit gets a
learnable per-tower bias ``g`` (:func:`rarec_lite.prefix.forward_with_prefix`, ``prefix_bias``),
very negative at step 0 (``gate_init = -20``): the text attends to the soft prompt with weight
about ``exp(gate_init)`` times ``exp(q.k)``, so the untrained model ranks like the zero-shot two-tower
(the pipeline measures the step-0 metrics and how far the item states moved), whatever the random
prefix vectors. (-12 was not enough on SmolLM2: random prefix keys have large logits, and the step-0
item states moved by up to 2.2% of their norm.) During a warm-up the trainer lifts this offset
linearly to 0 (the prefix vectors keep getting gradients all along, scaled by that weight;
AdamW's normalisation makes their steps the usual size), and a learned per-tower scalar adjusts
the final opening (:meth:`RAAlignment.prefix_bias`). Without it
(``gate_init=None``), N(0, s^2) prefixes perturb every layer from step 0: an untrained no-ID prefix
dropped zero-shot HR@10 on Clothing from 0.078 to 0.021-0.045 (RA-Rec issue, two seeds).

**The ID-side representation** ``d^(l)`` (:meth:`RAAlignment.id_representations`), what the layer's
soft prompt carries about this user/item: the mean of the ``n_id`` reparameterized vectors of
layer ``l`` (the paper's contextualised ID representation; the contextual instruction is the same
for every user, so it carries nothing that tells two users apart). InfoNCE (:mod:`rarec_lite.losses`)
pulls it towards the text-only representation of the same user/item at the input of layer ``l``.

**Initialisation.** Prefix vectors should look like the hidden states they stand in for. We
draw ``C_l ~ N(0, s_l^2)`` and ``W_l ~ N(0, s_l^2 / id_dim)``, ``b_l = 0``, so a prefix vector
has per-coordinate RMS about ``s_l`` (times the RMS of ``e`` for the ID tokens). ``s_l`` is
``init_scale``: one float for every layer (default 1.0, the RMS of a normalised hidden state)
or one per layer, e.g. the RMS of real hidden states measured with :func:`hidden_state_rms`.
In pre-norm models (LLaMA, GPT-2) the layer's norm rescales the prefix anyway, so ``s_l``
mostly sets how large an AdamW step (about ``lr`` per coordinate) is relative to the prefix.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from rarec_lite import distributed

__all__ = ["RAAlignment", "TwoTower", "hidden_state_rms", "TOWERS"]

TOWERS = ("user", "item")


class RAAlignment(nn.Module):
    """Per-layer soft prompts of both towers: contextual instruction + reparameterized ID.

    Args:
        info: the backbone's :class:`rarec_lite.llm.BackboneInfo` (uses ``num_layers`` L and
            ``hidden_size`` H; any object with these attributes works).
        id_dim: width ``d`` of the ID embeddings (SASRec hidden size).
        num_id_tokens: ``n_id``, prefix vectors made from the ID embedding per layer.
        num_instruction_tokens: ``n_instr``, contextual-instruction vectors per layer.
        layer_specific: one reparameterization per layer (True) or one shared by all layers.
        use_instruction: include the contextual instruction.
        use_id: include the ID tokens (False = the "without ID representation" ablation).
        init_scale: target per-coordinate RMS of the prefix vectors: a float, or a sequence
            of L floats (one per layer). See the module docstring.
        gate_init: initial attention-logit bias of the prefix slots, one learnable scalar per
            tower (``None``: no gate, the prefix is fully visible from step 0). See the module
            docstring.
        tie_init: both towers start from the same random draw (the same contextual instruction
            and the same reparameterization per layer; they train apart). See "Starting from the
            zero-shot model and from SASRec's geometry" in the module docstring.
        attention: ``"gated"`` (default; per-layer gates, LLaMA-Adapter's zero-init attention) or
            ``"joint"`` (classic prefix tuning with the log-space gate ``gate_init``). See the module
            docstring.
        last_layer_gate: gated attention: the last layer's gate at the start (the others start at 0).
        instruction_softmax: gated attention with both instruction and ID slots: ``"own"`` (default)
            gives the contextual instruction a softmax and per-layer gates of its own
            (``instruction_gate``, starting at 0), so the ID slot's attention weight is 1 whatever
            the instruction vectors; ``"shared"``: one softmax over all ``P`` slots (the ID slot then
            shares its weight with ``n_instr`` random vectors). README, "Results", point 8.

    Trainable parameters (both towers; formula of :meth:`expected_num_params`):
    ``2 * ( use_instruction * L * n_instr * H + use_id * L' * (d + 1) * n_id * H )`` with
    ``L' = L`` if ``layer_specific`` else 1; plus the gate per tower: ``L`` scalars with the gated
    attention (``2 L`` with the instruction's own gates), one with the joint attention when
    ``gate_init`` is not ``None``.

    Raises:
        ValueError: both ``use_id`` and ``use_instruction`` off (nothing to train: use
            ``alignment=None`` in :class:`TwoTower` for the zero-shot model), a count < 0,
            ``id_dim < 1`` with ``use_id``, or ``init_scale`` of the wrong length.

    Source: RA-Rec (Yu et al. 2024), Sec. 3, alignment module (reparameterization + contextual
    instruction); prefix tuning: Li & Liang 2021.
    """

    def __init__(self, info: Any, id_dim: int, num_id_tokens: int = 1, num_instruction_tokens: int = 4,
                 layer_specific: bool = True, use_instruction: bool = True, use_id: bool = True,
                 init_scale: float | Sequence[float] = 1.0, seed: int | None = 0,
                 gate_init: float | None = -20.0, tie_init: bool = True, attention: str = "gated",
                 last_layer_gate: float = 0.5, instruction_softmax: str = "own"):
        super().__init__()
        if not (use_id or use_instruction):
            raise ValueError("use_id and use_instruction are both False: nothing to train "
                             "(use TwoTower(backbone, alignment=None) for the zero-shot model)")
        if num_id_tokens < 0 or num_instruction_tokens < 0:
            raise ValueError(f"token counts must be >= 0; got num_id_tokens={num_id_tokens}, "
                             f"num_instruction_tokens={num_instruction_tokens}")
        if use_id and (id_dim < 1 or num_id_tokens < 1):
            raise ValueError(f"use_id needs id_dim >= 1 and num_id_tokens >= 1; got {id_dim}, {num_id_tokens}")
        if use_instruction and num_instruction_tokens < 1:
            raise ValueError("use_instruction needs num_instruction_tokens >= 1")
        if attention not in ("gated", "joint"):
            raise ValueError(f"attention must be 'gated' or 'joint'; got {attention!r}")
        if instruction_softmax not in ("own", "shared"):
            raise ValueError(f"instruction_softmax must be 'own' or 'shared'; got {instruction_softmax!r}")
        self.attention = attention
        # gated attention with both kinds of slots: the instruction gets a softmax and gates of its own
        self.instruction_softmax = instruction_softmax
        self.separate_instruction = (attention == "gated" and instruction_softmax == "own"
                                     and use_instruction and use_id)
        self.num_layers = L = int(info.num_layers)
        self.hidden_size = H = int(info.hidden_size)
        self.id_dim = int(id_dim)
        self.num_id_tokens = int(num_id_tokens) if use_id else 0
        self.num_instruction_tokens = int(num_instruction_tokens) if use_instruction else 0
        self.layer_specific = bool(layer_specific)
        self.use_instruction = bool(use_instruction)
        self.use_id = bool(use_id)
        scales = [float(init_scale)] * L if isinstance(init_scale, (int, float)) else [float(s) for s in init_scale]
        if len(scales) != L:
            raise ValueError(f"init_scale has {len(scales)} values; the backbone has {L} layers")
        self.init_scale = scales
        # gate: bias = g + gate_offset; g is learned (starts at 0), gate_offset is set by the trainer:
        # gate_init at step 0, rising linearly to 0 over the warm-up (train.TrainConfig.gate_warmup), 0 after
        self.gate_init = None if gate_init is None else float(gate_init)
        self.gate_offset = 0.0 if gate_init is None else float(gate_init)  # an untrained module is closed
        self.gate = nn.ParameterDict()
        if attention == "gated":  # per-layer gates g (L,): 0 except the last layer's (see the module docstring)
            for tower in TOWERS:
                g = torch.zeros(L)
                g[-1] = float(last_layer_gate)
                self.gate[tower] = nn.Parameter(g)
        elif gate_init is not None:
            for tower in TOWERS:
                self.gate[tower] = nn.Parameter(torch.tensor(0.0))
        # the contextual instruction's own per-layer gates (separate softmax): closed at the start, so the
        # untrained module is "zero-shot LLM + the ID slot"; they open as the loss asks (LLaMA-Adapter's zero init)
        self.instruction_gate = nn.ParameterDict()
        if self.separate_instruction:
            for tower in TOWERS:
                self.instruction_gate[tower] = nn.Parameter(torch.zeros(L))

        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.tie_init = bool(tie_init)
        # contextual instruction: per tower, a (L, n_instr, H) tensor, row l for layer l
        self.instruction = nn.ParameterDict()
        if use_instruction:
            for tower in TOWERS:
                if tie_init and tower != TOWERS[0]:  # the same start as the user tower (see the class docstring)
                    self.instruction[tower] = nn.Parameter(self.instruction[TOWERS[0]].detach().clone())
                    continue
                c = torch.randn(L, num_instruction_tokens, H, generator=gen)
                c *= torch.tensor(scales)[:, None, None]
                self.instruction[tower] = nn.Parameter(c)
        # reparameterization: per tower, L linear maps d -> n_id * H (or one shared)
        self.reparam = nn.ModuleDict()
        if use_id:
            n_maps = L if layer_specific else 1
            for tower in TOWERS:
                maps = nn.ModuleList()
                for m in range(n_maps):
                    lin = nn.Linear(id_dim, num_id_tokens * H)
                    scale = scales[m] if layer_specific else sum(scales) / L
                    with torch.no_grad():
                        if tie_init and tower != TOWERS[0]:
                            lin.weight.copy_(self.reparam[TOWERS[0]][m].weight)
                        else:
                            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * scale / math.sqrt(id_dim))
                        lin.bias.zero_()
                    maps.append(lin)
                self.reparam[tower] = maps

    @property
    def num_prefix_tokens(self) -> int:
        """P = n_instr + n_id: prefix vectors per layer."""
        return self.num_instruction_tokens + self.num_id_tokens

    @staticmethod
    def expected_num_params(num_layers: int, hidden_size: int, id_dim: int, num_id_tokens: int = 1,
                            num_instruction_tokens: int = 4, layer_specific: bool = True,
                            use_instruction: bool = True, use_id: bool = True, num_towers: int = 2,
                            gate: bool = True, attention: str = "gated", instruction_softmax: str = "own") -> int:
        """Closed form of the trainable-parameter count.

        ``towers * ( use_instruction * L * n_instr * H  +  use_id * L' * (d + 1) * n_id * H )``,
        ``L' = L`` when ``layer_specific`` else 1 (``d + 1``: weight + bias of the linear map),
        ``+ towers * L`` per-layer gates with the gated attention (``+ towers * L`` more for the
        instruction's own gates when both kinds of slots are on and ``instruction_softmax="own"``),
        ``+ towers`` with the joint attention's gate (``gate``: one scalar per tower).
        SmolLM2 first 8 layers (H = 576), d = 64, n_id = 1, n_instr = 4, no gate: 2 * (18,432 +
        299,520) = 635,904.
        """
        maps = num_layers if layer_specific else 1
        per_tower = (int(use_instruction) * num_layers * num_instruction_tokens * hidden_size
                     + int(use_id) * maps * (id_dim + 1) * num_id_tokens * hidden_size
                     + (num_layers if attention == "gated" else int(gate))
                     + (num_layers if attention == "gated" and instruction_softmax == "own"
                        and use_instruction and use_id else 0))
        return num_towers * per_tower

    def num_trainable(self) -> int:
        """Number of trainable scalars (parameters with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def prefixes(self, tower: str, id_emb: torch.Tensor | None = None,
                 batch_size: int | None = None) -> list[torch.Tensor]:
        """The per-layer soft prompt of ``tower``: a list of L tensors (B, P, H).

        Args:
            tower: ``"user"`` or ``"item"``.
            id_emb: (B, d) frozen ID embeddings (SASRec user / item embeddings). Required
                when ``use_id``; ignored when not (so one training loop serves every variant).
            batch_size: B when ``id_emb`` is not used.

        Returns:
            ``[prefix_1, ..., prefix_L]``, each (B, P, H), P = n_instr + n_id; the
            instruction vectors come first, then the ID vectors.

        Raises:
            ValueError: unknown tower; ``id_emb`` missing or of the wrong shape with ``use_id``;
                no batch size.
        """
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}; got {tower!r}")
        if self.use_id:
            if id_emb is None:
                raise ValueError(f"{tower} tower: use_id=True needs id_emb (B, {self.id_dim})")
            if id_emb.dim() != 2 or id_emb.shape[1] != self.id_dim:
                raise ValueError(f"{tower} tower: id_emb must be (B, {self.id_dim}); got {tuple(id_emb.shape)}")
            B = id_emb.shape[0]
        elif id_emb is not None:
            B = id_emb.shape[0]
        elif batch_size is not None:
            B = int(batch_size)
        else:
            raise ValueError("give id_emb or batch_size")
        out = []
        for layer in range(self.num_layers):
            parts = []
            if self.use_instruction:
                parts.append(self.instruction[tower][layer].expand(B, -1, -1))
            if self.use_id:
                lin = self.reparam[tower][layer if self.layer_specific else 0]
                e = id_emb.to(lin.weight.device, lin.weight.dtype)
                parts.append(lin(e).view(B, self.num_id_tokens, self.hidden_size))
            out.append(torch.cat(parts, dim=1))
        return out

    def prefix_bias(self, tower: str) -> torch.Tensor | None:
        """The tower's gate: a 0-d tensor added to every prefix slot's attention logit (or ``None``).

        ``bias = g_tower + gate_offset``: ``g`` is trained (starts at 0); ``gate_offset`` is not a
        parameter but a schedule the trainer sets (:class:`rarec_lite.train.TrainConfig`
        ``gate_warmup``): ``gate_init`` for an untrained module, rising linearly to 0 during the
        warm-up, 0 once trained. A purely learned gate starting at ``gate_init`` does not work:
        a random prefix first makes the loss worse, so the gate closes further and the prefix
        never gets a chance (measured on tiny LLaMA: the gate ran from -12 to -38, below float32
        resolution, and BPR never moved)."""
        if self.attention != "joint" or tower not in self.gate:
            return None
        return self.gate[tower] + self.gate_offset

    @property
    def soft_prompt_visible(self) -> bool:
        """Whether the text can see the soft prompt at all: the joint attention always (its closed
        gate is a very negative bias, not exactly zero), the gated attention once the warm-up opened."""
        return self.attention == "joint" or self.warmup_open > 0

    def closed_parameter_names(self) -> set[str]:
        """Names (as in ``named_parameters()``) of the reparameterization maps of layers whose gate is
        exactly 0 in their tower (gated attention): no ranking-loss gradient can reach them until the
        gate moves, so the trainer's gradient guard leaves them out."""
        if self.attention != "gated" or not self.use_id:
            return set()
        out = set()
        for tower in TOWERS:
            for l in (self.gate[tower] == 0).nonzero().flatten().tolist():
                if self.layer_specific:
                    out |= {f"reparam.{tower}.{l}.weight", f"reparam.{tower}.{l}.bias"}
            if self.separate_instruction and bool((self.instruction_gate[tower] == 0).all()):
                out.add(f"instruction.{tower}")  # its own gates all closed: nothing reaches it yet
        return out

    @property
    def warmup_open(self) -> float:
        """How far the trainer's warm-up has opened the soft prompt: 0 for an untrained module
        (``gate_offset = gate_init``), rising linearly to 1 at the end of the warm-up; 1 without
        ``gate_init``. ``1 - gate_offset / gate_init``: the same schedule as the joint attention's
        log-space offset (:class:`rarec_lite.train.TrainConfig` ``gate_warmup``)."""
        if not self.gate_init:
            return 1.0
        return 1.0 - self.gate_offset / self.gate_init

    def prefix_gate(self, tower: str) -> torch.Tensor | None:
        """The gated attention's per-layer gates of ``tower``: an ``(L,)`` tensor
        ``warmup_open * g_tower``, ``(L, 2)`` with the instruction's own gates first (``None`` for the
        joint attention). ``g`` is trained; at step 0 the
        warm-up factor is 0, so the towers are exactly the zero-shot model
        (:func:`rarec_lite.prefix.forward_with_prefix`, ``prefix_gate``)."""
        if self.attention != "gated":
            return None
        if self.separate_instruction:  # (L, 2): the instruction's gates, then the ID slots'
            return torch.stack([self.instruction_gate[tower], self.gate[tower]], dim=1) * self.warmup_open
        return self.gate[tower] * self.warmup_open

    @property
    def prefix_groups(self) -> tuple[int, int] | None:
        """``(n_instr, n_id)`` when the instruction has a softmax of its own (then :meth:`prefix_gate`
        is ``(L, 2)``), else ``None`` (:func:`rarec_lite.prefix.forward_with_prefix`, ``prefix_groups``)."""
        return (self.num_instruction_tokens, self.num_id_tokens) if self.separate_instruction else None

    def id_representations(self, tower: str, id_emb: torch.Tensor) -> list[torch.Tensor]:
        """The ID-side representation ``d^(l)`` of every layer: L tensors (B, H).

        ``d^(l)`` is the mean over the ``n_id`` ID slots of layer ``l``'s reparameterized vectors
        ``W_l e + b_l``: exactly what the soft prompt carries about this user/item (see the
        module docstring). InfoNCE contrasts it with the text-only representation.

        Raises:
            ValueError: the module has no ID representation (``use_id=False``), or ``id_emb``
                is not (B, d).
        """
        if not self.use_id:
            raise ValueError("id_representations: this alignment has no ID representation (use_id=False)")
        if id_emb.dim() != 2 or id_emb.shape[1] != self.id_dim:
            raise ValueError(f"{tower} tower: id_emb must be (B, {self.id_dim}); got {tuple(id_emb.shape)}")
        out = []
        for layer in range(self.num_layers):
            lin = self.reparam[tower][layer if self.layer_specific else 0]
            d = lin(id_emb.to(lin.weight.device, lin.weight.dtype))
            out.append(d.view(id_emb.shape[0], self.num_id_tokens, self.hidden_size).mean(dim=1))
        return out

    def extra_repr(self) -> str:
        return (f"L={self.num_layers}, H={self.hidden_size}, id_dim={self.id_dim}, n_id={self.num_id_tokens}, "
                f"n_instr={self.num_instruction_tokens}, layer_specific={self.layer_specific}, "
                f"gate={'on' if len(self.gate) else 'off'}")


def _torch_dtype(name: Any) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    return getattr(torch, str(name).replace("torch.", ""), torch.float32)


class TwoTower(nn.Module):
    """Two towers over one frozen LLM: user = hybrid prompt, item = item text (+ soft prompts).

    ``score(u, i) = <z_user(pool(h_L^user)), z_item(pool(h_L^item))>``, the dot product of the pooled
    final hidden states, where ``z`` is the identity (the paper's raw dot product) or, after
    :meth:`set_standardization`, a fixed per-dimension standardisation ``z_t(x) = (x - mu_t) / sigma_t``
    with statistics of each tower's own states (``t`` = user or item).
    With ``alignment=None`` (zero-shot ID Direct / ID Translation) the towers are the plain LLM.

    **Why standardise.** The hidden states of a small LLM are anisotropic: a few "massive
    activation" dimensions (SmolLM2-135M: 247 and 308) carry most of every state's norm, so a raw
    dot product ``<u, i>`` is dominated by a term that depends on the item alone and ranks every
    user's catalogue in nearly the same order. Measured on Clothing (1,000 test users, first 6
    layers, mean pooling, zero-shot ID Translation): HR@100 0.004 raw (chance is 0.0043) vs 0.048
    standardised with the catalogue's text-only statistics. ``mu`` and ``sigma`` are fixed
    statistics, never trained (the diagonal form of BERT-whitening, Su et al. 2021, arXiv
    2103.15316; massive activations: Sun et al. 2024, arXiv 2402.17762). **Per tower**: user states
    and item states come from different prompts (and soft prompts), so each tower is centred on
    its own mean; with the items' statistics on both sides, each user's scores kept a 0.66
    correlation with one user-independent item term (RA-Rec issue, item 5). The pipeline takes
    the user statistics from training users' prompts only and recomputes both after training.

    **Cosine item tower** (``item_norm=True``, the pipeline's ``[llm] item_norm``): each standardised item
    state is rescaled to length ``sqrt(H)``, ``z_item(x) -> sqrt(H) z_item(x) / |z_item(x)|``, so each user's
    ranking is by the cosine of the two standardised states (the user's own length does not reorder its
    catalogue) and an item's score no longer grows with the length of its state, as in SASRec's cosine score
    (:mod:`rarec_lite.sasrec`). ``sqrt(H)`` is the typical length of a standardised state, so the scale of the
    scores, and of the training losses built on them, stays what it was. Measured on the main job (real
    Clothing, 2,000 test users, full ranking): zero-shot ID Translation HR@100 0.0578 -> 0.0639, and RA-Rec's
    untrained start with the gates opened 0.1015 -> 0.1075 (README, "Results", point 10). The class default stays
    ``False`` (the plain standardised dot product); the pipeline's configs and the notebooks turn it on.

    Args:
        backbone: a :class:`rarec_lite.llm.Backbone` (frozen ``model``, ``tokenizer``, ``info``).
        alignment: an :class:`RAAlignment`, or ``None``.
        pooling: ``"last"`` (last non-pad token, the usual choice for causal LMs) or ``"mean"``
            (mean over the text tokens; the prefix slots are not pooled); default: ``"last"``
            for causal LMs, ``"mean"`` for encoders.
        item_norm: the cosine item tower (above); it applies to standardised states only.

    Only ``alignment`` is a registered sub-module: ``tower.parameters()`` and
    ``tower.state_dict()`` hold the trainable part only; the backbone and the standardisation
    statistics are plain attributes.

    Raises:
        ValueError: unknown pooling; the alignment was built for another layer count or width.

    Source: RA-Rec (Yu et al. 2024), Sec. 3 (two-tower scoring with the hybrid prompt).
    """

    def __init__(self, backbone: Any, alignment: RAAlignment | None = None, pooling: str | None = None,
                 item_norm: bool = False):
        super().__init__()
        info = backbone.info
        pooling = pooling or ("last" if info.is_causal else "mean")
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean'; got {pooling!r}")
        if alignment is not None and (alignment.num_layers != info.num_layers or alignment.hidden_size != info.hidden_size):
            raise ValueError(f"alignment is for L={alignment.num_layers}, H={alignment.hidden_size}; "
                             f"backbone {info.name} has L={info.num_layers}, H={info.hidden_size}")
        self.backbone = backbone
        self.alignment = alignment
        self.pooling = pooling
        self.device = torch.device(info.device if info.device != "auto" else "cpu")
        self.dtype = _torch_dtype(info.compute_dtype)
        # per tower: (mu (H,), sigma (H,)) standardisation statistics, see set_standardization
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.user_sigma = "own"  # or "item": the user tower is scaled by the item tower's sigma
        self.item_norm = bool(item_norm)  # standardised item states rescaled to length sqrt(H)

    # -- scoring ---------------------------------------------------------------------------
    @staticmethod
    def _moments(states: torch.Tensor, h: int, eps: float, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if states.dim() != 2 or states.shape[1] != h or states.shape[0] < 2:
            raise ValueError(f"set_standardization: {what} states must be (N >= 2, {h}); got {tuple(states.shape)}")
        states = states.detach().float().cpu()
        return states.mean(0), states.std(0).clamp_min(eps)

    def set_standardization(self, states: torch.Tensor | None, user_states: torch.Tensor | None = None,
                            eps: float = 1e-6, user_sigma: str = "own") -> "TwoTower":
        """Fix each tower's ``mu`` and ``sigma`` (each ``(H,)``): the per-dimension mean and standard
        deviation of ``states`` (``(N, H)`` item-tower states, e.g. the catalogue's) for the item
        tower and of ``user_states`` (``(M, H)`` user-tower states of training users) for the user
        tower; without ``user_states`` the user tower uses the item statistics too (the course's
        first, simpler form). ``states=None`` switches standardisation off (the raw dot product).
        Returns ``self``.

        ``user_sigma="item"`` scales the user tower by the *item* tower's ``sigma`` (its own mean is
        kept): one diagonal scaling on both sides, so the score's ID part stays the isometric copy of
        SASRec's geometry that :meth:`init_isometric_reparameterization` builds (with each tower's own
        ``sigma`` the user side is distorted by ``sigma_item / sigma_user``). RA-Rec's aligned towers
        use it with the users' *text-only* mean: README, "Results", point 8. The trainer then keeps
        the user mean fixed and lets only the item statistics follow the towers
        (:attr:`user_sigma`).

        The statistics are detached copies: they are data, not parameters, and never train.

        Raises:
            ValueError: states that are not ``(N >= 2, H)`` with ``H`` the backbone's width;
                ``user_sigma`` not ``"own"`` or ``"item"``.
        """
        if user_sigma not in ("own", "item"):
            raise ValueError(f"user_sigma must be 'own' or 'item'; got {user_sigma!r}")
        self.user_sigma = user_sigma
        if states is None:
            self.stats = {}
            return self
        h = self.backbone.info.hidden_size
        item = self._moments(states, h, eps, "item")
        user = self._moments(user_states, h, eps, "user") if user_states is not None else item
        if user_sigma == "item":
            user = (user[0], item[1].clone())  # a copy: checkpoints (safetensors) refuse shared memory
        self.stats = {"item": item, "user": user}
        return self

    @property
    def mu(self) -> torch.Tensor | None:
        """The item tower's mean (``None`` when not standardised)."""
        return self.stats["item"][0] if self.stats else None

    @property
    def sigma(self) -> torch.Tensor | None:
        """The item tower's standard deviation (``None`` when not standardised)."""
        return self.stats["item"][1] if self.stats else None

    def sample_text_states(self, texts: Sequence[str], n: int, seed: int, batch_size: int = 64,
                           max_tokens: int | None = None) -> torch.Tensor:
        """Text-only final states ``(min(n, N), H)`` of a seeded random sample of ``texts`` (in
        index order): the input :meth:`set_standardization` needs when encoding the whole list
        would cost too much (2,048 of the 23,033 Clothing items take about 20 s on a CPU)."""
        import numpy as np

        idx = np.sort(np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False))
        return self.encode_batched([texts[i] for i in idx], "item", None, batch_size, max_tokens,
                                   use_prefix=False, progress=False)

    def standardize(self, vecs: torch.Tensor, tower: str = "item") -> torch.Tensor:
        """``(vecs - mu_t) / sigma_t`` row-wise with tower ``t``'s statistics (``(N, H)`` -> ``(N, H)``),
        or ``vecs`` unchanged when none are set; with :attr:`item_norm`, item rows are then rescaled to
        length ``sqrt(H)``. Differentiable: training's ranking loss sees the same scores as the evaluation."""
        if tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}; got {tower!r}")
        if not self.stats:
            return vecs
        mu, sigma = (x.to(vecs.device, vecs.dtype) for x in self.stats[tower])
        z = (vecs - mu) / sigma
        if tower == "item" and self.item_norm:
            z = z * (math.sqrt(z.shape[-1]) / z.norm(dim=-1, keepdim=True).clamp_min(1e-6))
        return z

    def score(self, user_vecs: torch.Tensor, item_vecs: torch.Tensor) -> torch.Tensor:
        """Two-tower scores ``z_user(u) @ z_item(i).T``: (U, H) x (I, H) -> (U, I) (see the class docstring;
        with :attr:`item_norm` each user's ranking is by cosine)."""
        return self.standardize(user_vecs, "user") @ self.standardize(item_vecs, "item").T

    @torch.no_grad()
    def init_isometric_reparameterization(self) -> torch.Tensor:
        """Start the last layer's reparameterization from SASRec's geometry (both towers, the same map).

        With the gated attention and one ID slot in its own softmax, the last layer's soft prompt
        ``W e`` reaches the pooled, standardised final state through frozen linear maps only, up to
        per-token scalars (the RMS norms) and the layer's MLP:

            J = diag(g_final / sigma_item) . O . R . V . diag(g_input)                   (H x H)

        (``g_input``, ``g_final``: the layer's input norm and the final norm weights; ``V`` the value
        projection, ``R`` the grouped-query expansion of its heads, ``O`` the output projection;
        ``sigma_item`` the item tower's standardisation). Setting ``W = V_d S_d^-1 c`` (``V_d``
        the top ``d`` right singular vectors of ``J``, ``d`` = the ID width, ``S_d`` their singular
        values, ``c`` = the mean of ``S_d``) makes ``J W = c U_d``, ``c`` times a matrix with
        orthonormal columns, so ``(J W e_u) . (J W e_i) = c^2 e_u . e_i`` starts as a scaled copy of
        SASRec's own score next to the text's. (``W = V_d`` alone weights SASRec's direction ``k`` by
        ``s_k^2``, on SmolLM2 from 98.9^2 down to 20.6^2: the ID part's scores then correlated 0.86
        with SASRec's per user, 0.96 with the singular values divided out.) The frozen maps are read
        by feeding the identity through them, so any quantization works. The bias is set to 0. With the
        cosine item tower (:attr:`item_norm`) each item's standardised state is then divided by its own length
        (mostly the text's): the ID part keeps SASRec's geometry up to that per-item scalar. How much of the
        geometry survives the parts of the path that are not in ``J`` (the prefix's RMS norm, the MLP, the final
        norm) is measured by ``bench/id_channel_probe.py`` (README, "Results", point 10).

        Measured on the main job (real Clothing, 2,000 test users, full ranking, gate 0.25, untrained):
        README, "Results", point 8.

        Returns:
            ``(H,)`` the singular values of ``J`` (for a report).

        Raises:
            ValueError: not a LLaMA-family backbone; no alignment or no ID representation; a shared
                (not layer-specific) map; ``n_id != 1``; no standardisation statistics set
                (:meth:`set_standardization` first, with the text-only item states); a path ``J`` of
                rank below ``d`` (no isometric map exists).
        """
        info, al = self.backbone.info, self.alignment
        if info.architecture != "llama":
            raise ValueError(f"init_isometric_reparameterization: LLaMA-family backbones only; {info.name} is "
                             f"{info.architecture} (use reparam_init = \"random\")")
        if al is None or not al.use_id or not al.layer_specific or al.num_id_tokens != 1:
            raise ValueError("init_isometric_reparameterization needs an alignment with one layer-specific ID slot")
        if al.id_dim > info.hidden_size:
            raise ValueError(f"init_isometric_reparameterization: the ID width {al.id_dim} exceeds the LLM's "
                             f"{info.hidden_size}; no isometric map exists")
        if not self.stats:
            raise ValueError("init_isometric_reparameterization needs the text-only standardisation statistics "
                             "(set_standardization first)")
        from rarec_lite.prefix import _layers

        model = self.backbone.model
        block = _layers(model, "llama")[info.num_layers - 1]
        attn = block.self_attn
        h, nh, nkv, hd = info.hidden_size, info.num_heads, info.num_kv_heads, info.head_dim
        dev, dt = self.device, self.dtype
        probe = lambda module, n: (module(torch.eye(n, device=dev, dtype=dt))  # noqa: E731
                                   - module(torch.zeros(1, n, device=dev, dtype=dt))).float().cpu()
        v = probe(attn.v_proj, h).T                                            # (nkv * hd, H)
        v = v.view(nkv, hd, h).repeat_interleave(nh // nkv, 0).reshape(nh * hd, h)
        o = probe(attn.o_proj, nh * hd).T                                      # (H, nh * hd)
        g_in = block.input_layernorm.weight.detach().float().cpu()
        g_out = model.norm.weight.detach().float().cpu()
        j = (g_out / self.stats["item"][1])[:, None] * (o @ v) * g_in[None, :]
        _, sv, vh = torch.linalg.svd(j)
        if sv[al.id_dim - 1] <= 1e-6 * sv[0]:
            raise ValueError(f"init_isometric_reparameterization: the last layer's frozen path has rank below the ID "
                             f"width {al.id_dim} (singular value {al.id_dim}: {float(sv[al.id_dim - 1]):.3g}); no "
                             f"isometric map exists")
        s_d = sv[: al.id_dim]
        w = (vh[: al.id_dim].T / s_d * s_d.mean()).contiguous()                # (H, d): J w = mean(s_d) U_d
        last = al.num_layers - 1
        for tower in TOWERS:
            lin = al.reparam[tower][last]
            lin.weight.copy_(w.to(lin.weight.device, lin.weight.dtype))
            lin.bias.zero_()
        return sv

    # -- the training objective ----------------------------------------------------------------
    def loss(self, user_prompts: Sequence[str], user_emb: torch.Tensor | None, item_prompts: Sequence[str],
             item_emb: torch.Tensor | None, item_ids: torch.Tensor, user_ids: torch.Tensor | None = None, *,
             lam: float = 0.1, temperature: float = 0.1, score_scale: float = 1.0,
             text_layers: tuple | None = None, extra_items: torch.Tensor | None = None,
             extra_ids: torch.Tensor | None = None, rank_loss: str = "bpr", max_user_tokens: int | None = None,
             max_item_tokens: int | None = None, log_q: torch.Tensor | None = None,
             extra_log_q: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """RA-Rec's objective on one batch of B (user, target item) pairs (Sec. 3): read it top to bottom.

        1. Both towers encode their prompts with their soft prompts; the pooled final states are
           standardised per tower, exactly as :meth:`score` ranks them.
        2. Ranking loss (BPR, or sampled softmax) of each user's target against the other targets of
           the batch and ``extra_items`` (cached item-tower states of uniformly drawn items, no gradient).
        3. InfoNCE per layer: the ID-side representation ``d^(l)`` (:meth:`RAAlignment.id_representations`,
           what the soft prompt carries) against the text-only representation of the same user/item.
           Both sides are divided by the text's per-dimension standard deviation at that layer; the
           text side is centred on its cache mean, the ID side on its batch mean (an empty soft prompt
           then gives exactly the ``log B`` floor; see :class:`rarec_lite.train.TrainConfig`).

        Args:
            user_prompts, item_prompts: B hybrid user prompts and B target item prompts.
            user_emb, item_emb: (B, d) frozen SASRec user / item embeddings (``None`` without IDs).
            item_ids, user_ids: (B,) ids (a repeated id is not a negative).
            lam, temperature, score_scale, rank_loss: see :func:`rarec_lite.losses.alignment_loss`.
            text_layers: with ``lam > 0``: ``(user (B, L, H), item (B, L, H), stats)``, the cached text-only
                states at each layer's input and ``stats = {"user"|"item": (mean (L, H), std (L, H))}``.
            extra_items: (N, H) raw item-tower states of extra negatives, ``extra_ids`` (N,) their ids.
            log_q, extra_log_q: (B,) and (N,) log sampling probabilities of the in-batch targets and the
                extras: the sampled softmax's logQ correction (:func:`rarec_lite.losses.sampled_softmax_loss`).

        Returns:
            ``{"bpr", "infonce", "total"}`` scalar tensors (nats; ``bpr`` is the ranking loss) and
            ``"user_states"``: the raw pooled user states (B, H), detached (the trainer's moving-average
            user statistics follow them).

        Data-parallel (:mod:`rarec_lite.distributed`): every rank passes the same whole batch; each
        runs the LLM on its :func:`~rarec_lite.distributed.split_rows` share, the pooled states are
        gathered with autograd, and every rank returns the same loss of the whole batch (its gradient
        reaches the parameters once :func:`~rarec_lite.distributed.all_reduce_gradients` has averaged it).

        Raises:
            ValueError: ``lam > 0`` without ``text_layers`` or an alignment; a batch smaller than the
                number of processes.
        """
        from rarec_lite.losses import alignment_loss

        # data-parallel (rarec_lite.distributed): this rank runs the LLM on its share of the batch; the
        # pooled states are gathered with autograd, so every rank computes the loss of the whole batch
        b = len(user_prompts)
        lo, hi = distributed.split_rows(b)
        if hi == lo:
            raise ValueError(f"a batch of {b} pairs over {distributed.world().size} processes leaves rank "
                             f"{distributed.world().rank} none; use batch_size >= the number of processes")
        share = lambda x: None if x is None else x[lo:hi]  # noqa: E731
        u = distributed.gather_rows(self.encode_users(user_prompts[lo:hi], share(user_emb), max_tokens=max_user_tokens),
                                    b, grad=True)
        v = distributed.gather_rows(self.encode_items(item_prompts[lo:hi], share(item_emb), max_tokens=max_item_tokens),
                                    b, grad=True)
        d_u = d_v = t_u = t_v = ()
        if lam > 0:
            if text_layers is None or self.alignment is None:
                raise ValueError("lam > 0 needs text_layers and an alignment with an ID representation")
            text_u, text_v, stats = text_layers

            def z_text(x, side, layer):
                mu, sd = stats[side]
                return (x.float() - mu[layer]) / sd[layer]

            def z_id(d, side, layer):
                return (d.float() - d.float().mean(0, keepdim=True)) / stats[side][1][layer]

            d_u = [z_id(d, "user", l) for l, d in enumerate(self.alignment.id_representations("user", user_emb))]
            d_v = [z_id(d, "item", l) for l, d in enumerate(self.alignment.id_representations("item", item_emb))]
            t_u = [z_text(x, "user", l) for l, x in enumerate(text_u.unbind(1))]
            t_v = [z_text(x, "item", l) for l, x in enumerate(text_v.unbind(1))]
        negatives = self.standardize(extra_items, "item") if extra_items is not None else None
        out = alignment_loss(self.standardize(u, "user"), self.standardize(v, "item"), d_u, t_u, d_v, t_v,
                             lam, temperature, item_ids=item_ids, score_scale=score_scale, user_ids=user_ids,
                             extra_items=negatives, extra_ids=extra_ids if negatives is not None else None,
                             rank_loss=rank_loss, log_q=log_q, extra_log_q=extra_log_q)
        out["user_states"] = u.detach()
        return out

    # -- tokenising ------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(input_ids (B, T), attention_mask (B, T))`` on the backbone's device."""
        tok = self.backbone.tokenizer
        if tok.pad_token is None:  # e.g. GPT-2 style vocabularies; the pad is masked out anyway
            tok.pad_token = tok.eos_token
        enc = tok(list(texts), padding=True, truncation=max_tokens is not None, max_length=max_tokens,
                  return_tensors="pt", padding_side="right")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], tower: str, id_emb: torch.Tensor | None = None,
               per_layer: bool = False, max_tokens: int | None = None, use_prefix: bool = True):
        """Pooled states of ``texts`` through the tower (with its soft prompt when aligned).

        Args:
            texts: B prompts.
            tower: ``"user"`` or ``"item"``.
            id_emb: (B, d) ID embeddings for the soft prompt (see :meth:`RAAlignment.prefixes`).
            per_layer: also return the pooled **input** of every layer (the states a prefix of
                that layer stands beside; InfoNCE's text-only side).
            max_tokens: truncate prompts to this many tokens.
            use_prefix: False = text only (no soft prompt), whatever the alignment.

        Returns:
            ``final`` (B, H) float32, or ``(final, [in_1, ..., in_L])`` with each (B, H) when
            ``per_layer``: ``in_l`` is the pooled input of layer ``l`` (``in_1`` the token embeddings).
        """
        from rarec_lite.llm import pooling_exclusion
        from rarec_lite.prefix import forward_with_prefix, pool

        if len(texts) == 0:
            raise ValueError("encode: no texts")
        input_ids, mask = self.tokenize(texts, max_tokens)
        prefixes = bias = gate = None
        if use_prefix and self.alignment is not None:
            prefixes = [p.to(self.device, self.dtype) for p in self.alignment.prefixes(tower, id_emb, len(texts))]
            bias = self.alignment.prefix_bias(tower)  # joint attention (None when gated)
            gate = self.alignment.prefix_gate(tower)  # gated attention (None when joint)
            if gate is not None:
                gate = gate.to(self.device, self.dtype)
        groups = self.alignment.prefix_groups if prefixes is not None else None
        hidden = forward_with_prefix(self.backbone, input_ids, mask, prefixes, prefix_bias=bias, prefix_gate=gate,
                                     prefix_groups=groups)
        skip = pooling_exclusion(self.backbone, input_ids)  # a BOS attention sink stays out of the mean
        final = pool(hidden[-1], mask, how=self.pooling, exclude=skip).float()
        if not per_layer:
            return final
        return final, [pool(h, mask, how=self.pooling, exclude=skip).float() for h in hidden[:-1]]

    def encode_users(self, prompts: Sequence[str], id_emb: torch.Tensor | None = None, per_layer: bool = False,
                     max_tokens: int | None = None):
        """User tower: hybrid prompts (B texts) + user ID embeddings (B, d) -> (B, H) [+ per layer]."""
        return self.encode(prompts, "user", id_emb, per_layer, max_tokens)

    def encode_items(self, prompts: Sequence[str], id_emb: torch.Tensor | None = None, per_layer: bool = False,
                     max_tokens: int | None = None):
        """Item tower: item prompts (B texts) + item ID embeddings (B, d) -> (B, H) [+ per layer]."""
        return self.encode(prompts, "item", id_emb, per_layer, max_tokens)

    @torch.no_grad()
    def encode_batched(self, texts: Sequence[str], tower: str, id_emb: torch.Tensor | None = None,
                       batch_size: int = 64, max_tokens: int | None = None, per_layer: bool = False,
                       use_prefix: bool = True, progress: bool | None = None, layer_dtype=torch.float16,
                       shard: bool = True):
        """Encode a long list (e.g. the 23,033-item catalogue) in batches, without gradients.

        Texts are sorted by length so each batch pads little, then put back in order. When the
        states depend on the text alone (no ID soft prompt), each distinct text is encoded once.
        A tqdm bar is shown when ``progress`` (default: more than 4 batches), on rank 0 only.

        **Data-parallel** under a process group (:mod:`rarec_lite.distributed`), with ``shard``: the
        batches are the ones a single process forms; batch ``b`` is encoded by rank ``b % world size``
        and every rank receives all ``N`` rows in order (bit-identical to one process on the same
        hardware and threads per process). Every rank must then make the same call. ``shard=False``: this process encodes
        everything itself (a call that only some ranks make). A single process ignores ``shard``.

        Returns:
            ``final`` (N, H) float32, or ``(final, layers (N, L, H) in layer_dtype)`` when
            ``per_layer`` (float16 by default: 23,033 items x 8 layers x 576 = 0.2 GB).

        Raises:
            ValueError: ``id_emb`` does not have N rows.
        """
        from rarec_lite.progress import tqdm

        n = len(texts)
        if id_emb is not None and id_emb.shape[0] != n:
            raise ValueError(f"id_emb has {id_emb.shape[0]} rows for {n} texts")
        text_only = (not use_prefix or self.alignment is None or not self.alignment.use_id)
        if text_only and n:
            # the state depends on the text alone: encode each distinct text once (Clothing: 5,988 for 23,033 items)
            unique = list(dict.fromkeys(texts))
            if len(unique) < n:
                row = {t: k for k, t in enumerate(unique)}
                idx = torch.as_tensor([row[t] for t in texts])
                out = self.encode_batched(unique, tower, None, batch_size, max_tokens, per_layer, use_prefix,
                                          progress, layer_dtype, shard)
                return (out[0][idx], out[1][idx]) if per_layer else out[idx]
        order = sorted(range(n), key=lambda i: len(texts[i]))
        batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
        # data-parallel: the same batches as one process, batch b on rank b % world size, then gathered
        w = distributed.world() if shard else distributed.World()
        mine = distributed.assigned_batches(len(batches), w)
        show = (progress if progress is not None else len(batches) > 4) and distributed.is_main()
        h = self.backbone.info.hidden_size
        finals, layers = [], []
        for b in tqdm(mine, desc=f"encode {tower}s", disable=not show, unit="batch"):
            idx = batches[b]
            emb = id_emb[idx] if id_emb is not None else None
            out = self.encode([texts[i] for i in idx], tower, emb, per_layer, max_tokens, use_prefix)
            f, ls = (out if per_layer else (out, None))
            finals.append(f.cpu())
            if per_layer:
                layers.append(torch.stack(ls, dim=1).to("cpu", layer_dtype))
        distributed.ENCODED[tower] += sum(len(batches[b]) for b in mine)
        final = torch.cat(finals) if finals else torch.empty(0, h)
        final = distributed.gather_batches(final, batches, n, w)
        if not per_layer:
            return final
        layers = torch.cat(layers) if layers else torch.empty(0, self.backbone.info.num_layers, h, dtype=layer_dtype)
        layers = distributed.gather_batches(layers, batches, n, w)
        return final, layers

    def encode_text_only(self, texts: Sequence[str], tower: str = "item", per_layer: bool = True,
                         batch_size: int = 64, max_tokens: int | None = None, progress: bool | None = None):
        """Text-only (no soft prompt) pooled states: ``(final (N, H), layers (N, L, H))``.

        This is InfoNCE's target side; it does not depend on trained weights, so compute it
        once per prompt set and cache it (:class:`rarec_lite.train.TextCache`).
        """
        return self.encode_batched(texts, tower, None, batch_size, max_tokens, per_layer, use_prefix=False,
                                   progress=progress)



@torch.no_grad()
def hidden_state_rms(backbone: Any, texts: Sequence[str], max_tokens: int = 64) -> list[float]:
    """Per-layer typical RMS of real hidden states at each layer's **input**: the median over
    non-pad tokens of each token's RMS.

    The median, not the mean: LLMs have a few "massive activation" tokens (in SmolLM2-135M the
    first token's state has RMS ~240 from layer 13 on, while the other tokens stay near 9).

    Returns L floats (layer 1's input = the embeddings, ..., layer L's input = layer L-1's
    output): pass them as ``RAAlignment(init_scale=...)`` so prefix vectors start at the scale
    of the hidden states they stand in for.
    """
    tower = TwoTower(backbone, None)
    from rarec_lite.prefix import forward_with_prefix

    input_ids, mask = tower.tokenize(texts, max_tokens)
    hidden = forward_with_prefix(backbone, input_ids, mask, None)
    m = mask.bool()
    return [float(h[m].float().pow(2).mean(-1).sqrt().median()) for h in hidden[:-1]]
