"""Data-parallel training across processes (``torchrun``), on ``torch.distributed``.

:func:`~pyro_prune.inference.fit` runs unchanged under ``torchrun --nproc_per_node=N``:
it finds the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), joins
the process group (``gloo`` on the CPU, ``nccl`` for a model on a CUDA device) and then

* shards every global batch of ``batch_size`` examples over the ranks;
* averages the gradients with one all-reduce per step (:class:`GradientSync`), weighting
  each rank by its share of the batch, so N processes with global batch B follow the same
  objective as one process with batch B;
* makes every end-of-epoch decision (evaluation, pruning, checkpoint) on rank 0 and
  broadcasts the resulting state (:func:`broadcast_state`), so the kept structures are
  identical on every rank;
* writes and reads checkpoints, logs and progress bars on rank 0 only;
* tears down, when the interpreter exits normally, the process group it initialised
  (:func:`destroy_own_group`), as torch recommends: left to the interpreter's finalisation,
  gloo's worker threads can abort the process (``SIGABRT``, "terminate called without an
  active exception") after the work is done (what was measured: ``docs/scale_out.md``).

Why no ``DistributedDataParallel`` wrapper: DDP synchronises the gradients of what runs
inside the wrapped module's ``forward``, but the fast ELBO draws the noise of the whole
network and its closed-form KL outside the backbone's forward
(:class:`~pyro_prune.inference.elbo.NoisePlan`). Reducing the flat gradient after
``backward`` is the same arithmetic as DDP (an average of the ranks' gradients), needs no
rebuild when structures are pruned (pruning only flips ``kept`` masks, the layer surgery
happens once, on the plain model, at conversion), and carries the step's loss and batch
size in the same message. It gives up DDP's overlap of communication with the backward
pass, which matters little for the small networks trained here (measured in
``benchmarks/distributed_speed.py``). A Lightning user gets DDP itself through
:mod:`pyro_prune.lightning`.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import enum
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DeviceChoice",
    "DistributedInfo",
    "GradientSync",
    "broadcast_module",
    "broadcast_object",
    "broadcast_state",
    "destroy_own_group",
    "distributed_info",
    "select_device",
    "single_process",
]

_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_single_depth = 0


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Inside the block, :func:`distributed_info` says "one process" whatever the launcher.

    For work one rank does alone after a data-parallel fit (rank 0 of ``pyro-prune fit``
    fine-tunes copies of the model for its accuracy curves): a ``fit`` called there trains
    in this process only instead of waiting for the other ranks.
    """
    global _single_depth
    _single_depth += 1
    try:
        yield
    finally:
        _single_depth -= 1


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands in a data-parallel run (``world_size`` 1: alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates, decides and writes files."""
        return self.rank == 0


def distributed_info(device: torch.device | None = None, *, init: bool = True) -> DistributedInfo:
    """The process group this process belongs to, joining the launcher's one if needed.

    An initialised default process group is used as it is. Otherwise, when ``torchrun`` (or
    any launcher setting ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``)
    started more than one process and ``init`` is true, the group is initialised here:
    ``nccl`` when ``device`` is a CUDA device, ``gloo`` otherwise. Without a launcher, and
    inside :func:`single_process`, the result is a single process (``world_size`` 1).
    """
    if _single_depth:
        return DistributedInfo()
    if dist.is_available() and dist.is_initialized():
        return DistributedInfo(dist.get_rank(), dist.get_world_size(),
                               int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                               str(dist.get_backend()))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or not init:
        return DistributedInfo()
    missing = [v for v in _LAUNCH_VARS if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but the launcher did not set {', '.join(missing)}; "
                           f"start the processes with torchrun")
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed")
    backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device if device.index is not None else
                              int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    atexit.register(destroy_own_group)
    return DistributedInfo(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())), backend)


def destroy_own_group() -> None:
    """Destroy the default process group :func:`distributed_info` initialised, at a normal
    exit (registered with ``atexit`` when it initialises one).

    A no-op when the group is gone already (the script destroyed it) and after an uncaught
    exception, when other ranks may still be inside a collective that a teardown could hang.
    """
    if getattr(sys, "last_value", None) is not None or getattr(sys, "last_exc", None) is not None:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class DeviceChoice(enum.Enum):
    """Where training runs (``pyro-prune fit --device``)."""

    AUTO = "auto"  #: CUDA when available, else the CPU
    CPU = "cpu"
    CUDA = "cuda"


def select_device(choice: DeviceChoice | str, *, cuda_available: bool, cuda_count: int = 1,
                  world_size: int = 1, local_rank: int = 0) -> tuple[torch.device, str | None]:
    """The device of this process and the backend of its process group (a pure function).

    ``auto`` is CUDA when ``cuda_available``, else the CPU. On CUDA each process uses
    ``cuda:<local_rank>`` (the ``LOCAL_RANK`` torchrun sets: one GPU per process on a node)
    and, with more than one process, the ``nccl`` backend; on the CPU ``gloo``. The backend
    is ``None`` for a single process. A ``ValueError`` names what is missing: ``cuda``
    without CUDA, or more processes on a node than GPUs.
    """
    from pyro_prune._enums import parse_enum

    choice = parse_enum(DeviceChoice, choice.value if isinstance(choice, DeviceChoice) else choice,
                        "device")
    if choice is DeviceChoice.CUDA and not cuda_available:
        raise ValueError("device 'cuda' asked for, but this torch build sees no CUDA device "
                         "(use --device cpu or auto)")
    use_cuda = choice is DeviceChoice.CUDA or (choice is DeviceChoice.AUTO and cuda_available)
    multi = world_size > 1
    if not use_cuda:
        return torch.device("cpu"), ("gloo" if multi else None)
    if local_rank >= cuda_count:
        raise ValueError(f"process with LOCAL_RANK={local_rank} has no GPU of its own ({cuda_count} "
                         f"CUDA device(s)): start at most {cuda_count} processes per node")
    return torch.device("cuda", local_rank), ("nccl" if multi else None)


def _comm_device(info: DistributedInfo, device: torch.device) -> torch.device:
    return device if info.backend == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any, info: DistributedInfo, device: torch.device | None = None) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small state: rows, state dicts)."""
    if not info.active:
        return obj
    box = [obj if info.is_main else None]
    comm = _comm_device(info, device or torch.device("cpu"))
    dist.broadcast_object_list(box, src=0, device=comm if comm.type == "cuda" else None)
    return box[0]


@torch.no_grad()
def broadcast_module(module: nn.Module, info: DistributedInfo) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``module`` (in place)."""
    if not info.active:
        return
    tensors = [t for t in (*module.parameters(), *module.buffers())]
    for t in tensors:
        if t.dtype == torch.bool:  # gloo broadcasts no bools: through uint8
            u = t.to(torch.uint8)
            dist.broadcast(u, src=0)
            t.copy_(u.bool())
        else:
            dist.broadcast(t.data, src=0)


def broadcast_state(info: DistributedInfo, module: nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                    schedule: Any = None, extra: Any = None) -> Any:
    """Rank 0's module tensors, optimizer and schedule state on every rank; returns ``extra``.

    Called after rank 0 alone has evaluated, pruned (a schedule may flip ``kept`` masks,
    zero weights or reset optimizer moments) and logged: every rank then continues from
    rank 0's state.
    """
    if not info.active:
        return extra
    broadcast_module(module, info)
    payload = {
        "optimizer": optimizer.state_dict() if optimizer is not None and info.is_main else None,
        "schedule": schedule.state_dict() if schedule is not None and info.is_main else None,
        "extra": extra,
    }
    payload = broadcast_object(payload, info, _first_device(module))
    if not info.is_main:
        if optimizer is not None and payload["optimizer"] is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if schedule is not None and payload["schedule"] is not None:
            schedule.load_state_dict(payload["schedule"])
    return payload["extra"]


def _first_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class GradientSync:
    """Average the ranks' gradients in one all-reduce per step, weighted by batch share.

    Each rank's loss estimates the full-data negative ELBO from its own examples,
    ``(N / b_r) sum nll + KL``. The ranks' gradients are combined as
    ``sum_r b_r g_r / sum_r b_r``, the gradient of ``(N / B) sum_{all B} nll + KL``: one
    process with the global batch ``B = sum_r b_r``. A rank whose shard of a batch is empty
    (``b_r = 0``) still takes part, with zero weight. The same message carries the step's
    summed loss and counts of correct and counted predictions, so every rank logs global figures.

    :meth:`reduce` returns ``(B, loss, correct, counted)`` (the loss averaged with the same weights) and leaves the averaged gradient in
    every parameter's ``.grad`` (``None`` where no rank produced one). ``comm_seconds``
    accumulates the wall time spent in the collective (for the benchmark).
    """

    def __init__(self, params: list[Tensor], info: DistributedInfo) -> None:
        self.params = params
        self.info = info
        self.sizes = [p.numel() for p in params]
        self.comm_seconds = 0.0
        self.steps = 0

    def reduce(self, batch: int, loss: float, correct: float, counted: float
               ) -> tuple[int, float, float, float]:
        """Reduce this rank's gradients, its batch size, loss, and its counts of correct and
        of counted predictions (examples; with token labels the tokens not ignored)."""
        if not self.info.active:
            return batch, loss, correct, counted
        first = self.params[0]
        parts = []
        for p, n in zip(self.params, self.sizes):
            g = p.grad
            parts.append(torch.zeros(n, dtype=first.dtype, device=first.device) if g is None
                         else g.reshape(-1).to(first.dtype) * batch)
        flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in self.params],
                             dtype=first.dtype, device=first.device)
        tail = torch.tensor([float(batch), float(loss) * batch, float(correct), float(counted)],
                            dtype=torch.float64 if first.device.type == "cpu" else first.dtype,
                            device=first.device).to(first.dtype)
        flat = torch.cat([*parts, flags, tail])
        t0 = time.perf_counter()
        dist.all_reduce(flat)
        if flat.device.type == "cuda":
            torch.cuda.synchronize(flat.device)
        self.comm_seconds += time.perf_counter() - t0
        self.steps += 1
        grads, flags, tail = flat.split([sum(self.sizes), len(self.params), 4])
        total = float(tail[0])
        if total > 0:
            offset = 0
            for p, n, flag in zip(self.params, self.sizes, flags.tolist()):
                if flag > 0:
                    g = grads[offset: offset + n].view_as(p).div_(total)
                    p.grad = g.to(p.dtype) if p.grad is None else p.grad.copy_(g)
                else:
                    p.grad = None
                offset += n
        return int(round(total)), float(tail[1]) / max(total, 1.0), float(tail[2]), float(tail[3])
