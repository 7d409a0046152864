"""Data-parallel training under ``torchrun`` or ``accelerate launch`` with no code change.

Both launchers set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; when ``WORLD_SIZE > 1`` the
process group is started (NCCL on CUDA, Gloo on CPU) and the model is wrapped in
``DistributedDataParallel``. A single process runs exactly as without a launcher.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Start the process group if a launcher asked for one; returns this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        import torch.distributed as dist

        value = value.clone()
        dist.all_reduce(value)
        value /= info.world_size
    return value


def any_rank(flag: bool, info: DistInfo, device: torch.device | None = None) -> bool:
    """``True`` on every rank if ``flag`` is set on any (a signal may reach ranks at different steps)."""
    if not info.enabled:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device or _collective_device(info))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _collective_device(info: DistInfo) -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", info.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
