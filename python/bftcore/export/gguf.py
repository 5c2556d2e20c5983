"""GGUF for llama.cpp: the tokenizer's vocabulary, the tensor names and the writer.

The file is written by bftcore itself with `gguf.GGUFWriter`: llama.cpp's own converter recognises a
BPE pre-tokenizer only by a hash of known models, so it refuses every locally trained tokenizer.
F32/F16/BF16/Q8_0 are quantized by the `gguf` package; K-quants (Q4_K_M) by llama.cpp's own
quantizer, from an F32 file. Norms and biases stay F32, as llama.cpp's converter keeps them.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bftcore.backends import quiet_stderr
from bftcore.chat import thinking_default
from bftcore.errors import BadInput
from bftcore.export.source import (
    _check_config,
    _config,
    _head_dim,
    _rope_theta,
    llama3_freq_factors,
    rope_config,
)
from bftcore.files import atomic_file
from bftcore.models import load_model, load_tokenizer

GGUF_DTYPES = ("f32", "f16", "bf16", "q8_0", "q4_k_m")
# Qwen2's pre-tokenizer regex, as its tokenizer.json spells it (llama.cpp: pre = "qwen2")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Llama 3's (llama.cpp: pre = "llama-bpe")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


# ---- reading the tokenizer ------------------------------------------------------------------
def _tokenizer_json(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer.json"
    if path.is_file():
        return json.loads(path.read_text())
    backend = getattr(load_tokenizer(model_dir), "backend_tokenizer", None)
    if backend is None:
        raise BadInput(f"{model_dir}: no tokenizer.json (slow tokenizers are not exported)")
    return json.loads(backend.to_str())


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    jinja = model_dir / "chat_template.jinja"
    if not cfg.get("chat_template") and jinja.is_file():
        cfg["chat_template"] = jinja.read_text()
    return cfg


# ---- tokenizer metadata ---------------------------------------------------------------------
@dataclass
class GGUFVocab:
    """What llama.cpp needs to tokenize as the HF tokenizer does."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    pre: str | None  # the BPE pre-tokenizer name llama.cpp knows
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/pad/unk/eot/eom -> id
    add_bos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, or None when it has none. The Sequence
    is the layout of the Llama 3 and Qwen2 hub files (and of families.py): the family's split regex,
    isolated, then byte-level mapping without a regex of its own."""
    if not pre:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if len(parts) != 2 or [p.get("type") for p in parts] != ["Split", "ByteLevel"]:
            return None
        split, level = parts
        if split.get("behavior", "Isolated") != "Isolated" or split.get("invert") \
                or level.get("use_regex", True) or level.get("add_prefix_space"):
            return None
        regex = str((split.get("pattern") or {}).get("Regex"))
        return {QWEN2_REGEX: "qwen2", LLAMA3_REGEX: "llama-bpe"}.get(regex)
    return None


# llama.cpp skips BPE merges for a word that is itself a token under these pre-tokenizers only
_IGNORES_MERGES = {"llama-bpe": True, "qwen2": False, "gpt-2": False}
# end-of-turn and end-of-message tokens by their text (llama.cpp also finds them so at load)
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")
_EOM_TEXTS = ("<|eom_id|>",)


def _is_sentencepiece(tok: dict[str, Any]) -> bool:
    """A Llama-2-style tokenizer: BPE over '▁'-joined pieces with byte fallback."""
    model, pre, norm = tok.get("model", {}), tok.get("pre_tokenizer") or {}, tok.get("normalizer") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        return False
    metaspace = pre.get("type") == "Metaspace"
    replaces = "▁" in json.dumps(norm, ensure_ascii=False)
    return metaspace or replaces


def tokenizer_vocab(model_dir: Path, vocab_size: int, config: dict[str, Any] | None = None) -> GGUFVocab:
    """Tokenizer metadata for GGUF, or BadInput naming what cannot be represented. `config` (the
    model's config.json) supplies eos where tokenizer_config.json names none."""
    tok = _tokenizer_json(model_dir)
    tcfg = _tokenizer_config(model_dir)
    model = tok.get("model", {})
    vocab: dict[str, int] = model.get("vocab", {})
    added = {int(a["id"]): a for a in tok.get("added_tokens", [])}
    if model.get("type") != "BPE" or not isinstance(vocab, dict):
        raise BadInput(f"{model_dir}: tokenizer model {model.get('type')!r} cannot be exported "
                       "(supported: byte-level BPE, SentencePiece-style BPE with byte fallback)")
    n = max([*vocab.values(), *added, -1]) + 1
    if n > vocab_size:
        raise BadInput(f"{model_dir}: the tokenizer has {n} tokens but the model only {vocab_size} embeddings")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(_token_type("UNUSED"))] * vocab_size
    for text, i in vocab.items():
        tokens[i], types[i] = text, int(_token_type("NORMAL"))
    sentencepiece = _is_sentencepiece(tok)
    if sentencepiece:
        kind, pre = "llama", None
        _mark_sentencepiece_types(types, vocab, model.get("unk_token"))
    else:
        kind, pre = "gpt2", _byte_level_pre(model_dir, tok)
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = int(_token_type("CONTROL" if a.get("special") else "USER_DEFINED"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = _special_ids(tcfg, config or {}, vocab, added)
    return GGUFVocab(kind, pre, tokens, types, _merge_rank_scores(tokens, merges) if sentencepiece else None,
                     merges, special, add_bos=_adds_bos(tok, special.get("bos")),
                     add_space_prefix=_adds_space_prefix(tok) if sentencepiece else None,
                     chat_template=tcfg.get("chat_template"))


def _mark_sentencepiece_types(types: list[int], vocab: dict[str, int], unk: str | None) -> None:
    """Byte-fallback pieces <0xNN> as BYTE, the unknown piece as UNKNOWN (as SentencePiece types them)."""
    for text, i in vocab.items():
        if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types[i] = int(_token_type("BYTE"))
    if unk in vocab:
        types[vocab[str(unk)]] = int(_token_type("UNKNOWN"))


def _byte_level_pre(model_dir: Path, tok: dict[str, Any]) -> str:
    """The llama.cpp pre-tokenizer of a byte-level BPE tokenizer, or BadInput."""
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"))
    if pre is None:
        raise BadInput(f"{model_dir}: BPE pre-tokenizer {json.dumps(tok.get('pre_tokenizer'))[:120]} is not "
                       "one llama.cpp reproduces (supported: byte-level GPT-2, Qwen2, Llama 3)")
    if bool(tok.get("model", {}).get("ignore_merges")) != _IGNORES_MERGES[pre]:
        raise BadInput(f"{model_dir}: tokenizer.json's ignore_merges differs from llama.cpp's {pre!r} "
                       f"pre-tokenizer (which {'ignores' if _IGNORES_MERGES[pre] else 'applies'} merges "
                       "for a word that is itself a token)")
    if tok.get("normalizer") not in (None, {"type": "NFC"}):
        raise BadInput(f"{model_dir}: tokenizer normalizer {tok['normalizer'].get('type')!r} is not exported")
    return pre


def _merge_rank_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece scores from BPE merge ranks: llama.cpp's SentencePiece tokenizer merges the
    pair whose result scores highest, so the merge order, earliest first, is the score order."""
    rank: dict[str, int] = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _special_ids(tcfg: dict[str, Any], config: dict[str, Any], vocab: dict[str, int],
                 added: dict[int, dict[str, Any]]) -> dict[str, int]:
    """bos/eos/pad/unk as tokenizer_config.json names them (bos/eos from config.json where it does
    not), and the end-of-turn/end-of-message tokens the vocabulary has."""
    by_text = {**vocab, **{a["content"]: i for i, a in sorted(added.items(), reverse=True)}}
    special: dict[str, int] = {}
    for role in ("bos", "eos", "pad", "unk"):
        token: Any = tcfg.get(f"{role}_token")  # a string, or an AddedToken's dict
        if isinstance(token, dict):
            token = token.get("content")
        if token and token in by_text:
            special[role] = by_text[token]
    for role in ("bos", "eos"):  # as llama.cpp's converter does; without one llama.cpp takes id 11
        given = config.get(f"{role}_token_id")
        if role not in special and isinstance(given, (int, list)) and given != []:
            special[role] = int(given[0] if isinstance(given, list) else given)
    controls = {a["content"]: i for i, a in added.items() if a.get("special")}
    for role, texts in (("eot", _EOT_TEXTS), ("eom", _EOM_TEXTS)):
        found = [controls[t] for t in texts if t in controls]
        if found:
            special[role] = found[0]
    return special


def _token_type(name: str) -> int:
    import gguf

    return int(gguf.TokenType[name])


def _adds_bos(tok: dict[str, Any], bos: int | None) -> bool:
    """Whether the tokenizer's post-processor puts BOS before a single text."""
    post = json.dumps(tok.get("post_processor") or {})
    return bos is not None and f'"id": {bos}' in post.replace('"ids": [', '"id": ')


def _adds_space_prefix(tok: dict[str, Any]) -> bool:
    pre, norm = tok.get("pre_tokenizer") or {}, json.dumps(tok.get("normalizer") or {})
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never"
    return '"Prepend"' in norm


# ---- GGUF -------------------------------------------------------------------------------------
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight", "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.up_proj.bias": "ffn_up.bias",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.down_proj.bias": "ffn_down.bias",
}
ROPE_FREQS = "rope_freqs.weight"


def gguf_name(hf_name: str) -> str | None:
    """The GGUF tensor name of a transformers parameter (None for buffers llama.cpp recomputes)."""
    if hf_name in _GGUF_NAMES:
        return _GGUF_NAMES[hf_name]
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"] and len(parts) > 3:
        rest = ".".join(parts[3:])
        if rest in _LAYER_NAMES:
            return f"blk.{int(parts[2])}.{_LAYER_NAMES[rest]}"
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    raise BadInput(f"tensor {hf_name!r} has no GGUF counterpart in this exporter")


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotate-half Q/K rows to llama.cpp's interleaved pairs (Llama only; Qwen uses NEOX)."""
    rows = w.shape[0]
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensor_type(name: str, array: np.ndarray, dtype: str) -> Any:
    """The GGML type of one tensor: norms and biases F32, matrices the asked-for type (Q8_0 falls
    back to F16 where a row is not a whole number of 32-wide blocks)."""
    from gguf import GGMLQuantizationType as Q

    if array.ndim < 2 or dtype in ("f32", "q4_k_m"):
        return Q.F32
    if dtype == "f16":
        return Q.F16
    if dtype == "bf16":
        return Q.BF16
    if dtype == "q8_0":
        return Q.Q8_0 if array.shape[-1] % 32 == 0 else Q.F16
    raise BadInput(f"unknown GGUF dtype {dtype!r} (known: {', '.join(GGUF_DTYPES)})")


_FILE_TYPE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
              "q4_k_m": "ALL_F32"}


