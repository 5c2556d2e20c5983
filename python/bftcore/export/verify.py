"""`--verify`: an exported artifact against PyTorch on texts.

Each reader of the artifact (llama.cpp and, for GGUF, a second, independent reading of the file by
transformers (`gguf_file=`); onnxruntime for ONNX) is compared on the same token ids: max |Δ logit|
and argmax agreement over real positions, and whether the artifact's own tokenizer splits the texts
as the source's does.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bftcore.errors import BadInput
from bftcore.models import load_model, load_tokenizer

# Texts for `--verify` when no data is given: prose, digits, code, whitespace runs, unicode, CJK,
# emoji; each is checked raw and inside the chat template.
PROBE_TEXTS = (
    "How do I mend a fishing net? Step 1: lay the net flat.",
    "Sure, here is how to bake rye bread.\nStep 1: mix 500 g of flour with 10 g of salt.",
    "  leading spaces,\ttabs,\n\nblank lines   and trailing spaces  ",
    "Numbers 1234567890 and 3.14159, dates 2026-11-29, ids #A7-b9.",
    "def f(x):\n    return {'a': [x ** 2 for _ in range(3)]}  # code",
    "Ünïcödé, naïve café, Straße, ångström, ½ ¼ ¾ ≤ ≥ ∑",
    "日本語のテキストと中文文本，还有한국어.",
    "Emoji 🙂🚀🧪 and symbols ©®™ → ← ↑ ↓",
    "I can't help with that. I'm sorry, but that would be harmful.",
    "Mixed CASE words, don't WON'T shouldn't, e-mail: x@y.z",
)


@dataclass(frozen=True)
class Parity:
    """One reader of an exported artifact against the PyTorch source, on the same token ids."""

    artifact: str
    reader: str  # llama.cpp, onnxruntime, transformers(gguf)
    dtype: str
    texts: int
    positions: int
    token_mismatches: int  # texts the artifact's own tokenizer splits differently (-1: not checked)
    max_abs_logit: float
    argmax_agreement: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verify_texts(model_dir: str | Path, data: Sequence[str | Path] = (), limit: int = 64) -> list[str]:
    """Texts for verification: prompt (through the chat template) + response of the first `limit`
    records of `data`, or the built-in probes raw and in the chat template."""
    from bftcore.chat import has_chat_template
    from bftcore.corpus import read_corpus

    tok = load_tokenizer(model_dir)

    def chat(messages: list[dict[str, str]], response: str) -> str:
        if not has_chat_template(tok):
            return messages[-1]["content"] + " " + response
        return str(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           enable_thinking=False)) + response  # as every stage renders

    if data:
        records, _ = read_corpus(list(data))
        return [chat(r.messages(), r.response or "") for r in records[:limit]]
    return [*PROBE_TEXTS, *(chat([{"role": "user", "content": t}], t) for t in PROBE_TEXTS)]


def verify(model_dir: str | Path, artifact: str | Path, texts: Sequence[str], dtype: str = "", *,
           transformers_gguf: bool = True) -> list[Parity]:
    """Compare an exported GGUF file or ONNX directory with the PyTorch model on `texts`. For GGUF,
    `transformers_gguf` adds transformers' own reading of the file where it reads it whole (it
    parses the vocabulary in Python: about a minute for a 128k-token one)."""
    return verify_many(model_dir, {dtype: artifact}, texts, transformers_gguf=transformers_gguf)


@dataclass(frozen=True)
class _Reference:
    """The source's side of a comparison: each text's token ids and PyTorch's logits (and argmax)."""

    text_ids: list[list[int]]  # per text, as the source's tokenizer splits it
    ids: list[list[int]]  # the non-empty ones, compared on
    logits: list[np.ndarray]
    top: list[np.ndarray]


