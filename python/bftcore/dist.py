"""Ranks under torchrun: one place that knows the process group.

`init()` starts the group when torchrun started this process (WORLD_SIZE > 1): nccl with one GPU
per process when there are GPUs, gloo otherwise. Everything else asks `rank_world()`, which is
(0, 1) outside torchrun, and calls `barrier()`, which is a no-op there.
"""

from __future__ import annotations

import os
import sys


def init() -> tuple[int, int]:
    """(rank, world size), starting the process group under torchrun; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():  # one GPU per process: "cuda" then means this rank's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def initialized() -> bool:
    if "torch" not in sys.modules:  # no process group without torch: do not load it just to ask
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of a started process group; (0, 1) without one."""
    if not initialized():
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    if initialized():
        import torch.distributed as dist

        dist.barrier()


def local_device(device: str) -> str:
    """Under torchrun with GPUs, "cuda" is this rank's own GPU."""
    if device.startswith("cuda") and rank_world()[1] > 1:
        import torch

        return f"cuda:{torch.cuda.current_device()}"
    return device
