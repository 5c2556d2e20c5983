"""Any-Depth Alignment as an inference-time defense (arXiv 2510.18081, its probe-free "rethinking"
variant; only the abstract is public, so the definition here is ours, in docs/method.md).

Every `every` generated tokens the assistant-header tokens of the chat template are put into the
context, as if a new assistant turn began, and the model decodes `peek` tokens from there. If those
open a refusal, the model has reassessed: the answer ends with that refusal (the text so far, then
the refusal). Otherwise the header and the peek are dropped and decoding goes on where it was. It
wraps any generator (`bftcore.generate.Generator`), so a GGUF, ONNX or PyTorch model runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bftcore.errors import BadInput
from bftcore.generate import Decoding


@dataclass(frozen=True)
class AnyDepthConfig:
    every: int = 16  # tokens between two re-inserted assistant headers
    peek: int = 8  # tokens decoded after the header to see whether the model now refuses


def assistant_header(tokenizer: Any, *, thinking: bool = False) -> list[int]:
    """The tokens the chat template puts before an assistant answer (the generation prompt): the
    rendering with it less the rendering without it. BadInput for a model without a template."""
    from bftcore.chat import has_chat_template

    if not has_chat_template(tokenizer):
        raise BadInput("Any-Depth Alignment re-inserts the chat template's assistant header: this model has no template")
    turn = [{"role": "user", "content": "Hello"}]
    kw = {"tokenize": False, "enable_thinking": thinking}
    with_header = tokenizer.apply_chat_template(turn, add_generation_prompt=True, **kw)
    without = tokenizer.apply_chat_template(turn, add_generation_prompt=False, **kw)
    if not with_header.startswith(without) or with_header == without:
        raise BadInput("cannot tell the chat template's assistant header (its generation prompt)")
    return list(tokenizer(with_header[len(without):], add_special_tokens=False)["input_ids"])


class AnyDepthGenerator:
    """A generator whose `generate` re-inserts the assistant header every `cfg.every` tokens and
    stops at a refusal (`refuses(text)`) the model gives after it. `prompt_ids` and
    `next_logprobs` are the wrapped generator's own."""

    def __init__(self, gen: Any, refuses: Callable[[str], bool], cfg: AnyDepthConfig = AnyDepthConfig(), *,
                 thinking: bool = False) -> None:
        if cfg.every < 1 or cfg.peek < 1:
            raise BadInput("--ada-every and the peek length must be >= 1")
        self.gen, self.refuses, self.cfg = gen, refuses, cfg
        self.tokenizer = gen.tokenizer
        self.header = assistant_header(gen.tokenizer, thinking=thinking)
        self.arch = getattr(gen, "arch", "")
        self.eos_ids = getattr(gen, "eos_ids", {gen.tokenizer.eos_token_id})
        self.reassessed = 0  # answers ended by a refusal after a re-inserted header

    def prompt_ids(self, prompt: Any, *, chat: bool = True, thinking: bool = False) -> list[int]:
        return list(self.gen.prompt_ids(prompt, chat=chat, thinking=thinking))

    def next_logprobs(self, inputs: Sequence[Sequence[int]]) -> np.ndarray:
        return np.asarray(self.gen.next_logprobs(inputs))

    def generate(self, inputs: Sequence[Sequence[int]], decoding: Decoding, seeds: Sequence[int] | None = None,
                 on_batch: Callable[[int], None] | None = None) -> list[list[int]]:
        seeds = list(seeds) if seeds is not None else [decoding.seed + i for i in range(len(inputs))]
        outs: list[list[int]] = [[] for _ in inputs]
        active = list(range(len(inputs)))
        chunk = 0
        while active:
            room = decoding.max_new_tokens - len(outs[active[0]])
            step = replace(decoding, max_new_tokens=min(self.cfg.every, room))
            # a chunk's seed: the row's own and the chunk's number (sampling stays per-row reproducible)
            got = self.gen.generate([list(inputs[i]) + outs[i] for i in active], step,
                                    seeds=[seeds[i] * 1009 + chunk for i in active])
            going = []
            for i, new in zip(active, got):
                outs[i] += new
                if len(new) == step.max_new_tokens and len(outs[i]) < decoding.max_new_tokens:
                    going.append(i)  # it neither ended its turn nor reached the length
            if going:  # the reassessment: a fresh assistant header, a short greedy look
                looks = self.gen.generate([list(inputs[i]) + outs[i] + self.header for i in going],
                                          Decoding(self.cfg.peek))
                refused = [self.refuses(str(self.tokenizer.decode(look, skip_special_tokens=True))) for look in looks]
                for i, look, stop in zip(going, looks, refused):
                    if stop:  # the model reassessed: its answer ends with the refusal
                        outs[i] += self.header + look
                        self.reassessed += 1
                going = [i for i, stop in zip(going, refused) if not stop]
            active = going
            chunk += 1
        if on_batch is not None:
            on_batch(len(inputs))
        return outs
