"""ONNX for onnxruntime: one graph with a KV cache (`model.onnx`).

Inputs input_ids, attention_mask, position_ids and `past` (every layer's keys and values stacked,
[layers, 2, batch, kv_heads, past, head_dim], past = 0 for the prompt), outputs logits and `present`
(the same stack, one step longer). The tokenizer files, config.json and `export.json` sit beside it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bftcore.backends import quiet_stderr
from bftcore.export.source import _check_config, _head_dim
from bftcore.files import atomic_dir
from bftcore.models import load_model, load_tokenizer


class _StepGraph(torch.nn.Module):
    """One decoding step over a stacked KV cache: what the exported graph computes."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.layers = int(model.config.num_hidden_layers)
        import inspect

        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
            else "past_key_values"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[i, 0], past[i, 1], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self._cache_arg: cache})
        kv = getattr(out, self._cache_arg)
        present = torch.stack([torch.stack([kv.layers[i].keys, kv.layers[i].values])
                               for i in range(self.layers)])
        return out.logits, present


def export_onnx(model_dir: str | Path, out: str | Path,
                progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write the directory `out` (atomically): model.onnx (KV cache graph), tokenizer, config."""
    from bftcore.extras import require

    for module in ("onnx", "onnxscript"):  # torch.onnx's exporter imports them late, mid-export
        require(module, "ONNX export")
    model_dir, out = Path(model_dir), Path(out)
    model = load_model(model_dir)
    cfg = _check_config(model.config.to_dict(), model_dir)
    model = _eager(model)  # the SDPA path has data-dependent branches the exporter cannot trace
    layers, kvh, hd = int(cfg["num_hidden_layers"]), int(cfg.get("num_key_value_heads") or
                                                         cfg["num_attention_heads"]), _head_dim(cfg)
    # example sizes >= 2 for every dynamic dimension (the exporter specialises 0 and 1)
    b, t, s = 2, 3, 4
    ids = torch.randint(0, int(cfg["vocab_size"]), (b, s))
    mask = torch.ones(b, t + s, dtype=torch.long)
    pos = torch.arange(t, t + s)[None].repeat(b, 1)
    past = torch.zeros(layers, 2, b, kvh, t, hd)
    B, T, S, N = (torch.export.Dim(n) for n in ("batch", "past", "seq", "total"))
    if progress is not None:
        progress("onnx export", 0, 1)
    with atomic_dir(out) as tmp, quiet_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names it merged
        torch.onnx.export(
            _StepGraph(model).eval(), (ids, mask, pos, past), str(tmp / "model.onnx"), dynamo=True,
            input_names=["input_ids", "attention_mask", "position_ids", "past"],
            output_names=["logits", "present"],
            dynamic_shapes={"input_ids": {0: B, 1: S}, "attention_mask": {0: B, 1: N},
                            "position_ids": {0: B, 1: S}, "past": {2: B, 4: T}},
            external_data=False, verbose=False)
        for f in sorted(model_dir.iterdir()):
            if f.is_file() and (f.name.startswith(("tokenizer", "special_tokens")) or f.suffix == ".jinja"
                                or f.name in ("config.json", "generation_config.json")):
                shutil.copyfile(f, tmp / f.name)
        if not (tmp / "config.json").is_file():
            model.config.to_json_file(tmp / "config.json")
        if not any(tmp.glob("tokenizer*")):
            load_tokenizer(model_dir).save_pretrained(tmp)
        (tmp / "export.json").write_text(json.dumps({
            "format": "bftcore-onnx-kv/1", "source": str(model_dir.resolve()), "arch": cfg["model_type"],
            "layers": layers, "kv_heads": kvh, "head_dim": hd, "vocab_size": int(cfg["vocab_size"]),
            "inputs": ["input_ids", "attention_mask", "position_ids", "past"],
            "outputs": ["logits", "present"],
            "past_layout": "[layers, 2 (keys, values), batch, kv_heads, past, head_dim]",
        }, indent=2) + "\n")
    if progress is not None:
        progress("onnx export", 1, 1)
    return out


def _eager(model: Any) -> Any:
    """The same model with eager attention (exportable), weights untouched."""
    model.config._attn_implementation = "eager"
    if hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, AttributeError):
            pass
    return model.eval()
