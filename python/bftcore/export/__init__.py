"""The export stage: a model directory to a GGUF file (llama.cpp) or an ONNX graph (onnxruntime).

GGUF is written by bftcore itself with `gguf.GGUFWriter`: llama.cpp's own converter recognises a
BPE pre-tokenizer only by a hash of known models, so it refuses every locally trained tokenizer.
F32/F16/BF16/Q8_0 are quantized by the `gguf` package; K-quants (Q4_K_M) by llama.cpp's own
quantizer, from an F32 file. Norms and biases stay F32, as llama.cpp's converter keeps them.

ONNX is one graph with a KV cache (`model.onnx`): inputs input_ids, attention_mask, position_ids
and `past` (every layer's keys and values stacked, [layers, 2, batch, kv_heads, past, head_dim],
past = 0 for the prompt), outputs logits and `present` (the same stack, one step longer). The
tokenizer files, config.json and `export.json` sit beside it.

`verify` compares an exported artifact with PyTorch on texts: tokenizer ids, max |Δ logit| and
argmax agreement over real positions; for GGUF also a second, independent reading of the file by
transformers (`gguf_file=`).

Architectures: Llama (default RoPE, or Llama 3's scaled RoPE written as llama.cpp's `rope_freqs`
tensor), Qwen2 (q/k/v biases) and Qwen3 (q/k norms, explicit head_dim); tied heads write no
output.weight. The config is read in the hub's layout (`rope_scaling` + `rope_theta`) and in
transformers 5's (`rope_parameters`).

Modules: source (the model directory's config, checked for what can be exported; RoPE and Llama 3's
frequency divisors), gguf (the tokenizer's vocabulary and special tokens, tensor names, the GGUF
writer, K-quants through llama.cpp, a header reader that skips the vocabulary's arrays), onnx (the
KV-cache step graph and its export), verify (`Parity`, the probe texts, the readers and the
comparison, several artifacts against one PyTorch run). Here: `export` (the dispatch behind
`bftcore export`) and `check_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bftcore.errors import BadInput
from bftcore.export.gguf import (
    GGUF_DTYPES,
    LLAMA3_REGEX,
    QWEN2_REGEX,
    ROPE_FREQS,
    GGUFHeader,
    GGUFVocab,
    export_gguf,
    gguf_header,
    gguf_name,
    gguf_tensor_types,
    gguf_tensors,
    rope_permute,
    tokenizer_vocab,
)
from bftcore.export.onnx import export_onnx
from bftcore.export.source import (
    ROPE_TYPES,
    SUPPORTED_ARCHS,
    Rope,
    _check_config,
    _config,
    llama3_freq_factors,
    rope_config,
)
from bftcore.export.verify import (
    PROBE_TEXTS,
    Parity,
    min_agreement,
    transformers_reads_gguf,
    verify,
    verify_many,
    verify_texts,
)
from bftcore.models import load_model

__all__ = [
    "GGUF_DTYPES", "LLAMA3_REGEX", "PROBE_TEXTS", "QWEN2_REGEX", "ROPE_FREQS", "ROPE_TYPES", "SUPPORTED_ARCHS",
    "TARGETS", "GGUFHeader", "GGUFVocab", "Parity", "Rope", "check_source", "export", "export_gguf", "export_onnx",
    "gguf_header", "gguf_name",
    "gguf_tensor_types", "gguf_tensors", "llama3_freq_factors", "min_agreement", "rope_config", "rope_permute",
    "tokenizer_vocab", "transformers_reads_gguf", "verify", "verify_many", "verify_texts",
]

TARGETS = ("gguf", "onnx")


def check_source(model_dir: str | Path, to: str) -> None:
    """BadInput now, before any work, when `model_dir` cannot be exported to `to`."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise BadInput(f"{model_dir}: no such model directory")
    if (model_dir / "config.json").is_file():
        cfg = _config(model_dir)
    else:  # an adapter: its merged model's config
        cfg = _check_config(load_model(model_dir).config.to_dict(), model_dir)
    if to == "gguf":
        tokenizer_vocab(model_dir, int(cfg["vocab_size"]), cfg)


def export(model_dir: str | Path, to: str, out: str | Path, dtype: str = "f16",
           progress: Callable[[str, int, int], None] | None = None, *, thinking: bool = False) -> Path:
    """`bftcore export`: GGUF in one dtype, or an ONNX directory (F32). `thinking`: the GGUF chat
    template's default for its thinking switch (the ONNX directory keeps the source's template and
    bftcore passes the switch when it renders)."""
    if to == "gguf":
        return export_gguf(model_dir, out, dtype, progress, thinking=thinking)
    if to == "onnx":
        if dtype not in ("f32", ""):
            raise BadInput(f"ONNX export writes F32 weights; --dtype {dtype} applies to GGUF only")
        return export_onnx(model_dir, out, progress)
    raise BadInput(f"unknown export target {to!r} (known: {', '.join(TARGETS)})")
