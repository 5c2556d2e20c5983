"""The training loop: short and explicit (nanoGPT style), shared by the toy world and completion.

An example is a token sequence with per-token loss weights (0 on the prompt, 1 on the target).
AdamW, linear warmup then cosine decay, gradient clipping, gradient accumulation, bf16 autocast on
a GPU. Deterministic for a seed on one machine: the data order comes from a seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

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
class Example:
    ids: list[int]
    weights: list[float]  # loss weight of predicting ids[i] (0 for prompt tokens)

    @classmethod
    def prompt_target(cls, prompt: list[int], target: list[int]) -> Example:
        return cls(prompt + target, [0.0] * len(prompt) + [1.0] * len(target))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_frac."""
    warmup = max(1, round(cfg.warmup_frac * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.lr * cfg.min_lr_frac
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
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
    examples: Sequence[Example],
    cfg: TrainConfig,
    *,
    pad_id: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> list[float]:
    """Train `model` in place on `examples`; returns the loss of every optimizer step."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = max(1, len(examples) // per_step)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.95),
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    model.train()
    order: list[int] = []
    losses: list[float] = []
    for step in range(total):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, cfg)
        step_loss = 0.0
        for _ in range(cfg.grad_accum):
            if len(order) < cfg.batch_size:  # a fresh shuffled pass over the data
                order += torch.randperm(len(examples), generator=gen).tolist()
            picked, order = order[: cfg.batch_size], order[cfg.batch_size:]
            batch = {k: v.to(device) for k, v in
                     collate([examples[i] for i in picked], pad_id).items()}
            with autocast:
                logits = model(input_ids=batch["input_ids"],
                               attention_mask=batch["attention_mask"]).logits
            loss = weighted_ce(logits, batch["input_ids"], batch["weights"]) / cfg.grad_accum
            loss.backward()
            step_loss += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_step is not None:
            on_step(step + 1, total, step_loss)
    model.eval()
    return losses
