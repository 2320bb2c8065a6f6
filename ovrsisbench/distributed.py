"""Process-group helpers for running under ``torchrun`` (one process per device).

``context()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, plus the
``MASTER_ADDR``/``MASTER_PORT`` rendezvous it sets) and initialises ``torch.distributed`` once:
NCCL when the processes compute on CUDA, gloo on CPU. Outside torchrun it returns a
single-process ``Context`` whose collectives do nothing, so callers need no special case.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ovrsisbench.errors import UserError

_ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that prints and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (no-op with one process)."""
        if self.world_size == 1:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.device.index or 0])
        else:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes, in place, and return it (no-op with one process).

        Integer tensors are summed exactly (int64 stays int64). Under NCCL a CPU tensor is
        reduced through a copy on this process's device and written back.
        """
        if self.world_size == 1:
            return tensor
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            staged = tensor.to(self.device)
            dist.all_reduce(staged, op=dist.ReduceOp.SUM)
            tensor.copy_(staged.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's picklable ``obj``, in rank order (``[obj]`` with one process).

        Not part of the issue's shared interface: an addition used to agree on errors.
        """
        if self.world_size == 1:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def shard(self, count: int) -> range:
        """This process's indices of ``0..count-1``: every ``world_size``-th from ``rank``.

        The shards of all processes partition the indices: no padding, no duplicates, for any
        ``count`` (a process may get none when ``count < world_size``).
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return range(self.rank, count, self.world_size)


def launched() -> bool:
    """True when torchrun (or another launcher setting its variables) started this process."""
    return all(name in os.environ for name in _ENVIRONMENT)


def _device(requested: str | None, local_rank: int, distributed: bool) -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under a launcher when CUDA is asked for
    (or, with no request, available), an explicit ``cuda:N`` only outside one, else the CPU."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "cuda" and not requested.startswith("cuda:"):
        raise UserError(f"unknown device '{requested}' (use cpu or cuda)")
    if not torch.cuda.is_available():
        raise UserError(f"device '{requested}' requested but CUDA is not available on this machine")
    if not distributed:
        return torch.device(requested)
    if requested != "cuda":
        raise UserError(
            f"device '{requested}': under torchrun each process uses cuda:LOCAL_RANK; give cuda"
        )
    if local_rank >= torch.cuda.device_count():
        raise UserError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return torch.device("cuda", local_rank)


def requested_device(device: str | None) -> torch.device:
    """The device ``device`` names for a single process (None: CUDA when available, else the
    CPU), checked: an unknown name or CUDA on a machine without it is a UserError."""
    return _device(device, 0, distributed=False)


def context(device: str | None = None) -> Context:
    """This process's ``Context``; under torchrun, initialises ``torch.distributed`` once.

    ``device`` is ``cpu``, ``cuda`` (``cuda:N`` outside torchrun) or None (CUDA when available).
    The backend follows the device: NCCL for CUDA, gloo for the CPU. Calling it again returns
    the same ranks without initialising anew.
    """
    if not launched():
        return Context(device=_device(device, 0, distributed=False))
    try:
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ["LOCAL_RANK"])
    except ValueError as error:
        raise UserError(f"bad RANK/WORLD_SIZE/LOCAL_RANK in the environment: {error}") from error
    if not 0 <= rank < world_size or local_rank < 0:
        raise UserError(f"bad ranks in the environment: RANK={rank} WORLD_SIZE={world_size}")
    torch_device = _device(device, local_rank, distributed=True)
    if not dist.is_available():
        raise UserError("this PyTorch build has no torch.distributed; run without torchrun")
    if not dist.is_initialized():
        if torch_device.type == "cuda":
            torch.cuda.set_device(torch_device)
            dist.init_process_group(backend="nccl", device_id=torch_device)
        else:
            dist.init_process_group(backend="gloo")
    return Context(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        device=torch_device,
    )


def cleanup() -> None:
    """Destroy the process group if one was initialised (safe to call in any case)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | None = None) -> Iterator[Context]:
    """``context(device)`` for the block; a process group it initialised is destroyed at the
    end, one that existed before (a caller's, say training's) is left to its owner."""
    existed = dist.is_available() and dist.is_initialized()
    try:
        yield context(device)
    finally:
        if not existed:
            cleanup()
