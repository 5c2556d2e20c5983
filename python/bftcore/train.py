"""The training loop: short and explicit (nanoGPT style), and the pieces completion shares with it.

An example is a token sequence with per-token loss weights (0 on the prompt, 1 on the target).
AdamW, linear warmup then cosine decay, gradient clipping, gradient accumulation, bf16 autocast on
a GPU (over float32 weights and optimizer state). Deterministic for a seed on one machine: the data order comes from a seeded generator.

The pieces (`make_optimizer`, `lr_at`, `set_lr`, `autocast`, `clip_and_step`) are what
`bftcore.complete`'s loop uses too, so the two loops cannot drift apart in how they step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0
    lr: float = 1e-3
    batch_size: int = 32
    grad_accum: int = 1
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class TrainingSequence:
    ids: list[int]
    weights: list[float]  # loss weight of predicting ids[i] (0 for prompt tokens)

    @classmethod
    def prompt_target(cls, prompt: list[int], target: list[int]) -> TrainingSequence:
        return cls(prompt + target, [0.0] * len(prompt) + [1.0] * len(target))


# ---- the pieces both loops step with ------------------------------------------------------
class Schedule(Protocol):
    """What `lr_at` reads: TrainConfig and CompleteConfig both have it."""

    @property
    def lr(self) -> float: ...
    @property
    def warmup_frac(self) -> float: ...
    @property
    def min_lr_frac(self) -> float: ...


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; matrices decay, vectors (norms, biases) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def lr_at(step: int, total: int, cfg: Schedule) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_frac."""
    warmup = max(1, round(cfg.warmup_frac * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_frac
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def autocast(device: torch.device, dtype: torch.dtype | None = None) -> torch.autocast:
    """Autocast to `dtype` (bf16, fp16) on `device`, float32 weights staying float32; a no-op for
    float32. Without a dtype: bf16 on a GPU, a no-op elsewhere (CPU runs stay float32 and
    bit-reproducible)."""
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    on = dtype != torch.float32
    # a disabled autocast still checks its dtype: name one every device type takes
    return torch.autocast(device.type, dtype=dtype if on else torch.bfloat16, enabled=on)


def clip_and_step(model: torch.nn.Module, opt: torch.optim.Optimizer, max_norm: float) -> float:
    """Clip the accumulated gradients to `max_norm`, step, clear them; the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_norm)
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor, the norm over every rank's shard
        norm = norm.full_tensor()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# ---- the toy world's supervised loop ------------------------------------------------------
def collate(batch: Sequence[TrainingSequence], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; labels are the next tokens, weights say which count."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        mask[i, :n] = 1
        weights[i, :n] = torch.tensor(e.weights)
    return {"input_ids": ids, "attention_mask": mask, "weights": weights}


def weighted_ce(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * -log p(ids_t | ids_<t) / sum_t w_t, over the shifted sequence."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    w = weights[:, 1:]
    return (nll * w).sum() / w.sum().clamp_min(1e-8)


def train(
    model: torch.nn.Module,
    examples: Sequence[TrainingSequence],
    cfg: TrainConfig,
    *,
    pad_id: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place on `examples`; returns the loss of every optimizer step.

    A step takes grad_accum micro-batches of batch_size examples, consecutive in one seeded
    shuffled order, each weighing 1/grad_accum.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = max(1, len(examples) // (cfg.batch_size * cfg.grad_accum))
    total = max(1, round(cfg.epochs * steps_per_epoch))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    model.train()
    order: list[int] = []
    losses: list[float] = []
    for step in range(total):
        set_lr(opt, lr_at(step, total, cfg))
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:  # a fresh shuffled pass over the data
                order += torch.randperm(len(examples), generator=gen).tolist()
            picked, order = order[: cfg.batch_size], order[cfg.batch_size:]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in picked], pad_id).items()}
            with autocast(device):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = weighted_ce(logits, batch["input_ids"], batch["weights"]) / cfg.grad_accum
            loss.backward()
            step_loss += loss.item()
        clip_and_step(model, opt, cfg.grad_clip)
        losses.append(step_loss)
        if on_step is not None:
            on_step(step + 1, total, step_loss)
    model.eval()
    return losses
