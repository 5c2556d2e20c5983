"""The source model directory, as both writers read it: its config, checked for what bftcore exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bftcore.errors import BadInput

SUPPORTED_ARCHS = ("llama", "qwen2")


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
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise BadInput(f"{where}: rope scaling {rope.get('rope_type')!r} is not exported (only default RoPE)")
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise BadInput(f"{where}: Qwen2 with sliding-window attention is not exported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise BadInput(f"{where}: activation {cfg.get('hidden_act')!r} is not exported (only silu)")
    return cfg


def _rope_theta(cfg: dict[str, Any]) -> float:
    rope = cfg.get("rope_parameters") or {}
    return float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _head_dim(cfg: dict[str, Any]) -> int:
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
