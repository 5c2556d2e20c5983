"""The completion loop: one short explicit loop over the shared pieces of `bftcore.train`.

A step's batch is a pure function of (seed, step), so a checkpoint (weights, optimizer, step)
resumes exactly. Under torchrun each rank takes a slice of the global batch; every loss term is
normalised by its count over the global batch, so ranks and micro-batches add up to the curve of
one process.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bftcore import dist
from bftcore.complete.base_stats import ShardBaseStats
from bftcore.complete.batching import Batch, collate
from bftcore.complete.checkpoints import load_checkpoint, save_checkpoint
from bftcore.complete.config import CompleteConfig
from bftcore.complete.data import CompletionData
from bftcore.complete.methods import REGISTRY, LossContext, make_examples, reads_attention, term_counts
from bftcore.complete.profile import RetentionProfile
from bftcore.files import atomic_write
from bftcore.progress import Progress

if TYPE_CHECKING:
    import torch


class Trainer:
    """The trainee, the frozen references and the optimizer; `micro_loss` runs the method."""

    def __init__(self, model: Any, reference: Any, base: Any, cfg: CompleteConfig,
                 profile: RetentionProfile, pad_id: int, *, ddp: Any = None,
                 base_stats: ShardBaseStats | None = None, openers: tuple[int, ...] = ()) -> None:
        from bftcore.precision import torch_dtype
        from bftcore.train import make_optimizer

        self.model, self.reference, self.base = model, reference, base
        self.cfg, self.profile, self.pad_id = cfg, profile, pad_id
        self.ddp = ddp  # the DDP-wrapped trainee under torchrun (its forward syncs gradients)
        self.base_stats = base_stats  # the base top-k from scored shards, instead of `base`
        self.openers = openers  # the refusal openers of the run's data (the rank penalty's guard)
        self.device = next(model.parameters()).device
        self.compute = torch_dtype(cfg.dtype, self.device)  # the forward's type (autocast)
        self.opt = make_optimizer(model, cfg.lr, cfg.weight_decay)

    def reference_logp(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                       cols: torch.Tensor) -> torch.Tensor:
        """The frozen aligned model's log-probs at (rows, cols): a frozen copy, or the LoRA
        trainee with its adapter disabled (no second copy in memory)."""
        import torch

        from bftcore.train import autocast

        with torch.no_grad(), autocast(self.device, self.compute):
            if self.reference is not None:
                logits = self.reference(input_ids=ids, attention_mask=mask).logits
            else:
                with self.model.disable_adapter():
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
            return torch.log_softmax(logits[rows, cols].float(), -1)

    def base_logp(self, b: Batch, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The frozen base model's log-probs at (rows, cols), online: only the rows that need it,
        cut after their last needed column (causal attention: the rest cannot change them)."""
        import torch

        from bftcore.train import autocast

        used, local = torch.unique(rows, return_inverse=True)
        width = int(cols.max()) + 1
        with torch.no_grad(), autocast(self.device, self.compute):
            logits = self.base(input_ids=b.ids[used, :width], attention_mask=b.mask[used, :width]).logits
            return torch.log_softmax(logits[local, cols].float(), -1)

    def base_topk(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The base's (top-k ids, log-probs) at the prefix positions: from scored shards, or online."""
        import torch

        if self.base_stats is not None:
            return self.base_stats.lookup(b.pre_doc, b.pre_pos, self.cfg.top_k)
        top_lp, top_ids = torch.topk(self.base_logp(b, b.pre_row, b.pre_col), self.cfg.top_k, dim=-1)
        return top_ids, top_lp

    def micro_loss(self, b: Batch, norm: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one micro-batch, each term as Σ over its positions / its global
        count (so micro-batches and ranks add up to the global mean)."""
        import torch

        from bftcore.train import autocast

        fwd = self.ddp if self.ddp is not None else self.model
        attention = reads_attention(self.cfg)
        with autocast(self.device, self.compute):
            out = fwd(input_ids=b.ids, attention_mask=b.mask, output_attentions=attention)
        ctx = LossContext(self.cfg, self.profile, norm, self.reference_logp, self.base_logp, self.base_topk,
                          attentions=tuple(out.attentions or ()) if attention else (), openers=self.openers)
        terms = REGISTRY[self.cfg.method].loss(b, out.logits, ctx)
        loss = sum(terms.values(), torch.zeros((), device=self.device))
        return loss, {k: float(v.detach()) for k, v in terms.items()}


@dataclass
class RunResult:
    out: Path
    steps: int
    resumed_from: int
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def train_loop(trainer: Trainer, data: CompletionData, work: Path, key: str, *,
               progress: Progress | None = None, stop_after: int | None = None) -> RunResult:
    """Run (or resume) the configured number of steps; checkpoints go to `work/checkpoint.pt`."""
    import torch

    from bftcore.train import clip_and_step, lr_at, set_lr

    cfg, model = trainer.cfg, trainer.model
    rank, world = dist.rank_world()
    ck = work / "checkpoint.pt"
    start, log = load_checkpoint(ck, trainer, key)
    live = work / "train_log.jsonl"  # one line per step, for watching a long run (tail -f)
    if rank == 0:  # steps after the last checkpoint were lost with the run: the log restarts there
        atomic_write(live, "".join(json.dumps(e) + "\n" for e in log))
    t0 = time.perf_counter()
    model.train()
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg.steps, cfg)
        set_lr(trainer.opt, lr)
        examples = make_examples(data, cfg, trainer.profile, step)
        norm = {k: float(v) for k, v in term_counts(examples, cfg).items()}
        mine = examples[rank::world]  # this rank's slice of the global batch
        per_micro = math.ceil(len(mine) / cfg.grad_accum)
        micro = [mine[s:s + per_micro] for s in range(0, len(mine), per_micro)]
        terms: dict[str, float] = {}
        for i, part in enumerate(micro):
            sync = i == len(micro) - 1  # reduce gradients over ranks once, after the last micro-batch
            if cfg.fsdp:
                model.set_requires_gradient_sync(sync)
            ctx = trainer.ddp.no_sync() if trainer.ddp is not None and not sync else contextlib.nullcontext()
            with ctx:
                loss, parts = trainer.micro_loss(collate(part, trainer.pad_id, trainer.device), norm)
                # DDP and FSDP average gradients over ranks; each term is already a share of the
                # global mean, so scale back up by the world size
                (loss * world).backward()
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v
        if world > 1:
            vec = torch.tensor([terms.get(k, 0.0) for k in sorted(norm)], dtype=torch.float64)
            torch.distributed.all_reduce(vec)
            terms = dict(zip(sorted(norm), vec.tolist()))
        grad_norm = clip_and_step(model, trainer.opt, cfg.grad_clip)
        entry = {"step": step + 1, "lr": lr, "loss": sum(terms.values()), "grad_norm": grad_norm,
                 **dict(sorted(terms.items()))}
        log.append(entry)
        if rank == 0:
            with live.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        if progress is not None:
            progress(f"completion ({cfg.method})", step + 1, cfg.steps)
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(ck, trainer, done, log, key, rank)
        if stop_after is not None and done >= stop_after:
            break
    model.eval()
    return RunResult(work.parent, len(log), start, log, time.perf_counter() - t0)
