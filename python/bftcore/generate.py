"""Generation backends: one small interface that every attack is written against.

    prompt_ids(prompt | messages, chat=True, thinking=False)
                                               the rendered prompt's token ids (chat template, or raw)
    generate(inputs, decoding, seeds=None)     continuations of token-id inputs (a rendered prompt,
                                               optionally followed by a forced assistant prefix),
                                               cut at the end-of-turn token
    next_logprobs(inputs)                      log-probs of the next token after each input

`guided(gen, inputs, choose, ...)` decodes with the attacker picking each token (RAP, the adaptive
prefill): through the generator's own KV-cached loop where it has one (`TorchGenerator.guided`), else
one `next_logprobs` call per step, which every backend has.

The PyTorch/transformers backend lives here; ONNX Runtime and llama.cpp backends implement the
same three methods. Batches are left-padded and length-sorted; positions count from each row's first
real token, so batched greedy decoding gives the tokens of one prompt at a time. Sampling draws each
row from its own seeded generator, so a row's sample does not depend on what it was batched with.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from bftcore.chat import prompt_ids


@dataclass(frozen=True)
class Decoding:
    """Greedy when temperature == 0; otherwise sampled (top-k 0 and top-p 1 mean off)."""

    max_new_tokens: int = 160
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


class Generator(Protocol):
    tokenizer: Any

    def prompt_ids(self, prompt: str | list[dict[str, str]], *, chat: bool = True,
                   thinking: bool = False) -> list[int]: ...

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding,
                 seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]: ...

    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray: ...


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest set of mass >= top_p (per row)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses p
        drop_orig = torch.zeros_like(drop).scatter(-1, order, drop)
        logits = logits.masked_fill(drop_orig, float("-inf"))
    return logits


# choose(step, rows, logprobs) -> the next token of each row still decoding: `rows` are the indices
# of those inputs, `logprobs` their next-token log-probs ([len(rows), vocab], float32)
Choose = Callable[[int, list[int], np.ndarray], Sequence[int]]


def guided(gen: Any, inputs: Sequence[Sequence[int]], choose: Choose, max_new_tokens: int, stop: set[int],
           on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
    """Continuations of `inputs`, each token picked by `choose`; a row ends at a token of `stop` (not
    kept) or after `max_new_tokens`. `on_batch(n)`: n more inputs finished."""
    if getattr(gen, "guided", None) is not None and set(getattr(gen, "eos_ids", ())) == stop:
        return list(gen.guided(inputs, choose, max_new_tokens, on_batch=on_batch))
    outs: list[list[int]] = [[] for _ in inputs]
    active = list(range(len(inputs)))
    for step in range(max_new_tokens):
        if not active:
            break
        picked = choose(step, active, gen.next_logprobs([list(inputs[i]) + outs[i] for i in active]))
        still = []
        for i, token in zip(active, picked):
            if int(token) not in stop:
                outs[i].append(int(token))
                still.append(i)
        if on_batch is not None and len(still) < len(active):
            on_batch(len(active) - len(still))
        active = still
    if on_batch is not None and active:
        on_batch(len(active))
    return outs


def length_batches(inputs: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """The indices of `inputs` in batches of `size`, sorted by length (a batch pads the least)."""
    order = sorted(range(len(inputs)), key=lambda i: (len(inputs[i]), i))
    return [order[s:s + size] for s in range(0, len(order), size)]


@dataclass(frozen=True)
class Contrast:
    """Inference-time contrastive suppression of base-favored tokens (docs/method.md §2, "Contrastive decoding"): on the base
    model's top-k, log π_a(v) − γ·[log π_b(v) − log π_a(v)]_+ replaces the aligned log-prob.

    Log-probs, not raw logits: two models' logits carry arbitrary per-position offsets, their
    log-softmax does not.
    """

    base: Any  # the base model (same tokenizer)
    gamma: float = 2.0
    top_k: int = 20


def contrast_logprobs(lpa: torch.Tensor, lpb: torch.Tensor, gamma: float, top_k: int) -> torch.Tensor:
    """The aligned log-probs with the base-favored excess subtracted on the base top-k, renormalised."""
    idx = torch.topk(lpb, min(top_k, lpb.shape[-1]), dim=-1).indices
    excess = (lpb.gather(-1, idx) - lpa.gather(-1, idx)).clamp_min(0.0)
    out = lpa.scatter_add(-1, idx, -gamma * excess)
    return torch.log_softmax(out, dim=-1)


class TorchGenerator:
    """A transformers causal LM with a KV cache over left-padded, length-sorted batches."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 64,
                 contrast: Contrast | None = None) -> None:
        self.model = model
        self.contrast = contrast
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id}
        # transformers renamed `past_key_values` to `cache` (5.2x); speak whichever this one knows
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
            else "past_key_values"

    def prompt_ids(self, prompt: str | list[dict[str, str]], *, chat: bool = True,
                   thinking: bool = False) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat, thinking=thinking)

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(x) for x in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, x in enumerate(rows):
            if x:
                ids[r, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
                mask[r, width - len(x):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        out = np.zeros((len(inputs), self._vocab()), dtype=np.float32)
        for chunk in length_batches(inputs, self.batch_size):
            ids, mask = self._left_pad([inputs[i] for i in chunk])
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            lp = [torch.log_softmax(m(input_ids=ids, attention_mask=mask, position_ids=pos,
                                      logits_to_keep=1).logits[:, -1].float(), -1) for m in self._models()]
            out[chunk] = self._combine(lp).cpu().numpy()
        return out

    def _models(self) -> list[Any]:
        return [self.model] if self.contrast is None else [self.model, self.contrast.base]

    def _combine(self, logprobs: list[torch.Tensor]) -> torch.Tensor:
        """The next-token log-probs: the model's own, or contrasted with the base model's."""
        if self.contrast is None:
            return logprobs[0]
        return contrast_logprobs(logprobs[0], logprobs[1], self.contrast.gamma, self.contrast.top_k)

    def _vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @torch.no_grad()
    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding,
                 seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]
        out: list[list[int]] = [[] for _ in inputs]
        for chunk in length_batches(inputs, self.batch_size):
            rows = self._decode([inputs[i] for i in chunk], decoding, [seeds[i] for i in chunk])
            for i, ids in zip(chunk, rows):
                out[i] = ids
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    @torch.no_grad()
    def guided(self, inputs: Sequence[Sequence[int]], choose: Choose, max_new_tokens: int,
               on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        """`generate.guided` in this generator's batches, KV-cached: each step runs the model over one
        new token per row instead of the whole sequence again."""
        out: list[list[int]] = [[] for _ in inputs]
        d = Decoding(max_new_tokens)
        for chunk in length_batches(inputs, self.batch_size):
            rows = self._decode([inputs[i] for i in chunk], d, [0] * len(chunk), (choose, chunk))
            for i, ids in zip(chunk, rows):
                out[i] = ids
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def _decode(self, rows: Sequence[Sequence[int]], d: Decoding, seeds: Sequence[int],
                chooser: tuple[Choose, list[int]] | None = None) -> list[list[int]]:
        """Continuations of one batch: sampled or greedy per `d`, or picked by a `guided` chooser
        (with the inputs' indices of these rows)."""
        ids, mask = self._left_pad(rows)
        gens = None if d.greedy else [torch.Generator().manual_seed(int(s)) for s in seeds]
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        models = self._models()
        caches: list[Any] = []
        lps: list[torch.Tensor] = []
        for m in models:
            out = m(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
            caches.append(getattr(out, self._cache_arg))
            lps.append(torch.log_softmax(out.logits[:, -1].float(), -1))
        next_pos = pos[:, -1:] + 1
        done = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
        result: list[list[int]] = [[] for _ in rows]
        for step in range(d.max_new_tokens):
            # log-probs instead of logits: the same argmax, and the same distribution after /T
            if chooser is None:
                token = self._pick(self._combine(lps), d, gens)
            else:
                live = [r for r in range(len(rows)) if not done[r]]
                lp = self._combine(lps)[live].cpu().numpy()
                token = torch.full((len(rows),), self.pad_id, dtype=torch.long)
                token[live] = torch.tensor([int(x) for x in chooser[0](step, [chooser[1][r] for r in live], lp)])
                token = token.to(self.device)
            for r in range(len(rows)):
                if not done[r]:
                    t = int(token[r])
                    if t in self.eos_ids:
                        done[r] = True
                    else:
                        result[r].append(t)
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=self.device)], 1)
            for i, m in enumerate(models):
                out = m(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                        use_cache=True, **{self._cache_arg: caches[i]})
                caches[i] = getattr(out, self._cache_arg)
                lps[i] = torch.log_softmax(out.logits[:, -1].float(), -1)
            next_pos = next_pos + 1
        return result

    def _pick(self, logits: torch.Tensor, d: Decoding, gens: list[torch.Generator] | None) -> torch.Tensor:
        if gens is None:
            return logits.argmax(-1)
        probs = torch.softmax(filter_logits(logits / d.temperature, d.top_k, d.top_p), -1).cpu()
        # one generator per row: a row's draw does not depend on its batch
        return torch.tensor([int(torch.multinomial(probs[r], 1, generator=g)) for r, g in enumerate(gens)],
                            device=self.device)
