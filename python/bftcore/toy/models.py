"""The toy world's model architectures: small transformers configs and seeded fresh models.

Also what tests and benchmarks use to make tiny models of a supported architecture locally.
"""

from __future__ import annotations

from typing import Any

import torch

from bftcore.errors import BadInput

ARCHS = ("llama", "qwen2")


def toy_config(
    arch: str,
    *,
    vocab_size: int,
    hidden: int,
    layers: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    max_positions: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
) -> Any:
    """A small transformers config of a supported architecture (tied embeddings)."""
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = {
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_positions, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id,
    }
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":  # q/k/v projections carry biases in Qwen2
        return Qwen2Config(**common, use_sliding_window=False)
    raise BadInput(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHS)})")


def new_model(config: Any, seed: int) -> Any:
    """A freshly initialised causal LM, deterministic for the seed."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


