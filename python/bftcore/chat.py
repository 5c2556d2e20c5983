"""Prompts rendered with the model's chat template, responses tokenized after it.

Every stage tokenizes a (prompt, response) pair the same way: the prompt through the chat template
with the generation prompt, the response on its own (no special tokens) and then the eos token.
Tokenizing the two parts separately keeps the response's token ids independent of the prompt,
which is what a prefilling attack forces and what the scored shards record.

Thinking is off unless asked for: a template that reads `enable_thinking` (Qwen3's) gets it as
False, so the assistant turn starts after the empty thinking block, where the response goes.
Templates that never read the variable render the same text either way.
"""

from __future__ import annotations

from typing import Any


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]], *, chat: bool = True,
               thinking: bool = False) -> list[int]:
    """Token ids of the conversation (a user prompt, or a list of messages ending with the user's)
    plus the assistant header; without a chat template, the raw text of the last turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if not chat or not has_chat_template(tokenizer):
        return list(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"])
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=thinking)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def thinking_default(template: str, on: bool) -> str:
    """`template` with `enable_thinking` defaulting to `on` where the caller passes none (an exported
    model's runtime renders without it); a template that never reads the variable, unchanged."""
    if "enable_thinking" not in template:
        return template
    value = "true" if on else "false"
    return ("{%- if enable_thinking is not defined %}{%- set enable_thinking = " + value + " %}{%- endif %}"
            + template)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def response_ids(tokenizer: Any, response: str, *, eos: bool = True) -> list[int]:
    """Token ids of an assistant response, ending with eos unless told otherwise."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    return ids + [tokenizer.eos_token_id] if eos else ids