def _source(model_dir: Path) -> tuple[dict[str, Any], Any]:
    """(checked config, model): the config refused before any weight is read where it can be."""
    if (model_dir / "config.json").is_file():
        cfg = _config(model_dir)
        return cfg, load_model(model_dir)
    model = load_model(model_dir)  # a LoRA adapter exports as its merged model
    return _check_config(model.config.to_dict(), model_dir), model


def gguf_tensors(cfg: dict[str, Any], state: dict[str, np.ndarray], tied: bool,
                 rope_scaling: bool = True) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, F32 array) of every tensor, in the order written: the output head left out when
    tied (llama.cpp reuses token_embd), Llama's Q/K rows permuted, Llama 3's `rope_freqs` first.
    `rope_scaling` False leaves `rope_freqs` out (tests show parity then fails)."""
    arch = cfg["model_type"]
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    out: list[tuple[str, np.ndarray]] = []
    rope = rope_config(cfg)
    if rope.type == "llama3" and rope_scaling:
        out.append((ROPE_FREQS, llama3_freq_factors(rope, _head_dim(cfg))))
    for hf in sorted(state):
        name = gguf_name(hf)
        if name is None or (tied and name == "output.weight"):
            continue
        a = state[hf]
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_q.bias")):
            a = rope_permute(a, n_head)
        elif arch == "llama" and name.endswith(("attn_k.weight", "attn_k.bias")):
            a = rope_permute(a, n_kv)
        out.append((name, a))
    return out


def _add_hparams(w: Any, cfg: dict[str, Any], dtype: str) -> None:
    import gguf

    n_head = int(cfg["num_attention_heads"])
    w.add_context_length(int(cfg.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(cfg["hidden_size"]))
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or n_head))
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    hd = _head_dim(cfg)
    w.add_rope_dimension_count(hd)
    if hd * n_head != int(cfg["hidden_size"]):  # llama.cpp's default is hidden / heads
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_vocab_size(int(cfg["vocab_size"]))
    w.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[dtype]]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def export_gguf(model_dir: str | Path, out: str | Path, dtype: str = "f16",
                progress: Callable[[str, int, int], None] | None = None, *, thinking: bool = False,
                rope_scaling: bool = True) -> Path:
    """Write `out` (atomically): the model of `model_dir` as GGUF in `dtype`. `thinking`: the default
    the chat template's thinking switch takes where a runtime passes none (Qwen3). `rope_scaling`
    False (tests only) writes Llama 3's file without its RoPE scaling."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    if dtype not in GGUF_DTYPES:
        raise BadInput(f"unknown GGUF dtype {dtype!r} (known: {', '.join(GGUF_DTYPES)})")
    cfg, model = _source(model_dir)
    vocab = tokenizer_vocab(model_dir, int(cfg["vocab_size"]), cfg)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    tensors = gguf_tensors(cfg, state, tied, rope_scaling)
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(tmp, cfg["model_type"])
        w.add_name(model_dir.name)
        _add_hparams(w, cfg, dtype)
        _add_vocab(w, vocab, thinking)
        for i, (name, a) in enumerate(tensors):
            qtype = _tensor_type(name, a, dtype)
            data = gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), qtype)
            w.add_tensor(name, data, raw_dtype=qtype)  # the shape follows from the bytes
            if progress is not None:
                progress(f"gguf {dtype}", i + 1, len(tensors))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        if dtype == "q4_k_m":  # the F32 file quantized in place of itself
            _llama_quantize(tmp, tmp, "q4_k_m")
    return out