def verify_many(model_dir: str | Path, artifacts: Mapping[str, str | Path], texts: Sequence[str], *,
                transformers_gguf: bool = True) -> list[Parity]:
    """`verify` for several artifacts of one model ({dtype: path}), PyTorch run once."""
    model_dir = Path(model_dir)
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir)
    text_ids = [list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    ids = [x for x in text_ids if x]
    if not ids:
        raise BadInput("no text to verify on")
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([x])).logits[0].float().numpy() for x in ids]
    ref = _Reference(text_ids, ids, logits, [r.argmax(-1) for r in logits])
    second = transformers_gguf and transformers_reads_gguf(model.config.to_dict())
    rows: list[Parity] = []
    for dtype, artifact in artifacts.items():
        artifact = Path(artifact)
        if artifact.is_dir():
            rows.append(_parity(str(artifact), "onnxruntime", dtype or "f32", ref, *_onnx_read(artifact, ref, texts)))
            continue
        rows.append(_parity(str(artifact), "llama.cpp", dtype, ref, *_llama_read(artifact, ref, texts)))
        if second:
            rows.append(_parity(str(artifact), "transformers(gguf)", dtype, ref,
                                _transformers_gguf_logits(artifact, ids), -1))
    return rows


def transformers_reads_gguf(cfg: dict[str, Any]) -> bool:
    """Whether transformers' GGUF reader rebuilds this model whole. It builds a Llama without
    attention/MLP biases, without Llama 3's RoPE scaling (it ignores `rope_freqs`), and a Qwen3
    with head_dim = hidden / heads (it ignores `key_length`)."""
    from bftcore.export.source import _head_dim, rope_config

    arch = cfg.get("model_type")
    if arch == "llama" and (cfg.get("attention_bias") or cfg.get("mlp_bias") or rope_config(cfg).type != "default"):
        return False
    return not (arch == "qwen3" and _head_dim(cfg) * int(cfg["num_attention_heads"]) != int(cfg["hidden_size"]))


def _parity(artifact: str, reader: str, dtype: str, ref: _Reference, got: list[np.ndarray],
            mismatches: int) -> Parity:
    diff, agree, n = 0.0, 0, 0
    for r, top, g in zip(ref.logits, ref.top, got):
        diff = max(diff, float(np.abs(r - g).max()))
        agree += int((top == g.argmax(-1)).sum())
        n += len(r)
    return Parity(artifact, reader, dtype, len(ref.ids), n, mismatches, diff, agree / n)


def _llama_read(path: Path, ref: _Reference, texts: Sequence[str]) -> tuple[list[np.ndarray], int]:
    """Teacher-forced logits from llama.cpp (F32 KV cache: the weights' effect alone), and the
    number of texts its tokenizer splits unlike the source's: one load of the file for both."""
    from bftcore.backends import GGUFTokenizer, open_llama

    llm = open_llama(path, n_ctx=max(len(x) for x in ref.ids) + 8, kv_f32=True, logits_all=True)
    out = []
    for x in ref.ids:
        llm.reset()
        llm.eval(x)
        out.append(np.array(llm.scores[: len(x)], dtype=np.float32))
    gt = GGUFTokenizer(llm)
    return out, sum(gt.encode(t) != x for t, x in zip(texts, ref.text_ids))


def _transformers_gguf_logits(path: Path, ids: list[list[int]]) -> list[np.ndarray]:
    """An independent reader: transformers dequantizes the file and undoes the Q/K permutation."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with contextlib.redirect_stderr(io.StringIO()):  # its de-quantizing bar ignores the switch above
        m = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return [m(input_ids=torch.tensor([x])).logits[0].float().numpy() for x in ids]


def _onnx_read(path: Path, ref: _Reference, texts: Sequence[str]) -> tuple[list[np.ndarray], int]:
    """Logits from onnxruntime, and the texts the export's own tokenizer splits unlike the source's."""
    from bftcore.backends import OnnxGenerator

    gen = OnnxGenerator(path)
    out = []
    for x in ref.ids:
        a = np.array([x], dtype=np.int64)
        logits, _ = gen.session.run(None, {"input_ids": a, "attention_mask": np.ones_like(a),
                                           "position_ids": np.arange(len(x))[None], "past": gen._empty_past(1)})
        out.append(logits[0])
    mine = gen.tokenizer
    return out, sum(list(mine(t, add_special_tokens=False)["input_ids"]) != x for t, x in zip(texts, ref.text_ids))


def min_agreement(dtype: str) -> float:
    """The argmax agreement `--verify` asks of a dtype: 99%, and 95% for 4-bit K-quants."""
    return 0.95 if dtype.startswith("q4") else 0.99
