"""Data parallelism on ``torch.distributed``: the helpers every multi-process stage uses.

A single process is the default and needs none of this: every function below is the identity
(or a no-op) when no process group is running, so the course and the notebooks never see it.

Under a launcher that starts one process per GPU (or several CPU processes) and describes them
in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``:
``accelerate launch --multi_gpu``, ``torchrun``), :func:`init` joins the group (NCCL on GPUs, gloo
on CPUs) and the pipeline runs data-parallel:

* **encoding** (:meth:`rarec_lite.alignment.TwoTower.encode_batched`: the item catalogue, the
  evaluation users, caches, fresh negatives): the list is cut into the *same* batches a single
  process would form; batch ``b`` goes to rank ``b % world_size`` (:func:`assigned_batches`);
  :func:`gather_batches` puts every row back at its own index on every rank. Each batch is
  computed exactly as in one process, so the gathered states are bit-identical to a
  single-process run's on the same hardware with the same threads per process (a BLAS splits a
  matmul's sum by thread); no user or item is dropped or duplicated at a shard edge (the tests
  compare them);
* **training** (the alignment module, SASRec): every rank draws the same global batch, encodes
  its contiguous share (:func:`split_rows`), and the gradients are averaged over the ranks
  (:func:`all_reduce_gradients`, what DDP's reducer does, without bucketing: the trained modules
  are small). The alignment loss gathers the pooled states with autograd
  (:func:`gather_rows` ``grad=True``), so every rank computes the loss of the whole batch;
* **files**: only rank 0 writes (:func:`is_main`), atomically, then :func:`barrier`. Checkpoints
  hold no per-rank state, so a run resumes with any number of processes.

Each rank keeps its own copy of the frozen LLM (a 4-bit copy on each GPU); nothing of the LLM
is sharded. :data:`ENCODED` counts the texts this rank encoded, per tower, for the report.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Sequence

import torch

__all__ = ["World", "init", "world", "is_main", "barrier", "assigned_batches", "gather_batches", "split_rows",
           "gather_rows", "all_reduce_gradients", "all_reduce_mean", "gather_objects", "main_first", "ENCODED", "shutdown"]

ENCODED: Counter = Counter()
"""Texts this process encoded without gradient, per tower (``"user"``, ``"item"``): what
``metrics.json`` reports per rank (:meth:`rarec_lite.alignment.TwoTower.encode_batched` adds to it)."""


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` in ``0..size-1``, ``size`` processes, the ``backend``
    (``None`` for a single process)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init(timeout_minutes: float = 60.0) -> World:
    """Join the process group the launcher described in the environment, once; return :func:`world`.

    Does nothing when ``WORLD_SIZE`` is unset or 1 (a single process) or a group is already
    running (e.g. one that ``accelerate.Accelerator`` started). Backend: NCCL when CUDA is
    available (and ``LOCAL_RANK``'s GPU becomes this process's default device, so ``"cuda"``
    means it), gloo otherwise.

    Raises:
        RuntimeError: ``WORLD_SIZE > 1`` but ``torch.distributed`` is not available in this
            torch build, or the rendezvous fails (``MASTER_ADDR``/``MASTER_PORT`` unreachable).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or _active():
        return world()
    if not torch.distributed.is_available():
        raise RuntimeError(f"WORLD_SIZE={size} but this torch build has no torch.distributed")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo",
                                         timeout=timedelta(minutes=timeout_minutes))
    return world()


def world() -> World:
    """This process's :class:`World` (``World(0, 1, None)`` without a process group)."""
    if not _active():
        return World()
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.distributed.get_backend())


def is_main() -> bool:
    """True on rank 0, and in a single process: the one that writes files and logs."""
    return world().rank == 0