def _add_vocab(w: Any, v: GGUFVocab, thinking: bool) -> None:
    w.add_tokenizer_model(v.model)
    if v.pre is not None:
        w.add_tokenizer_pre(v.pre)
    w.add_token_list(v.tokens)
    w.add_token_types(v.types)
    if v.scores is not None:
        w.add_token_scores(v.scores)
    if v.merges and v.model == "gpt2":
        w.add_token_merges(v.merges)
    adders = {"bos": w.add_bos_token_id, "eos": w.add_eos_token_id, "pad": w.add_pad_token_id,
              "unk": w.add_unk_token_id, "eot": w.add_eot_token_id, "eom": w.add_eom_token_id}
    for role, i in v.special.items():
        adders[role](i)
    w.add_add_bos_token(v.add_bos)
    w.add_add_eos_token(False)
    if v.add_space_prefix is not None:
        w.add_add_space_prefix(v.add_space_prefix)
    if v.chat_template:  # a runtime renders without enable_thinking: off unless asked, as bftcore renders
        w.add_chat_template(thinking_default(v.chat_template, thinking))


def _llama_quantize(src: Path, dest: Path, dtype: str) -> None:
    """K-quants through llama.cpp's own quantizer (the `gguf` package has none), atomically."""
    from bftcore.extras import require

    llama_cpp = require("llama_cpp", "Q4_K_M quantization (llama.cpp's quantizer)")

    ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[dtype]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    with atomic_file(dest) as tmp, quiet_stderr():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise BadInput(f"llama.cpp could not quantize {src.name} to {dtype} (code {rc})")


