"""Ranks under torchrun: one place that knows the process group.

`init()` starts the group when torchrun started this process (WORLD_SIZE > 1): nccl with one GPU
per process when there are GPUs, gloo otherwise. Everything else asks `rank_world()`, which is
(0, 1) outside torchrun, and calls `barrier()`, which is a no-op there. `RankSplitGenerator`
splits a generator's work over the ranks (`bftcore attack` under torchrun).
"""

from __future__ import annotations

import os
import sys
from typing import Any


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


def gather_in_order(mine: list[Any], rank: int, world: int, total: int) -> list[Any]:
    """The items of every rank, each rank having computed items rank, rank + world, ...: the whole
    list, in order, on every rank."""
    import torch.distributed as dist

    parts: list[list[Any]] = [[] for _ in range(world)]
    dist.all_gather_object(parts, mine)
    out: list[Any] = [None] * total
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


class RankSplitGenerator:
    """A generator whose work is split over the ranks: each call's inputs go round-robin to the
    ranks, each rank decodes its share, and every rank gets every output back in order. The attack
    code above it runs unchanged on each rank, with the same inputs and seeds per input, so the rows
    are those of one process. Anything else (the tokenizer, the model) is the wrapped generator's."""

    def __init__(self, gen: object) -> None:
        self.gen = gen
        self.rank, self.world = rank_world()

    def __getattr__(self, name: str) -> object:
        return getattr(self.gen, name)

    def generate(self, inputs, decoding, seeds=None, on_batch=None):  # type: ignore[no-untyped-def]
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]
        share = list(inputs)[self.rank::self.world]
        mine = self.gen.generate(share, decoding, seeds=seeds[self.rank::self.world],  # type: ignore[attr-defined]
                                 on_batch=on_batch) if share else []
        return gather_in_order(mine, self.rank, self.world, len(inputs))

    def next_logprobs(self, inputs):  # type: ignore[no-untyped-def]
        import numpy as np

        share = list(inputs)[self.rank::self.world]
        mine = list(self.gen.next_logprobs(share)) if share else []  # type: ignore[attr-defined]
        rows = gather_in_order(mine, self.rank, self.world, len(inputs))
        return np.stack(rows) if rows else self.gen.next_logprobs([])  # type: ignore[attr-defined]
