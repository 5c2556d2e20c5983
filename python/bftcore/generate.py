"""Generation backends. One small interface; the PyTorch/transformers backend lives here.

Inputs are token-id lists (a rendered prompt, optionally followed by a forced assistant prefix);
outputs are the newly generated ids, cut at the end-of-turn token. Batches are left-padded and
length-sorted, so that batched greedy decoding gives the same tokens as one prompt at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bftcore.chat import prompt_ids


@dataclass(frozen=True)
class Decoding:
    """Greedy when temperature == 0; otherwise sampled with a fixed seed."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


class Generator(Protocol):
    tokenizer: Any

    def prompt_ids(self, prompt: str, *, chat: bool = True) -> list[int]: ...

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]: ...


class TorchGenerator:
    """transformers' `generate` with a KV cache over left-padded, length-sorted batches."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id

    def prompt_ids(self, prompt: str, *, chat: bool = True) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat)

    @torch.no_grad()
    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
        out: list[list[int]] = [[] for _ in inputs]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, ids in zip(chunk, self._generate_batch([inputs[i] for i in chunk], decoding, start)):
                out[i] = ids
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def _generate_batch(self, batch: Sequence[Sequence[int]], d: Decoding, offset: int) -> list[list[int]]:
        width = max(len(x) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            ids[r, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
            mask[r, width - len(x):] = 1
        sample = d.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample}
        if sample:
            torch.manual_seed(d.seed + offset)
            kwargs.update(temperature=d.temperature, top_p=d.top_p, top_k=d.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        gen = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
            max_new_tokens=d.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_id,
            **kwargs,
        )
        result = []
        for row in gen[:, width:].tolist():
            result.append(row[: row.index(self.eos_id)] if self.eos_id in row else row)
        return result
