"""The source model directory, as both writers read it: its config, checked for what bftcore exports."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bftcore.errors import BadInput

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")
# RoPE variants llama.cpp reproduces from what the GGUF writer lays out: llama3 as the
# `rope_freqs` tensor, which llama.cpp reads for the Llama architecture only
ROPE_TYPES = {"llama": ("default", "llama3"), "qwen2": ("default",), "qwen3": ("default",)}


def _config(model_dir: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError as e:
        raise BadInput(f"{model_dir}: not a model directory (no config.json)") from e
    except json.JSONDecodeError as e:
        raise BadInput(f"{model_dir}/config.json: not JSON ({e.msg})") from e
    return _check_config(cfg, model_dir)


def _check_config(cfg: dict[str, Any], where: Path) -> dict[str, Any]:
    """The config when bftcore can export its model, else BadInput naming what it cannot."""
    arch = cfg.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise BadInput(f"{where}: architecture {arch!r} cannot be exported "
                       f"(supported: {', '.join(SUPPORTED_ARCHS)})")
    rope = rope_config(cfg)
    if rope.type not in ROPE_TYPES[arch]:
        raise BadInput(f"{where}: rope scaling {rope.type!r} is not exported for {arch} "
                       f"(supported: {', '.join(ROPE_TYPES[arch])})")
    if cfg.get("use_sliding_window"):
        raise BadInput(f"{where}: {arch} with sliding-window attention is not exported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise BadInput(f"{where}: activation {cfg.get('hidden_act')!r} is not exported (only silu)")
    if rope.type == "llama3":
        llama3_freq_factors(rope, _head_dim(cfg), where)  # its fields present and sane
    return cfg


@dataclass(frozen=True)
class Rope:
    """A config's RoPE: base, type and the type's parameters, whichever layout the config uses."""

    theta: float
    type: str
    params: dict[str, Any] = field(default_factory=dict)


def rope_config(cfg: dict[str, Any]) -> Rope:
    """The hub's layout (`rope_scaling` + top-level `rope_theta`) and transformers 5's
    (`rope_parameters`, theta inside), read alike; the newer layout wins where both are present."""
    params = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    kind = params.get("rope_type", params.get("type")) or "default"
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    return Rope(theta, str(kind), params)


def _rope_theta(cfg: dict[str, Any]) -> float:
    return rope_config(cfg).theta


def _head_dim(cfg: dict[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def llama3_freq_factors(rope: Rope, head_dim: int, where: Path | str = "config") -> np.ndarray:
    """Llama 3's RoPE scaling as llama.cpp reads it (`rope_freqs.weight`): one divisor per
    frequency, 1 for short wavelengths, `factor` for long ones, a smooth blend between."""
    fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for name in fields:
        if isinstance(rope.params.get(name), bool) or not isinstance(rope.params.get(name), (int, float)):
            raise BadInput(f"{where}: llama3 rope scaling without a numeric {name!r} field")
    factor, low, high, old_ctx = (float(rope.params[name]) for name in fields)
    if not (factor > 0 and high > low > 0 and old_ctx > 0):
        raise BadInput(f"{where}: llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0")
    inv_freq = rope.theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_ctx / wavelen - low) / (high - low)
    # the divisor of the blended frequency (1 - s) f / factor + s f
    blended = 1.0 / ((1.0 - smooth) / factor + smooth)
    factors = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blended))
    return factors.astype(np.float32)