def barrier() -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if _active() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first, the other ranks after it has finished: for a block that fills a
    cache on disk (data preparation, a converted or generated model) that the others then read.
    When the block raises on rank 0, the others are released all the same (and run it themselves:
    an expected error, e.g. missing data, then happens on every rank alike)."""
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


def shutdown() -> None:
    """Leave the process group (after the last collective call); no-op without one."""
    if _active():
        torch.distributed.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors must live: this rank's GPU for NCCL, the CPU for gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------- sharded encoding
def assigned_batches(num_batches: int, w: World | None = None) -> range:
    """Indices of the batches this rank computes: ``rank, rank + size, ...`` (round robin, so that
    batches sorted by length spread their cost evenly). All ranks together cover ``0..num_batches-1``
    exactly once; a rank may get none."""
    w = w or world()
    return range(w.rank, num_batches, w.size)


def gather_batches(local: torch.Tensor, batches: Sequence[Sequence[int]], n: int, w: World | None = None) -> torch.Tensor:
    """Put the rows of every rank's batches back at their own index, on every rank.

    Args:
        local: ``(m, *S)``: the rows of this rank's batches (:func:`assigned_batches`), batch after
            batch, each batch's rows in its own order; ``m`` = their total size (may be 0).
        batches: the whole plan, identical on every rank: batch ``b`` holds row indices ``batches[b]``.
        n: number of rows; the batches must cover ``0..n-1`` exactly once.
        w: the world to gather over (default :func:`world`; ``World()``: this process alone).

    Returns:
        ``(n, *S)`` with row ``i`` = the state computed for index ``i`` (``local`` itself in a single process,
        reordered). Same dtype as ``local``, on ``local``'s device.

    Raises:
        ValueError: the plan does not cover ``0..n-1`` exactly once, or ``local`` has the wrong number of rows.
    """
    w = w or world()
    flat = [i for b in batches for i in b]
    if len(flat) != n or len(set(flat)) != n or (n and (min(flat) < 0 or max(flat) >= n)):
        raise ValueError(f"gather_batches: the batches hold {len(flat)} rows ({len(set(flat))} distinct) "
                         f"for n={n}; each index 0..{n - 1} must appear exactly once")
    rows = [[i for b in assigned_batches(len(batches), World(r, w.size)) for i in batches[b]] for r in range(w.size)]
    if local.shape[0] != len(rows[w.rank]):
        raise ValueError(f"gather_batches: rank {w.rank} holds {local.shape[0]} rows, its batches have "
                         f"{len(rows[w.rank])}")
    parts = _gather_padded(local, [len(r) for r in rows]) if w.size > 1 else [local]
    out = local.new_empty((n, *local.shape[1:]))
    for r, part in zip(rows, parts):
        if r:
            out[torch.as_tensor(r, device=out.device)] = part.to(out.device)
    return out


def _gather_padded(local: torch.Tensor, counts: Sequence[int]) -> list[torch.Tensor]:
    """Every rank's ``(counts[r], *S)`` tensor, via one all_gather of tensors padded to ``max(counts)`` rows.
    Half precision travels as float32 (gloo gathers no 16-bit type; the round trip is exact)."""
    longest = max(counts)
    send = local.detach().to(_comm_device())
    if send.dtype in (torch.float16, torch.bfloat16):
        send = send.float()
    if send.shape[0] < longest:
        send = torch.cat([send, send.new_zeros((longest - send.shape[0], *send.shape[1:]))])
    recv = [torch.empty_like(send) for _ in counts]
    torch.distributed.all_gather(recv, send.contiguous())
    return [x[:c].to(local.device, local.dtype) for x, c in zip(recv, counts)]


# --------------------------------------------------------------------- data-parallel training
def split_rows(n: int, w: World | None = None) -> tuple[int, int]:
    """This rank's contiguous share ``[lo, hi)`` of ``n`` rows (sizes differ by at most 1, rank 0 first;
    a rank gets ``lo == hi`` when ``n < size``). ``(0, n)`` in a single process."""
    w = w or world()
    base, extra = divmod(n, w.size)
    lo = w.rank * base + min(w.rank, extra)
    return lo, lo + base + (1 if w.rank < extra else 0)


def gather_rows(local: torch.Tensor, n: int, grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's :func:`split_rows` share of ``n`` rows, in rank order, on every rank.

    Args:
        local: ``(hi - lo, *S)`` this rank's rows.
        n: the total number of rows.
        grad: keep the autograd graph: the backward pass sends each rank the gradient of its own
            rows, summed over the ranks (an all-reduce of the gathered tensor's gradient). When every rank
            computes the same loss of the gathered rows, that sum is ``size`` times the gradient of the
            loss, which :func:`all_reduce_gradients` (a mean over ranks) divides out again.

    Returns:
        ``(n, *S)``; ``local`` itself in a single process.

    Raises:
        ValueError: ``local`` does not have this rank's share of ``n`` rows.
    """
    w = world()
    lo, hi = split_rows(n, w)
    if local.shape[0] != hi - lo:
        raise ValueError(f"gather_rows: rank {w.rank} holds {local.shape[0]} rows, its share of {n} is {hi - lo}")
    if w.size == 1:
        return local
    counts = [b - a for a, b in (split_rows(n, World(r, w.size)) for r in range(w.size))]
    if not grad:
        return torch.cat(_gather_padded(local, counts))
    return _GatherRows.apply(local, counts, w.rank)


class _GatherRows(torch.autograd.Function):
    """All-gather of row shares with a backward pass: the gradient of the gathered ``(n, *S)`` tensor is
    summed over the ranks (all-reduce) and each rank keeps the rows of its own share."""

    @staticmethod
    def forward(ctx, local, counts, rank):
        ctx.lo, ctx.rows = sum(counts[:rank]), local.shape[0]
        return torch.cat(_gather_padded(local, counts))

    @staticmethod
    def backward(ctx, grad):
        total = grad.detach().to(_comm_device(), copy=True).contiguous()
        torch.distributed.all_reduce(total)
        return total[ctx.lo:ctx.lo + ctx.rows].to(grad.device), None, None


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], weight: float | None = None) -> None:
    """Replace each parameter's gradient by the weighted sum over ranks, in place.

    ``weight=None`` averages (``1 / size``: every rank computed the same loss, or equal shares);
    with SASRec's unequal shares, ``weight = rows on this rank / rows in the batch`` gives the
    gradient of the batch mean. A parameter without gradient counts as zero (and then gets one).
    No-op in a single process.
    """
    w = world()
    if w.size == 1:
        return
    scale = 1.0 / w.size if weight is None else float(weight)
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        g = p.grad.to(_comm_device()) * scale
        torch.distributed.all_reduce(g)
        p.grad.copy_(g.to(p.grad.device))


def all_reduce_mean(value: float, weight: float | None = None) -> float:
    """The mean of a float over ranks (or the ``weight``-weighted sum, as :func:`all_reduce_gradients`):
    e.g. the batch loss to log. ``value`` itself in a single process."""
    w = world()
    if w.size == 1:
        return float(value)
    t = torch.tensor([float(value) * (1.0 / w.size if weight is None else float(weight))], dtype=torch.float64,
                     device=_comm_device())
    torch.distributed.all_reduce(t)
    return float(t.item())


def gather_objects(obj) -> list:
    """Every rank's picklable ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    w = world()
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    torch.distributed.all_gather_object(out, obj)
    return out
