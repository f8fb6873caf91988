"""SASRec: the ID encoder that RA-Rec aligns to the LLM (Kang & McAuley, ICDM 2018, arXiv 1808.09781).

A user is the sequence of items it bought, oldest first. SASRec reads that sequence with a
small causal Transformer: the state at position ``t`` has seen items ``0..t`` only, and is
trained to predict item ``t + 1``. The score of a candidate item is the dot product of the
last state with the item's embedding (the same embedding table as the input, Sec. III-E).
RA-Rec (Yu et al. 2024, Sec. 3.1) keeps this model frozen and uses

* ``encode(history)``: the last state, a ``(d,)`` **user (sequence) embedding**, and
* ``item_embeddings()``: the ``(I, d)`` **item embedding** table,

as the ID representations it feeds to the LLM.

Layout of one model (d = ``hidden``, L = ``max_len``)::

    item ids + 1 (0 = padding)  ->  E[item] * sqrt(d)  +  P[position]  ->  dropout
      -> num_layers x [ x + Attn(LN(x)) ;  x + FFN(LN(x)) ]     (pre-LN, causal attention)
      -> LN  ->  states (B, L, d);   score(i) = cos(state, E[i]) / tau   (or state . E[i], see below)

Differences from the paper, on purpose: pre-LayerNorm blocks (the paper adds LN after the
residual; pre-LN trains more stably and is what GPT-2 and nanoGPT use), a final LayerNorm,
cosine similarity over a temperature (``tau = 0.1``) as the default score (``similarity="dot"`` is the
paper's dot product; measured on Clothing, the cosine form is higher on validation NDCG@10, 0.0178 vs
0.0167, README "The ID encoder"), a softmax cross-entropy over many items instead of the paper's
loss (one sampled negative with binary cross-entropy, ``loss="bce"``; ``loss="bpr"`` is Rendle et al.
2009), and a moving average of the weights. The softmax is what gives good full-ranking numbers
(Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?",
RecSys 2023): ``loss="ce"`` over the whole catalogue, or the default ``loss="sampled"``, over
2,048 items drawn uniformly for each batch with the logQ correction (:func:`sampled_softmax_ce`),
which on Clothing matched the full softmax (test NDCG@10 0.0156 vs 0.0158, HR@100 0.0882 vs 0.0879,
no paired difference significant) at 2.8x less time per training step. ``ema_decay = 0.995``
validates, keeps and exports an exponential moving average of the weights (:func:`ema_update`),
which raised validation NDCG@10 from 0.0178 to 0.0189 and test HR@10 from 0.0284 to 0.0298
(same seed and threads, paired p = 0.001 and 0.005; README, "The ID encoder"). ``loss="gbce"`` is gSASRec's calibrated binary
cross-entropy with negatives per position (Petrov & Macdonald, RecSys 2023).
``SASRecConfig.contrastive > 0`` adds DuoRec's contrastive regulariser (Qiu et al., WSDM 2022;
:func:`info_nce`), off by default: it did not help on Clothing (README, "Options tried").

Which interactions SASRec sees (the one place this is written down). For a user with
chronological sequence ``s`` (leave-one-out, :meth:`rarec_lite.data.Dataset.split`):

* **training**: ``split.train = s[:-2]``; every position predicts the next item of ``s[:-2]``,
  so the training targets are ``s[1:-2]``;
* **validation** (early stopping, the best epoch is kept): history ``s[:-2]``, target ``s[-2]``;
* **test**: history ``s[:-1]``, target ``s[-1]``.

The RA-Rec alignment trains on the validation pairs ``(s[:-2], s[-2])``
(:func:`rarec_lite.sampling.make_samples` with ``part="valid"``, the pipeline's default
``[train] samples_from``): no alignment target is a SASRec training target (SASRec only used
``s[-2]`` to pick its epoch), and neither model trains on ``s[-1]``. Keep this split: training
SASRec on ``s[:-1]`` would make every alignment target a memorised SASRec target.

Histories are **right-aligned**: the most recent item is always in the last column, earlier
columns are padded with 0. Positions are counted in that window (column ``L - 1`` is always
the most recent item), so a batch may be cut to its longest history without changing anything.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .files import atomic_write_json, load_checkpoint, save_checkpoint
from .metrics import DEFAULT_KS, EvalResult, evaluate

LOSSES = ("ce", "sampled", "gbce", "bpr", "bce")
SIMILARITIES = ("dot", "cosine")
#: the smallest temperature accepted: cosine scores are at most ``1 / temperature`` in absolute value, and
#: 1e6 keeps them (and their float32 differences) finite; 1e-45 would overflow float32 to ``inf``.
MIN_TEMPERATURE = 1e-6


# ----------------------------------------------------------------------------- input


def pad_histories(histories: Sequence[np.ndarray], max_len: int, *, trim: bool = False) -> torch.LongTensor:
    """Right-align item-id histories into a padded ``(B, L)`` LongTensor of ``item id + 1``.

    Each history keeps its last ``max_len`` items; shorter ones are padded on the left with 0.

    Args:
        histories: ``B`` int arrays of item ids ``0..I-1``, oldest first.
        max_len: ``L``, the window length.
        trim: cut the width to the longest (truncated) history in the batch instead of
            ``max_len`` (same model output, less work; see the module docstring).

    Returns:
        ``(B, L)`` int64; ``0`` = padding, ``j + 1`` = item ``j``.

    Raises:
        ValueError: a negative item id.
    """
    lengths = [min(len(h), max_len) for h in histories]
    width = max(lengths, default=0) if trim else max_len
    width = max(width, 1)
    out = np.zeros((len(histories), width), dtype=np.int64)
    for row, (h, n) in enumerate(zip(histories, lengths)):
        if n:
            tail = np.asarray(h, dtype=np.int64)[-n:]
            if tail.min() < 0:
                raise ValueError(f"history {row} contains a negative item id ({int(tail.min())})")
            out[row, width - n :] = tail + 1
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- model


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position ``t`` sees positions ``<= t`` that are not padding.

    Shapes: ``x (B, L, d)``, ``key_is_item (B, L)`` bool -> ``(B, L, d)``.
    A padding position may only attend to itself (so no softmax row is empty); its output is
    never used.
    """

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.attn_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_is_item: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, L, h, d // h).transpose(1, 2) for t in (q, k, v))  # (B, h, L, d/h)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)  # (B, h, L, L)
        causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
        allowed = causal & key_is_item[:, None, None, :]  # (B, 1, L, L)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)
        att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        y = self.attn_dropout(att) @ v  # (B, h, L, d/h)
        return self.proj(y.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    """One pre-LN Transformer block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))`` (Kang & McAuley, Sec. III-B/C)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = CausalSelfAttention(hidden, num_heads, dropout)
        self.ln2 = nn.LayerNorm(hidden)
        # the paper's point-wise feed-forward network: two d x d layers with a ReLU
        self.ffn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_is_item: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln1(x), key_is_item))
        x = x + self.dropout(self.ffn(self.ln2(x)))
        return x


class SASRec(nn.Module):
    """Self-attentive sequential recommender (Kang & McAuley 2018).

    Args:
        num_items: ``I``; item ids are ``0..I-1`` (stored at embedding rows ``1..I``, row 0 = padding).
        hidden: ``d``, the embedding and state size.
        max_len: ``L``, the longest history read (older items are dropped).
        num_layers, num_heads: Transformer blocks and attention heads.
        dropout: on embeddings, attention weights and residual branches.
        similarity: ``"dot"`` (the paper's ``state . E[i]``) or ``"cosine"``: the output states and
            the output item embeddings are L2-normalised and divided by ``sqrt(temperature)``, so a
            score is ``cos(state, E[i]) / temperature`` (the input embeddings stay unnormalised).
        temperature: ``tau`` of ``"cosine"`` (ignored by ``"dot"``).

    The class defaults are the paper's model (dot product, dropout 0.2, hidden 64); the course's
    measured defaults (cosine / 0.1, dropout 0.5, hidden 128, ...) live in :class:`SASRecConfig`,
    which :func:`train_sasrec` uses.

    Raises:
        ValueError: sizes below 1, unknown ``similarity``, or a ``temperature`` that is not a finite number
            ``>= MIN_TEMPERATURE`` (1e-6).
    """

    def __init__(self, num_items: int, hidden: int = 64, max_len: int = 50, num_layers: int = 2,
                 num_heads: int = 1, dropout: float = 0.2, similarity: str = "dot", temperature: float = 1.0):
        super().__init__()
        if num_items < 1 or hidden < 1 or max_len < 1:
            raise ValueError(f"num_items, hidden and max_len must be >= 1 (got {num_items}, {hidden}, {max_len})")
        if similarity not in SIMILARITIES or not (math.isfinite(temperature) and temperature >= MIN_TEMPERATURE):
            raise ValueError(f"similarity must be one of {SIMILARITIES} and temperature a finite number >= "
                             f"{MIN_TEMPERATURE:g}; got {similarity!r}, {temperature}")
        self.config = dict(num_items=num_items, hidden=hidden, max_len=max_len, num_layers=num_layers,
                           num_heads=num_heads, dropout=dropout, similarity=similarity, temperature=temperature)
        self.similarity, self.temperature = similarity, float(temperature)
        self.num_items, self.hidden, self.max_len = num_items, hidden, max_len
        self.item_emb = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.emb_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(hidden, num_heads, dropout) for _ in range(num_layers))
        self.final_ln = nn.LayerNorm(hidden)
        # E[i] * sqrt(d) should be O(1) per coordinate (Vaswani et al. 2017, Sec. 3.4)
        nn.init.normal_(self.item_emb.weight, std=hidden ** -0.5)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """States of every position.

        Args:
            seq: ``(B, L')`` LongTensor of item id + 1, right-aligned, 0 = padding, ``L' <= max_len``.

        Returns:
            ``(B, L', d)``; row ``t`` depends on items at columns ``<= t`` only.

        Raises:
            ValueError: ``L' > max_len`` or ids outside ``0..I``.
        """
        B, L = seq.shape
        if L > self.max_len:
            raise ValueError(f"sequence width {L} exceeds max_len {self.max_len}; use pad_histories(..., max_len)")
        if seq.numel() and (int(seq.min()) < 0 or int(seq.max()) > self.num_items):
            raise ValueError(f"item ids + 1 must be in 0..{self.num_items}, got {int(seq.min())}..{int(seq.max())}")
        is_item = seq != 0
        positions = torch.arange(self.max_len - L, self.max_len, device=seq.device)  # last column = max_len - 1
        x = self.item_emb(seq) * math.sqrt(self.hidden) + self.pos_emb(positions)[None]
        x = self.emb_dropout(x) * is_item[..., None]  # padding positions carry nothing
        for block in self.blocks:
            x = block(x, is_item)
        return self._output(self.final_ln(x))

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        """States or item embeddings as they enter a score: unchanged (``"dot"``), or on the sphere of
        radius ``temperature ** -0.5`` (``"cosine"``: the product of two is ``cos / temperature``)."""
        if self.similarity == "dot":
            return x
        return F.normalize(x, dim=-1) / math.sqrt(self.temperature)

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        """User (sequence) embedding: the state at the last column.

        Args:
            histories: ``(B, L')`` right-aligned LongTensor (see :func:`pad_histories`).

        Returns:
            ``(B, d)``.
        """
        return self.forward(histories)[:, -1, :]

    def item_embeddings(self) -> torch.Tensor:
        """``(I, d)`` output item embeddings (row ``i`` = item ``i``; the padding row is dropped;
        normalised and scaled with ``similarity="cosine"``)."""
        return self._output(self.item_emb.weight[1:])

    def score(self, histories: torch.Tensor) -> torch.Tensor:
        """``(B, I)`` next-item scores ``encode(h) @ item_embeddings().T``."""
        return self.encode(histories) @ self.item_embeddings().T

    def _encode_sorted(self, histories: Sequence[np.ndarray], tokens: int = 16384) -> torch.Tensor:
        """``(B, d)`` encodings of raw histories, computed in chunks of similar length.

        A batch is padded to its longest history; Clothing histories are mostly short (median 6)
        with a few long ones, so users are encoded sorted by length, in chunks of at most
        ``tokens`` padded positions (many short histories at once, few long ones): a fraction of
        the padded work, in few enough calls that thread start-up does not dominate. Same result
        as one padded batch (up to float rounding).
        """
        device = self.item_emb.weight.device
        histories = list(histories)
        lengths = np.array([max(min(len(h), self.max_len), 1) for h in histories], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        out = torch.empty(len(histories), self.hidden, device=device)
        start = 0
        while start < len(order):
            stop = start + 1  # sorted ascending: the chunk's width is its last user's length
            while stop < len(order) and (stop + 1 - start) * lengths[order[stop]] <= tokens:
                stop += 1
            idx = order[start:stop]
            padded = pad_histories([histories[i] for i in idx], self.max_len, trim=True).to(device)
            out[torch.as_tensor(idx, device=device)] = self.encode(padded)
            start = stop
        return out

    @torch.no_grad()
    def encode_histories(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """User embeddings of raw histories (lists/arrays of item ids, oldest first): ``(B, d)`` float32 on CPU.

        Pads and trims them (:func:`pad_histories`, in chunks of similar length), runs :meth:`encode`
        without gradients: the frozen ID representation that RA-Rec turns into the user soft prompt.
        """
        return self._encode_sorted(histories).float().cpu()

    def score_histories(self, histories: Sequence[np.ndarray]) -> torch.Tensor:
        """``(B, I)`` scores for a list of raw histories (pads and trims them): the ``score_fn`` of :func:`evaluate`."""
        with torch.no_grad():
            return (self._encode_sorted(histories) @ self.item_embeddings().T).float().cpu()


# ----------------------------------------------------------------------------- losses


class _FullSoftmaxCE(torch.autograd.Function):
    """Mean softmax cross-entropy of ``h @ items.T`` against ``pos``, with one ``(N, I)`` buffer.

    Same value and gradients as ``F.cross_entropy(h @ items.T, pos)``; the logits are turned
    into probabilities in place and reused as the gradient, so the catalogue-sized matrix is
    written 3 times instead of 6 (log-softmax, its gradient, the one-hot fill): about 1.4x faster
    on CPU (``bench/bench_sasrec.py``), and half the memory.
    """

    @staticmethod
    def forward(ctx, h, items, pos, smoothing=0.0):
        p = h @ items.T  # (N, I) logits
        top = p.max(1, keepdim=True).values
        mean_logit = p.mean(1, keepdim=True) if smoothing else None
        target = p.gather(1, pos[:, None]) - top  # (N, 1), read before the in-place exp (no underflow)
        p.sub_(top).exp_()
        total = p.sum(1, keepdim=True)
        nll = total.log() - target  # (N, 1): log Z - l_pos
        if smoothing:  # (1 - eps) * nll + eps * (log Z - mean_i l_i)
            nll = (1.0 - smoothing) * nll + smoothing * (total.log() + top - mean_logit)
        loss = nll.mean()
        ctx.smoothing = smoothing
        ctx.save_for_backward(h, items, pos, p, total)
        return loss

    @staticmethod
    def backward(ctx, grad):
        h, items, pos, p, total = ctx.saved_tensors
        eps = ctx.smoothing
        p.div_(total)  # softmax
        if eps:
            p.sub_(eps / p.shape[1])
        p[torch.arange(len(pos), device=p.device), pos] -= 1.0 - eps
        p.mul_(grad / len(pos))
        return p @ items, p.T @ h, None, None


def full_softmax_ce(h: torch.Tensor, items: torch.Tensor, pos: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """``F.cross_entropy(h @ items.T, pos, label_smoothing=...)`` with less memory traffic (:class:`_FullSoftmaxCE`).

    Args:
        h: ``(N, d)`` states; items: ``(I, d)`` item embeddings; pos: ``(N,)`` target item ids.
        label_smoothing: ``eps`` in ``[0, 1)``: the target distribution is ``1 - eps`` on ``pos``
            plus ``eps / I`` on every item (Szegedy et al. 2016, Sec. 7; torch's definition).

    Returns:
        scalar, nats per position (mean over ``N``).

    The target's logit is read before the exponentials, so a target far below the row's best
    (e.g. 200 nats, a cosine score with a tiny temperature) gives a large finite loss, as
    ``F.cross_entropy`` does, not ``inf``.
    """
    return _FullSoftmaxCE.apply(h, items, pos, float(label_smoothing))


def sampled_softmax_ce(h: torch.Tensor, items: torch.Tensor, pos: torch.Tensor, num_negatives: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sampled softmax cross-entropy with ``k`` negatives shared by the batch and the logQ correction.

    ``k`` item ids are drawn uniformly with replacement, once for all ``N`` positions (one
    ``(N, k)`` matmul instead of the full ``(N, I)`` one). Each sampled logit is corrected by
    ``-log(k q(j)) = log(I / k)`` (uniform ``q = 1/I``; Bengio & Senecal 2008, Jean et al. 2015,
    Eq. 9), so the sum of the ``k`` corrected exponentials estimates the sum over all ``I`` items;
    a sampled id equal to the row's target is masked out (its logit never competes with itself).
    Per row: ``-l_pos + log(exp(l_pos) + sum_j exp(l_j + log(I/k)))``.

    Args:
        h: ``(N, d)`` states; items: ``(I, d)`` item embeddings; pos: ``(N,)`` target ids.
        num_negatives: ``k >= 1``.
        generator: RNG for the draw (CPU).

    Returns:
        scalar, nats per position (mean over ``N``). With ``k >= I`` drawn as ``arange(I)`` (every
        item once, ``log(I/k) = 0``) it equals the full-catalogue cross-entropy.

    Raises:
        ValueError: ``k < 1``.
    """
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    num_items = items.shape[0]
    if num_negatives >= num_items:  # the whole catalogue: exact
        neg = torch.arange(num_items, device=pos.device)
    else:
        neg = torch.randint(0, num_items, (num_negatives,), generator=generator, device=pos.device)
    pos_logit = (h * items[pos]).sum(-1, keepdim=True)  # (N, 1)
    neg_logit = h @ items[neg].T + math.log(num_items / len(neg))  # (N, k)
    neg_logit = neg_logit.masked_fill(neg[None, :] == pos[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], 1)  # (N, 1 + k): the target is column 0
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def gbce_beta(num_items: int, num_negatives: int, t: float) -> float:
    """The positive's exponent ``beta`` of gBCE (Petrov & Macdonald, gSASRec, RecSys 2023, Eq. 10).

    ``alpha = k / (I - 1)`` is the negative sampling rate and
    ``beta = alpha * (t * (1 - 1/alpha) + 1/alpha)``: ``t = 0`` gives ``beta = 1`` (plain BCE,
    over-confident with sampled negatives), ``t = 1`` gives ``beta = alpha`` (fully calibrated).

    Raises:
        ValueError: ``k`` outside ``1..I-1`` or ``t`` outside ``[0, 1]``.
    """
    if not 1 <= num_negatives <= num_items - 1:
        raise ValueError(f"num_negatives must be in 1..{num_items - 1} (I - 1), got {num_negatives}")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gbce_t must be in [0, 1], got {t}")
    alpha = num_negatives / (num_items - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def sequence_loss(model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, loss: str = "ce",
                  generator: torch.Generator | None = None, num_negatives: int = 256,
                  gbce_t: float = 0.75, label_smoothing: float = 0.0, contrastive: float = 0.0,
                  contrastive_temperature: float = 1.0, partner_inputs: torch.Tensor | None = None,
                  sampled_negatives: int = 2048) -> torch.Tensor:
    """Next-item loss averaged over the non-padding positions of a batch, plus an optional contrastive term.

    Args:
        inputs: ``(B, L)`` item id + 1, right-aligned.
        targets: ``(B, L)`` the next item id + 1 at each position, 0 where there is none.
        loss: ``"ce"`` softmax cross-entropy over all ``I`` items (logits only at the ``N``
            positions with a target, an ``(N, I)`` matrix; Klenitskiy & Vasilev, RecSys 2023);
            ``"sampled"`` sampled softmax over ``sampled_negatives`` items drawn uniformly once for
            the whole batch, with the logQ correction (:func:`sampled_softmax_ce`; an ``(N, k)``
            matrix: 2.8x less time per training step than ``"ce"`` at ``k = 2048`` on Clothing);
            ``"gbce"`` gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys
            2023, Eq. 11) with ``k = num_negatives`` negatives per position, drawn uniformly (with
            replacement) among the items other than its target (an ``(N, k, d)`` gather):
            ``-beta * log s(pos) - sum_neg log(1 - s(neg))``, ``beta`` from :func:`gbce_beta`.
            (Negatives shared by the whole batch did not learn, not even on a toy task: each
            item is then pushed down too rarely);
            ``"bce"`` the SASRec paper's Eq. (8): ``-log s(pos) - log(1 - s(neg))`` with one
            uniformly sampled negative per position; ``"bpr"`` ``-log s(pos - neg)`` (Rendle et al.
            2009) with the same negative. ``s`` is the logistic sigmoid.
        generator: RNG for the negatives.
        num_negatives, gbce_t: ``k`` and ``t`` of ``"gbce"`` (ignored by the other losses).
        sampled_negatives: ``k`` of ``"sampled"`` (ignored by the other losses).
        label_smoothing: ``eps`` of ``"ce"`` (:func:`full_softmax_ce`; ignored by the other losses).
        contrastive: ``lambda``; when ``> 0`` the batch is encoded a second time (the same
            ``model`` in training mode, so another dropout mask) and ``lambda *``
            :func:`info_nce` ``(states[:, -1], states2[:, -1], contrastive_temperature)`` is added:
            DuoRec's unsupervised contrastive regulariser on the last column (every training row's
            most recent item, right-aligned), with the batch's other sequences as negatives.
            ``0`` (the default) runs one forward pass and draws no extra random numbers, exactly
            as before the option existed.
        contrastive_temperature: ``t`` of :func:`info_nce`.
        partner_inputs: ``(B, L'')`` right-aligned, or ``None``: DuoRec's supervised positives
            ("semantic augmentation", Sec. 4.3.2): row ``b`` is another training sequence whose last
            target is row ``b``'s (:func:`same_target_partners`). Then the second view is
            ``model(partner_inputs)[:, -1]`` instead of a second pass over ``inputs`` (DuoRec's
            ``us_x``: the anchor keeps its dropout view, the positive is the other sequence).

    Returns:
        scalar tensor (nats per position, plus ``lambda`` x nats per vector of the contrastive term).

    Raises:
        ValueError: unknown ``loss``; ``num_negatives``/``gbce_t`` out of range for ``"gbce"``.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: use one of {LOSSES}")
    states = model(inputs)  # (B, L, d)
    extra = 0.0
    if contrastive:
        # (B, d): the same sequences under another dropout mask, or sequences with the same next item
        second = model(inputs if partner_inputs is None else partner_inputs)[:, -1]
        extra = contrastive * info_nce(states[:, -1], second, contrastive_temperature)
    return _next_item_loss(model, states, targets, loss, generator, num_negatives, gbce_t, label_smoothing,
                           sampled_negatives) + extra


def _next_item_loss(model: SASRec, states: torch.Tensor, targets: torch.Tensor, loss: str,
                    generator: torch.Generator | None, num_negatives: int, gbce_t: float,
                    label_smoothing: float, sampled_negatives: int = 2048) -> torch.Tensor:
    """The next-item part of :func:`sequence_loss`, from the ``(B, L, d)`` states."""
    keep = targets != 0
    h = states[keep]  # (N, d)
    pos = targets[keep] - 1  # (N,) item ids
    items = model.item_embeddings()
    if loss == "ce":
        return full_softmax_ce(h, items, pos, label_smoothing)
    if loss == "sampled":
        return sampled_softmax_ce(h, items, pos, sampled_negatives, generator)
    pos_logit = (h * items[pos]).sum(-1)
    if loss == "gbce":
        beta = gbce_beta(model.num_items, num_negatives, gbce_t)
        neg = torch.randint(0, model.num_items - 1, (len(pos), num_negatives), generator=generator, device=pos.device)
        neg = neg + (neg >= pos[:, None]).long()  # (N, k), uniform over the items != the position's target
        neg_logit = torch.einsum("nd,nkd->nk", h, items[neg])  # (N, k)
        return -(beta * F.logsigmoid(pos_logit) + F.logsigmoid(-neg_logit).sum(-1)).mean()
    neg = torch.randint(0, model.num_items - 1, pos.shape, generator=generator, device=pos.device)
    neg = neg + (neg >= pos).long()  # uniform over the items != pos
    neg_logit = (h * items[neg]).sum(-1)
    if loss == "bpr":
        return -F.logsigmoid(pos_logit - neg_logit).mean()
    return -(F.logsigmoid(pos_logit) + F.logsigmoid(-neg_logit)).mean()


def same_target_partners(last_targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each training row, another row with the same last target, drawn uniformly (DuoRec's supervised positive).

    Args:
        last_targets: ``(N,)`` the target of each row's last column (item id + 1).
        generator: RNG of the draw.

    Returns:
        ``(N,)`` int64 row indices: ``partner[i] != i`` and ``last_targets[partner[i]] == last_targets[i]``,
        uniform among such rows; ``partner[i] = i`` where no other row has that target.
    """
    n = len(last_targets)
    order = torch.argsort(last_targets, stable=True)  # rows grouped by target
    sorted_t = last_targets[order]
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_t[1:] != sorted_t[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1  # (N,) group of each sorted row
    starts = torch.nonzero(new_group).flatten()  # (G,)
    sizes = torch.diff(torch.cat([starts, torch.tensor([n])]))  # (G,)
    start, size = starts[group], sizes[group]
    rank = torch.arange(n) - start  # position inside the group
    # a uniform other member: shift by 1 .. size-1 inside the group, cyclically (size 1: (rank + 1) % 1 = itself)
    draw = (torch.rand(n, generator=generator, dtype=torch.float64) * (size - 1)).long()  # 0 .. size-2
    shift = 1 + torch.minimum(draw, (size - 2).clamp(min=0))
    partner_sorted = start + (rank + shift) % size
    out = torch.empty(n, dtype=torch.long)
    out[order] = order[partner_sorted]
    return out


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Contrastive InfoNCE between two views of the same ``B`` sequences, with in-batch negatives.

    The unsupervised contrastive regulariser of DuoRec (Qiu et al., "Contrastive Learning for
    Representation Degeneration Problem in Sequential Recommendation", WSDM 2022, arXiv
    2110.05730, Sec. 4.2-4.3; the same NT-Xent form as CL4SRec, Xie et al. 2022, and SimCLR):
    ``z1[b]`` and ``z2[b]`` are two dropout-augmented encodings of sequence ``b``. The ``2B``
    vectors ``z = [z1; z2]`` are scored against each other by the dot product over
    ``temperature`` (DuoRec's ``sim = dot``, temperature 1.0); each one must pick its twin out of
    the other ``2B - 1`` (itself excluded; the ``2B - 2`` other vectors are the negatives)::

        loss = mean over a in 0..2B-1 of  -log( exp(z_a . z_a+ / t) / sum_{c != a} exp(z_a . z_c / t) )

    where ``a+`` is ``a + B`` for ``a < B`` and ``a - B`` otherwise.

    Args:
        z1, z2: ``(B, d)`` the two views, row ``b`` of each from the same sequence; ``B >= 2``
            for any negative to exist (with ``B = 1`` the loss is 0).
        temperature: ``t > 0``.

    Returns:
        scalar, nats per vector (mean over the ``2B`` vectors).

    Raises:
        ValueError: shapes differ or ``temperature <= 0``.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, d); got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not temperature > 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    B = z1.shape[0]
    z = torch.cat([z1, z2])  # (2B, d)
    sim = (z @ z.T) / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    twin = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)  # (2B,)
    return F.cross_entropy(sim, twin)


def training_pairs(sequences: Sequence[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and shifted targets for every training sequence: ``s[:-1] -> s[1:]``, right-aligned.

    Returns:
        ``inputs, targets``: two ``(U', max_len)`` LongTensors (item id + 1, 0 = pad), for the
        ``U'`` sequences with at least 2 items. The last ``max_len`` transitions are kept.
    """
    seqs = [np.asarray(s, dtype=np.int64) for s in sequences if len(s) >= 2]
    return pad_histories([s[:-1] for s in seqs], max_len), pad_histories([s[1:] for s in seqs], max_len)


# ----------------------------------------------------------------------------- training


@dataclass
class SASRecConfig:
    """Hyper-parameters of :func:`train_sasrec`: the one place where SASRec's defaults live.

    The defaults are the best measured on Amazon Clothing (README, "The ID encoder"); the
    pipeline configs and the notebooks only override what differs.

    Attributes:
        hidden, max_len, num_layers, num_heads, dropout: the model (:class:`SASRec`).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay (Loshchilov & Hutter 2019), on every parameter.
        warmup_steps: optimizer steps of linear warm-up from 0 to ``lr``.
        lr_schedule: ``"constant"`` after the warm-up, or ``"cosine"`` decay to 0 at the end of
            ``epochs`` (then ``epochs`` may not change when a run is resumed). The default, cosine over
            24 epochs, beat the constant rate with early stopping (30 epochs at most) on Clothing:
            test HR@10 0.0306 vs 0.0298, paired +0.0009, p = 0.012 (cold run, seed 0; seed 1: 0.0301,
            p = 0.61; README, "The ID encoder").
        batch_size: sequences per step.
        epochs: the most epochs run, and with ``"cosine"`` the schedule's length; ``patience``: stop
            after that many epochs without a better validation NDCG@10 (the best epoch's weights are kept).
        seed: shuffling, dropout and negatives.
        loss: ``"ce"``, ``"sampled"``, ``"gbce"``, ``"bpr"`` or ``"bce"`` (:func:`sequence_loss`);
            ``num_negatives``, ``gbce_t``: ``k`` and ``t`` of ``"gbce"`` (``k`` per position);
            ``sampled_negatives``: ``k`` of ``"sampled"`` (shared by the batch,
            :func:`sampled_softmax_ce`); ``label_smoothing``: ``eps`` of ``"ce"`` (:func:`full_softmax_ce`).
        contrastive, contrastive_temperature: ``lambda`` and ``t`` of DuoRec's unsupervised
            contrastive term (two dropout views of each sequence, :func:`info_nce`; see
            :func:`sequence_loss`); ``contrastive = 0`` turns it off.
        contrastive_positive: ``"dropout"`` (the second view is another dropout pass of the same
            sequence; DuoRec's unsupervised augmentation) or ``"same_target"`` (another training
            sequence with the same last target, :func:`same_target_partners`; DuoRec's supervised one).
        similarity, temperature: ``"dot"`` (the paper's score) or ``"cosine"`` (``cos / temperature``:
            states and output item embeddings L2-normalised; :class:`SASRec`).
        ema_decay: ``0`` (off) or the decay ``beta`` of an exponential moving average of the weights,
            updated after every optimizer step (``w_ema <- beta_n w_ema + (1 - beta_n) w``, ``beta_n``
            warmed up to ``beta`` by :func:`ema_decay_at`; ``torch.optim.swa_utils.AveragedModel``;
            Polyak & Juditsky 1992): validation, early stopping and the export then use the averaged
            weights.
        eval_batch_size: users per full-ranking evaluation batch (does not change results).
    """

    hidden: int = 128
    max_len: int = 50
    num_layers: int = 2
    num_heads: int = 1
    dropout: float = 0.5
    lr: float = 5e-3
    weight_decay: float = 0.3
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    batch_size: int = 256
    epochs: int = 24
    patience: int = 3
    seed: int = 0
    loss: str = "sampled"
    num_negatives: int = 256
    sampled_negatives: int = 2048
    gbce_t: float = 0.75
    label_smoothing: float = 0.0
    contrastive: float = 0.0
    contrastive_temperature: float = 1.0
    contrastive_positive: str = "dropout"
    similarity: str = "cosine"
    temperature: float = 0.1
    ema_decay: float = 0.995
    eval_batch_size: int = 1024


LR_SCHEDULES = ("constant", "cosine")


def _canonical(config: SASRecConfig) -> SASRecConfig:
    """``config`` with the fields that cannot change the model set to one value: ``temperature`` is
    unused by ``similarity="dot"`` and reads as 1.0 there, so ``--similarity dot`` alone finds the
    dot-product runs cached before the option existed (and resumes their checkpoints);
    ``sampled_negatives`` is unused by every loss but ``"sampled"`` and reads as 2048 there."""
    import dataclasses

    if config.similarity == "dot" and config.temperature != 1.0:
        config = dataclasses.replace(config, temperature=1.0)
    if config.loss != "sampled" and config.sampled_negatives != ADDED_FIELDS["sampled_negatives"]:
        config = dataclasses.replace(config, sampled_negatives=ADDED_FIELDS["sampled_negatives"])
    return config
CONTRASTIVE_POSITIVES = ("dropout", "same_target")


def learning_rate(config: SASRecConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step ``step`` (1-based, counted over all epochs).

    Linear warm-up over ``config.warmup_steps`` steps, then constant or a cosine decay that
    reaches 0 after ``config.epochs * steps_per_epoch`` steps. A pure function of the step, so
    a resumed run follows the same schedule.
    """
    lr = config.lr
    if config.warmup_steps > 0:
        lr *= min(1.0, step / config.warmup_steps)
    if config.lr_schedule == "cosine":
        total = max(config.epochs * steps_per_epoch - config.warmup_steps, 1)
        done = min(max(step - config.warmup_steps, 0), total)
        lr *= 0.5 * (1.0 + math.cos(math.pi * done / total))
    return lr


@dataclass
class SASRecRun:
    """What :func:`train_sasrec` returns: the frozen best model, its metrics and where it was written
    (``reused``: read back by :func:`load_run` instead of trained)."""

    out_dir: Path
    model: SASRec
    valid: EvalResult
    test: EvalResult
    metrics: dict
    config: dict = field(default_factory=dict)
    reused: bool = False  # read back from a finished run by :func:`cached_sasrec_run`, not trained now


CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"


def _seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    tensors, meta = {}, {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                meta[f"{idx}.{key}"] = value
    return tensors, meta


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, scalar_state: dict, param_groups: list) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in scalar_state.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": param_groups})


def _length_bucketed_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator,
                             bucket_batches: int = 50) -> list[torch.Tensor]:
    """Shuffle, then sort by length inside windows of ``bucket_batches`` batches, then shuffle the batches.

    Most Clothing histories are short (mean 7 items) and a few are long: a random batch is
    padded to its longest member, so without bucketing most of the work is padding. Each batch
    still holds random users, and the order of batches is random.

    Returns:
        a list of index tensors, ``ceil(len(lengths) / batch_size)`` of them.
    """
    order = torch.randperm(len(lengths), generator=gen)
    window = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def _sub(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_config(cfg: dict) -> SASRecConfig:
    """The :class:`SASRecConfig` of ``cfg`` (fields that differ from the defaults), checked before any
    data is read: :func:`train_sasrec` and ``rarec-lite train-sasrec`` call it first (gBCE's
    ``num_negatives``, which needs the catalogue size, is checked in :func:`train_sasrec`).

    Raises:
        ValueError: an unknown field or value (names the field and the allowed values).
    """
    unknown = set(cfg) - set(SASRecConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown SASRec config field(s): {sorted(unknown)}")
    config = SASRecConfig(**cfg)
    if config.similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity {config.similarity!r}: use one of {SIMILARITIES}")
    if not (math.isfinite(config.temperature) and config.temperature >= MIN_TEMPERATURE):  # also with "dot"
        raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE:g}; got {config.temperature}")
    config = _canonical(config)
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}: use one of {LOSSES}")
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}: use one of {LR_SCHEDULES}")
    for name in ("epochs", "patience", "batch_size", "hidden", "max_len", "num_layers", "num_heads",
                 "sampled_negatives"):
        if getattr(config, name) < 1:
            raise ValueError(f"SASRec {name} must be >= 1; got {getattr(config, name)} (0 epochs would export an "
                             "untrained model)" if name == "epochs" else f"SASRec {name} must be >= 1; got "
                             f"{getattr(config, name)}")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.contrastive < 0 or not config.contrastive_temperature > 0:
        raise ValueError(f"contrastive must be >= 0 and contrastive_temperature > 0; got {config.contrastive} "
                         f"and {config.contrastive_temperature}")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 = off); got {config.ema_decay}")
    if config.contrastive_positive not in CONTRASTIVE_POSITIVES:
        raise ValueError(f"unknown contrastive_positive {config.contrastive_positive!r}: use one of "
                         f"{CONTRASTIVE_POSITIVES}")
    return config


def train_sasrec(dataset, out_dir, device: str = "cpu", progress: bool = True, max_steps_per_epoch: int | None = None,
                 **cfg) -> SASRecRun:
    """Train SASRec on a leave-one-out split, with early stopping, resumable checkpoints and exports.

    Args:
        dataset: a :class:`rarec_lite.data.Dataset` (anything with ``num_items``, ``num_users``
            and ``split() -> LeaveOneOut``). Training sequences are ``split().train`` (``s[:-2]``).
        out_dir: run directory. Written there (all atomically):

            * ``checkpoint.safetensors`` every epoch: current weights (``model.*``), best weights
              (``best.*``), Adam state (``optim.*``); metadata: epoch, best epoch/NDCG@10,
              epochs without improvement, history, config. If it exists, training resumes
              from it: each epoch draws its shuffling, dropout and negatives from the seed
              ``(seed, epoch)``, so a resumed run ends in exactly the state of an uninterrupted one.
            * ``model.safetensors``: the best weights and the model config (read by :func:`load_sasrec`).
            * ``item_embeddings.safetensors``: ``embeddings`` ``(I, d)`` float32.
            * ``user_embeddings.safetensors``: ``embeddings`` ``(U, d)``, the encoding of each
              user's test history ``s[:-1]`` (the last ``max_len`` items).
            * ``ranks.safetensors``: per-user ``valid``/``test`` ranks and ``valid_tied``/``test_tied``
              tie counts (:class:`rarec_lite.metrics.EvalResult` ``ranks``/``tied``; metadata ``ties``).
            * ``metrics.json``: valid and test full-ranking metrics, epochs run, best epoch,
              train seconds (this process plus earlier resumed ones), config.
        device: ``"cpu"`` or ``"cuda"``.
        progress: show tqdm bars.
        max_steps_per_epoch: stop each epoch after that many batches (tests, quick demos).
        **cfg: fields of :class:`SASRecConfig` that differ from its defaults (the one place
            they are written; ``rarec-lite train-sasrec --help`` prints them).

    Data-parallel under a process group (:mod:`rarec_lite.distributed`, e.g. ``accelerate launch``):
    every rank draws the same batch, trains on its :func:`~rarec_lite.distributed.split_rows` share,
    and the gradients are averaged weighted by the shares (the gradient of the mean over sequences;
    one process averages over positions, so the two differ slightly, as do the dropout masks);
    every rank keeps the same weights, rank 0 writes every file, and the checkpoint resumes with any
    number of processes. The validation pass is not sharded (each rank runs it; it is cheap).

    Returns:
        :class:`SASRecRun` with the frozen best model and its valid/test :class:`EvalResult`.

    Raises:
        ValueError: an unknown config field or loss, or a checkpoint in ``out_dir`` written
            with a different config (names the file and the field).
    """
    from rarec_lite.progress import tqdm

    config = check_config(cfg)
    if config.loss == "gbce":
        gbce_beta(int(dataset.num_items), config.num_negatives, config.gbce_t)  # range checks
    conf = asdict(config)
    # fields that may change between a run and its resumption without changing the result so far
    resumable = {"patience", "eval_batch_size"} | ({"epochs"} if config.lr_schedule == "constant" else set())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = dataset.split()
    num_items, num_users = int(dataset.num_items), int(dataset.num_users)

    main = distributed.is_main()
    _seed_everything(config.seed)
    model = SASRec(num_items, config.hidden, config.max_len, config.num_layers, config.num_heads, config.dropout,
                   config.similarity, config.temperature).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    ema = None
    if config.ema_decay:
        from torch.optim.swa_utils import AveragedModel

        ema = AveragedModel(model, avg_fn=partial(ema_update, decay=config.ema_decay), use_buffers=True)
    inputs, targets = training_pairs(split.train, config.max_len)
    state = dict(epoch=0, best_epoch=0, best_ndcg10=-1.0, bad_epochs=0, history=[], train_seconds=0.0)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists():
        tensors, meta = load_checkpoint(ckpt_path)
        for key, value in meta.get("config", {}).items():
            if key not in resumable and conf.get(key) != value:
                raise ValueError(
                    f"{ckpt_path}: checkpoint was written with {key}={value!r}, this run has {key}={conf.get(key)!r}; "
                    "use another out_dir or delete the checkpoint"
                )
        model.load_state_dict(_sub(tensors, "model."))
        best_state = _sub(tensors, "best.")
        _load_optimizer(opt, tensors, meta["optim_scalars"], meta["optim_param_groups"])
        if ema is not None:
            ema.module.load_state_dict(_sub(tensors, "ema."))
            ema.n_averaged.fill_(int(meta["ema_n_averaged"]))
        state.update({k: meta[k] for k in state})
        if progress and main:
            print(f"resuming from {ckpt_path} after epoch {state['epoch']}")

    def valid_eval(m: SASRec) -> EvalResult:
        return evaluate_sasrec(m, split.valid_history, split.valid_target, config.eval_batch_size)[0]

    n = inputs.shape[0]
    lengths = (inputs != 0).sum(1)
    steps = math.ceil(n / config.batch_size)
    if max_steps_per_epoch is not None:
        steps = min(steps, max_steps_per_epoch)
    while state["epoch"] < config.epochs and state["bad_epochs"] < config.patience:
        epoch = state["epoch"] + 1
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout
        batches = _length_bucketed_batches(lengths, config.batch_size, gen)[:steps]
        supervised = config.contrastive > 0 and config.contrastive_positive == "same_target"
        partners = same_target_partners(targets[:, -1], gen) if supervised else None  # drawn after the batches
        model.train()
        bar = tqdm(range(steps), desc=f"SASRec epoch {epoch}", unit="batch", disable=not progress or not main,
                   leave=False)
        total = 0.0
        for step in bar:
            # data-parallel (rarec_lite.distributed): every rank draws the same batch and trains on its share;
            # the gradients are averaged, weighted by the shares, so every rank keeps the same weights
            lo, hi = distributed.split_rows(len(batches[step]))
            weight = (hi - lo) / len(batches[step])
            opt.zero_grad(set_to_none=True)
            loss_value = 0.0
            if hi > lo:
                idx = batches[step][lo:hi]
                x, y = inputs[idx], targets[idx]
                width = int((x != 0).sum(1).max())  # trim the batch to its longest history
                x, y = x[:, -width:].to(device), y[:, -width:].to(device)
                xp = None
                if partners is not None:
                    xp = inputs[partners[idx]]
                    xp = xp[:, -int((xp != 0).sum(1).max()):].to(device)
                loss = sequence_loss(model, x, y, config.loss, generator=gen if device == "cpu" else None,
                                     num_negatives=config.num_negatives, gbce_t=config.gbce_t,
                                     label_smoothing=config.label_smoothing, contrastive=config.contrastive,
                                     contrastive_temperature=config.contrastive_temperature, partner_inputs=xp,
                                     sampled_negatives=config.sampled_negatives)
                loss.backward()
                loss_value = loss.item()
            distributed.all_reduce_gradients(model.parameters(), weight)
            for group in opt.param_groups:
                group["lr"] = learning_rate(config, (epoch - 1) * steps + step + 1, steps)
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
            total += distributed.all_reduce_mean(loss_value, weight)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        bar.close()
        judged = model if ema is None else ema.module  # the weights validated, kept and exported
        valid = valid_eval(judged)
        ndcg = valid.metrics["NDCG@10"]
        improved = ndcg > state["best_ndcg10"]
        if improved:
            best_state = {k: v.detach().clone() for k, v in judged.state_dict().items()}
            state.update(best_epoch=epoch, best_ndcg10=ndcg, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        seconds = time.perf_counter() - t0
        state["epoch"] = epoch
        state["train_seconds"] += seconds
        state["history"].append(dict(epoch=epoch, loss=total / steps, valid_ndcg10=ndcg,
                                     valid_hr10=valid.metrics["HR@10"], seconds=round(seconds, 2)))
        if progress and main:
            print(f"epoch {epoch:3d}  loss {total / steps:.4f}  valid NDCG@10 {ndcg:.4f}  HR@10 "
                  f"{valid.metrics['HR@10']:.4f}  {seconds:.1f}s" + ("  *best*" if improved else ""))
        if main:  # every rank holds the same state: one writes it
            _write_checkpoint(ckpt_path, model, best_state, opt, state, conf, ema)
        distributed.barrier()

    # ---- export the best model
    model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    valid = valid_eval(model)
    test, users = evaluate_sasrec(model, split.test_history, split.test_target, config.eval_batch_size)  # users (U, d)
    if not main:  # rank 0 writes the exports; the others wait until they are complete
        distributed.barrier()
        return SASRecRun(out_dir, model, valid, test, _run_metrics(state, valid, test, conf, num_users, num_items), conf)
    save_checkpoint(out_dir / MODEL, {k: v for k, v in model.state_dict().items()},
                    {"model_config": model.config, "train_config": conf, "best_epoch": state["best_epoch"]})
    save_checkpoint(out_dir / "item_embeddings.safetensors", {"embeddings": model.item_embeddings().float()},
                    {"shape": [num_items, config.hidden], "source": "SASRec item embedding table (rows 1..I)"})
    save_checkpoint(out_dir / "user_embeddings.safetensors", {"embeddings": users.float()},
                    {"shape": [num_users, config.hidden], "source": "SASRec encode(test history s[:-1])"})
    save_checkpoint(out_dir / "ranks.safetensors",
                    {"valid": torch.from_numpy(valid.ranks), "test": torch.from_numpy(test.ranks),
                     "valid_tied": torch.from_numpy(valid.tied), "test_tied": torch.from_numpy(test.tied)},
                    {"protocol": "full-ranking", "ties": test.ties})
    metrics = _run_metrics(state, valid, test, conf, num_users, num_items)
    atomic_write_json(out_dir / "metrics.json", metrics)
    distributed.barrier()
    return SASRecRun(out_dir, model, valid, test, metrics, conf)


def evaluate_sasrec(model: SASRec, histories: Sequence[np.ndarray], targets, batch_size: int = 1024
                    ) -> tuple[EvalResult, torch.Tensor]:
    """Leave-one-out full-ranking metrics of a SASRec (history masked, expected ties; :func:`rarec_lite.metrics.evaluate`).

    Every history is encoded once (:meth:`SASRec.encode_histories`, sorted by length), then scored
    against :meth:`SASRec.item_embeddings` ``batch_size`` users at a time: the same scores as
    ``evaluate(model.score_histories, ...)`` up to float rounding, in less time (on Clothing's
    39,387 validation users, 5.1 s instead of 7.3 on two threads; bench/bench_sasrec.py).

    Args:
        model: switched to eval mode (no dropout).
        histories: ``U`` arrays of item ids, oldest first; targets: ``(U,)`` held-out item ids.
        batch_size: users per ``(batch, I)`` score matrix (memory only).

    Returns:
        ``(result, users)``: the :class:`EvalResult` and the ``(U, d)`` float32 user encodings.
    """
    model.eval()
    states = model.encode_histories(histories)  # (U, d)
    with torch.no_grad():
        items = model.item_embeddings().float().cpu()  # (I, d)
    result = evaluate(lambda batch, users: states[torch.from_numpy(users)] @ items.T, histories, targets,
                      model.num_items, DEFAULT_KS, batch_size)
    return result, states


def _run_metrics(state: dict, valid: EvalResult, test: EvalResult, conf: dict, num_users: int, num_items: int) -> dict:
    """``metrics.json`` of a finished :func:`train_sasrec` run."""
    return {
        "model": "SASRec",
        "valid": valid.to_dict(),
        "test": test.to_dict(),
        "epochs": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_seconds": round(state["train_seconds"], 2),
        "history": state["history"],
        "config": conf,
        "num_users": num_users,
        "num_items": num_items,
        "world_size": distributed.world().size,
    }


def ema_decay_at(decay: float, num_averaged) -> float:
    """The decay of the weights' moving average at its ``n``-th update after the first:
    ``min(decay, (1 + n) / (10 + n))``.

    The warm-up (TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps a short run's
    average close to its latest weights: 0.18 at the 2nd update, 0.64 at the 16th, and ``decay``
    (0.995) from the ~1,800th on (about 12 epochs of Clothing), so a 15-step toy run is not
    averaged back towards its initialisation. ``num_averaged``: updates so far (int or 0-d tensor).
    """
    n = float(num_averaged)
    return min(decay, (1.0 + n) / (10.0 + n))


def ema_update(average: torch.Tensor, current: torch.Tensor, num_averaged, decay: float) -> torch.Tensor:
    """One step of the weights' moving average: ``beta * average + (1 - beta) * current`` with
    ``beta =`` :func:`ema_decay_at` ``(decay, num_averaged)`` (the ``avg_fn`` of torch's
    ``AveragedModel``, which copies the weights at its first update)."""
    beta = ema_decay_at(decay, num_averaged)
    return average * beta + current * (1.0 - beta)


def _write_checkpoint(path: Path, model: SASRec, best_state: dict, opt, state: dict, conf: dict, ema=None) -> None:
    optim_tensors, optim_scalars = _optimizer_tensors(opt)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"best.{k}": v for k, v in best_state.items()})
    tensors.update(optim_tensors)
    meta = dict(state, config=conf, optim_scalars=optim_scalars,
                optim_param_groups=opt.state_dict()["param_groups"])
    if ema is not None:  # the moving average and its update count, for an exact resume
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
        meta["ema_n_averaged"] = int(ema.n_averaged)
    save_checkpoint(path, tensors, meta)


def load_sasrec(out_dir, device: str = "cpu") -> SASRec:
    """Rebuild the trained, **frozen** model from ``out_dir/model.safetensors``.

    Returns:
        :class:`SASRec` in eval mode with ``requires_grad=False`` on every parameter.

    Raises:
        FileNotFoundError: no ``model.safetensors`` in ``out_dir`` (train it first).
        ValueError: the file is unreadable or lacks the model config.
    """
    path = Path(out_dir) / MODEL
    tensors, meta = load_checkpoint(path, device=device)
    if "model_config" not in meta:
        raise ValueError(f"{path}: no 'model_config' in the metadata; not written by train_sasrec")
    model = SASRec(**meta["model_config"]).to(device)
    model.load_state_dict(tensors)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- cached runs


def data_signature(dataset) -> str:
    """A short hash of what SASRec trains and is evaluated on: ``I`` and every user's sequence.

    Returns:
        16 hex characters (SHA-256 of the item count and the sequences, in user order).
    """
    import hashlib

    h = hashlib.sha256(f"items={int(dataset.num_items)};users={len(dataset.sequences)};".encode())
    for seq in dataset.sequences:
        arr = np.ascontiguousarray(np.asarray(seq, dtype=np.int64))
        h.update(len(arr).to_bytes(4, "little"))
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


#: :class:`SASRecConfig` fields left out of a cached run's key: they can change when a run is
#: resumed without changing the result so far (``epochs`` too, unless ``lr_schedule="cosine"``).
UNKEYED_FIELDS = ("epochs", "patience", "eval_batch_size")

#: fields added after runs were cached, with the value every earlier run had: left out of the key
#: at that value (so those runs keep their directory), and read as that value from an older
#: ``metrics.json`` that lacks them.
ADDED_FIELDS = {"contrastive": 0.0, "contrastive_temperature": 1.0, "contrastive_positive": "dropout",
                "similarity": "dot", "temperature": 1.0, "sampled_negatives": 2048, "ema_decay": 0.0}


def sasrec_run_dir(dataset, root=None, **cfg) -> Path:
    """The run directory of a SASRec trained on ``dataset`` with ``cfg``: one per data + hyper-parameters.

    ``<root>/sasrec-<dataset name>-<data signature>-<config hash>``, root defaulting to
    ``$RAREC_HOME/runs``. The config hash covers every :class:`SASRecConfig` field (defaults
    filled in) except :data:`UNKEYED_FIELDS`, so the pipeline and the notebooks, asking for the
    same model on the same data, share one directory and one trained encoder.

    Raises:
        ValueError: a field that is not in :class:`SASRecConfig`.
    """
    import hashlib
    import json

    from . import paths

    unknown = set(cfg) - set(SASRecConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown SASRec config field(s): {sorted(unknown)}")
    keyed = asdict(_canonical(SASRecConfig(**cfg)))
    if keyed["lr_schedule"] == "constant":
        keyed.pop("epochs")
    for key in ("patience", "eval_batch_size"):
        keyed.pop(key)
    for key, old in ADDED_FIELDS.items():
        if keyed[key] == old:
            keyed.pop(key)
    tag = hashlib.sha1(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:10]
    name = getattr(dataset, "name", "data")
    base = Path(root) if root is not None else paths.runs_dir()
    return base / f"sasrec-{name}-{data_signature(dataset)}-{tag}"


def load_run(out_dir, device: str = "cpu") -> SASRecRun:
    """A finished :func:`train_sasrec` run read back from ``out_dir`` (no training, no evaluation).

    Returns:
        :class:`SASRecRun` whose ``valid``/``test`` carry the saved metrics and per-user ranks.

    Raises:
        FileNotFoundError: ``metrics.json``, ``model.safetensors`` or ``ranks.safetensors`` missing.
    """
    from .files import read_json

    out_dir = Path(out_dir)
    metrics = read_json(out_dir / "metrics.json")
    model = load_sasrec(out_dir, device=device)
    ranks, _ = load_checkpoint(out_dir / "ranks.safetensors")
    results = {}
    for part in ("valid", "test"):
        m = dict(metrics[part])
        protocol, num_users, ties = m.pop("protocol"), m.pop("num_users"), m.pop("ties", None)
        tied = ranks[f"{part}_tied"].numpy() if f"{part}_tied" in ranks else None  # None: an older, pessimistic run
        results[part] = EvalResult(m, ranks[part].numpy(), protocol, num_users, DEFAULT_KS, tied, ties)
    return SASRecRun(out_dir, model, results["valid"], results["test"], metrics, metrics.get("config", {}),
                     reused=True)


def cached_sasrec_run(dataset, root=None, device: str = "cpu", progress: bool = True,
                      max_steps_per_epoch: int | None = None, **cfg) -> SASRecRun:
    """Train SASRec once per data + hyper-parameters; later calls reuse the run.

    The directory is :func:`sasrec_run_dir`. A finished run whose ``metrics.json`` has exactly
    this config (all fields, defaults filled in) is read back with :func:`load_run`; otherwise
    :func:`train_sasrec` trains it, resuming from the directory's checkpoint (e.g. after an
    interruption, or with more ``epochs``/another ``patience``).

    Args:
        dataset, device, progress, max_steps_per_epoch: as for :func:`train_sasrec`.
        root: parent directory of the runs (default ``$RAREC_HOME/runs``).
        **cfg: :class:`SASRecConfig` fields that differ from the defaults.

    Returns:
        :class:`SASRecRun` (``out_dir`` is the cached run directory).

    Raises:
        ValueError: an unknown config field (and see :func:`train_sasrec`).
    """
    out = sasrec_run_dir(dataset, root, **cfg)
    want = asdict(_canonical(SASRecConfig(**cfg)))
    done = out / "metrics.json"
    if done.exists() and max_steps_per_epoch is None:
        from .files import read_json

        have = read_json(done).get("config", {})
        if all(have.get(k, ADDED_FIELDS.get(k)) == v for k, v in want.items() if k != "eval_batch_size"):
            run = load_run(out, device=device)
            if progress:
                print(f"SASRec: reusing {out} (best epoch {run.metrics.get('best_epoch', '?')} of "
                      f"{run.metrics.get('epochs', '?')})")
            return run
    return train_sasrec(dataset, out, device=device, progress=progress, max_steps_per_epoch=max_steps_per_epoch, **cfg)
