"""Exact resume: a checkpoint (trainable weights, optimizer state, step, log) in the work
directory beside the output, refused when it was written for other settings or data; and the
lock that keeps two runs from training into one output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bftcore.errors import BadInput
from bftcore.files import atomic_file

if TYPE_CHECKING:
    import torch

    from bftcore.complete.loop import Trainer


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _gathered_state(trainer: Trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """FSDP2: the trainable weights and the optimizer state as full tensors on rank 0's CPU
    (a collective: every rank calls it; the other ranks get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, opt_state = get_state_dict(trainer.model, trainer.opt,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {n: v for n, v in model_state.items() if n in trainable}, dict(opt_state)


def save_checkpoint(path: Path, trainer: Trainer, step: int, log: list[dict[str, Any]], key: str,
                    rank: int = 0) -> None:
    """Rank 0 writes (temp file and rename); under FSDP2 every rank takes part in gathering."""
    import torch

    if trainer.cfg.fsdp:
        model_state, opt_state = _gathered_state(trainer)
    elif rank == 0:
        model_state, opt_state = _trainable_state(trainer.model), trainer.opt.state_dict()
    if rank != 0:
        return
    with atomic_file(path, durable=True) as tmp:
        torch.save({"step": step, "key": key, "model": model_state, "optimizer": opt_state, "log": log}, tmp)


def load_checkpoint(path: Path, trainer: Trainer, key: str) -> tuple[int, list[dict[str, Any]]]:
    """(step, log) of a matching checkpoint, loaded into the trainer; (0, []) when there is none.
    A checkpoint of other settings or data is refused rather than silently mixed."""
    import torch

    if not path.is_file():
        return 0, []
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged checkpoint is bad input, not a crash
        raise BadInput(f"{path}: unreadable checkpoint ({e.__class__.__name__}); delete it to start over") from e
    if ck.get("key") != key:
        raise BadInput(f"{path}: a checkpoint of other settings or data; use a new --out or delete it")
    if trainer.cfg.fsdp:  # full tensors in the file; each rank keeps its own shard of them
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(trainer.model, trainer.opt, model_state_dict=ck["model"], optim_state_dict=ck["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
        return int(ck["step"]), list(ck["log"])
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for n, v in ck["model"].items():
            params[n].copy_(v.to(params[n].device))
    trainer.opt.load_state_dict(ck["optimizer"])
    return int(ck["step"]), list(ck["log"])



@contextlib.contextmanager
def exclusive(work: Path, rank: int) -> Iterator[None]:
    """One run per output directory: a second one would write over the first's checkpoints."""
    if rank != 0:
        yield
        return
    from filelock import FileLock, Timeout

    work.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise BadInput(f"another run is training into {work.parent / work.name[1:-5]}") from e
    try:
        yield
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)