def gguf_tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF file holds (K-quants fall back per tensor)."""
    from gguf import GGMLQuantizationType

    counts: dict[str, int] = {}
    for kind, _ in gguf_header(path).tensors.values():
        name = GGMLQuantizationType(kind).name
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


# ---- reading a GGUF header ------------------------------------------------------------------------
@dataclass
class GGUFHeader:
    """A GGUF file's metadata without its tensors' data: scalar values, array lengths, and each
    tensor's (GGML type, shape) by name."""

    values: dict[str, Any]
    arrays: dict[str, int]
    tensors: dict[str, tuple[int, tuple[int, ...]]]


# GGUF value types: struct format of the fixed-size ones (8 = string, 9 = array)
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_header(path: str | Path) -> GGUFHeader:
    """The header of a GGUF file, or BadInput. Arrays (a vocabulary's tokens and merges) are
    skipped, not decoded: the gguf package's reader decodes every element through numpy and takes
    about a minute on a 128k-token vocabulary."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return _parse_header(m)
    except (OSError, ValueError, KeyError, struct.error) as e:  # UnicodeDecodeError is a ValueError
        raise BadInput(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e


def _parse_header(m: Any) -> GGUFHeader:
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, m, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        if pos > len(m):
            raise ValueError("a string runs past the end of the file")
        return bytes(m[pos - n:pos]).decode("utf-8")

    def skip_array(kind: int, count: int) -> None:
        nonlocal pos
        if kind in _GGUF_SCALARS:
            pos += count * struct.calcsize(_GGUF_SCALARS[kind])
        elif kind == 8:
            for _ in range(count):  # each: its length, then that many bytes
                n = take("<Q")
                pos += n
        else:
            raise ValueError(f"array of GGUF type {kind}")

    if bytes(m[:4]) != b"GGUF":
        raise ValueError("no GGUF magic")
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    if version < 2:
        raise ValueError(f"GGUF version {version}")
    values: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    for _ in range(n_kv):
        key, kind = string(), take("<I")
        if kind == 9:
            item, count = take("<I"), take("<Q")
            skip_array(item, count)
            arrays[key] = count
        else:
            values[key] = string() if kind == 8 else take(_GGUF_SCALARS[kind])
    tensors: dict[str, tuple[int, tuple[int, ...]]] = {}
    for _ in range(n_tensors):
        name, dims = string(), take("<I")
        shape = tuple(take("<Q") for _ in range(dims))
        tensors[name] = (take("<I"), shape)
        take("<Q")  # the data's offset
    return GGUFHeader(values, arrays, tensors)
