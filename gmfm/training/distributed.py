"""Process-group plumbing for torchrun: NCCL on GPU, gloo on CPU, a no-op for one process."""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world_size`` (1 without torchrun) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` over the processes (``values`` itself for one process)."""
        if self.active:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_gather_object(self, obj: object) -> list:
        """Every process's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: object) -> object:
        """Rank 0's ``obj`` on every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(device: str) -> torch.device:
    """A checked device: "auto" is CUDA when available, else the CPU; "cuda" must exist here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name (e.g. 'cpu', 'cuda', 'cuda:1')") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but CUDA is not available on this machine (use 'cpu')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return dev


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(device: str, timeout_minutes: float = 30.0) -> Distributed:
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` > 1), else one process.

    ``device`` "auto" is CUDA when available; "cuda" becomes ``cuda:LOCAL_RANK`` under torchrun (one GPU per
    process, backend NCCL); the CPU uses gloo.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return Distributed(0, 1, dev)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Distributed(dist.get_rank(), dist.get_world_size(), dev)


def teardown_distributed() -> None:
    """Leave the process group (call it in a ``finally``).

    On the way out of a run that went well, the processes first wait for each other: gloo aborts a process
    ("terminate called without an active exception", exit -6) whose peer destroys its group while their
    connection is still being closed, which a loaded machine made happen in about one run in three. While an
    exception propagates there is no wait (the other processes may never arrive; torchrun stops them).
    """
    if not dist.is_initialized():
        return
    if sys.exc_info()[0] is None:
        dist.barrier()
    dist.destroy_process_group()
