"""Tiny models of the real families: every file a real checkpoint has, at a CPU-sized width and depth.

`write_tiny("llama-3.1", vocab, out)` writes a model directory that differs from Llama-3.1-8B-Instruct
only in size and weights: the family's real config fields (rope scaling, GQA, tied or untied head,
biases, q/k norms, head_dim), its real vocabulary and special tokens, its chat template,
`generation_config.json`, and seeded random weights. The vocabulary comes from llama.cpp's
vocabulary-only GGUF of that family (`ggml-vocab-llama-bpe.gguf`, `ggml-vocab-qwen2.gguf`,
`ggml-vocab-llama-spm.gguf`, in llama.cpp's `models/`), from which `tokenizer.json` is built the way
the family's own hub file is laid out (Llama 3: byte-level BPE with `ignore_merges`; Qwen: NFC and
its split regex; Llama 2: SentencePiece-style BPE with byte fallback, merges ordered by the pieces'
scores).

A base/aligned pair shares every file but the weights and the end-of-turn token: the aligned
model is the base plus a small seeded delta, so the two are related as a real pair is.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bftcore.cache import cache_root, stage_key
from bftcore.errors import BadInput
from bftcore.files import atomic_dir, atomic_write_json, file_digest

# Llama 2's chat template (its tokenizer_config.json's); the others are read from a file: their
# templates are long, and a user passes the one of the checkpoint they will harden.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# The split regexes of the families' tokenizer.json files (llama.cpp's "llama-bpe" and "qwen2")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_QWEN_ADDED = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
               "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
               "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
_QWEN_USER = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
_QWEN3_USER = ["<tool_response>", "</tool_response>", "<think>", "</think>"]


def _qwen_tokens(user: list[str]) -> dict[int, tuple[str, bool]]:
    tokens = {151643 + i: (t, True) for i, t in enumerate(_QWEN_ADDED)}
    tokens.update({151643 + len(_QWEN_ADDED) + i: (t, False) for i, t in enumerate(user)})
    return tokens


def _llama31_tokens() -> dict[int, tuple[str, bool]]:
    """Llama 3.1's 256 special tokens: three renamed since Llama 3, the reserved ones renumbered."""
    named = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128004: "<|finetune_right_pad_id|>",
             128006: "<|start_header_id|>", 128007: "<|end_header_id|>", 128008: "<|eom_id|>",
             128009: "<|eot_id|>", 128010: "<|python_tag|>"}
    reserved = (i for i in range(128000, 128256) if i not in named)
    tokens = {i: (t, True) for i, t in named.items()}
    tokens.update({i: (f"<|reserved_special_token_{n}|>", True) for n, i in enumerate(reserved)})
    return tokens


@dataclass(frozen=True)
class Family:
    """What a real family's checkpoint has besides its size and weights."""

    name: str
    vocab: str  # llama.cpp's vocabulary name that the GGUF given must carry
    config: dict[str, Any]  # the real config.json's fields, less the sizes
    bos: str | None
    eos_base: str  # end of text (the base model's eos)
    eos_chat: str  # end of turn (the aligned model's eos)
    pad: str | None = None
    tokens: dict[int, tuple[str, bool]] = field(default_factory=dict)  # (content, special) at real ids
    template: str | None = None  # the embedded default chat template, where one is short
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    head_dim: int | None = None  # explicit head_dim (Qwen3: not hidden / heads)


_LLAMA3_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
                  "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02, "mlp_bias": False,
                  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "use_cache": True,
                  "max_position_embeddings": 131072, "bos_token_id": 128000}
_QWEN_CONFIG = {"attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-06,
                "use_cache": True, "use_sliding_window": False, "bos_token_id": 151643}

_LLAMA3_TOKENS: dict[str, Any] = {"bos": "<|begin_of_text|>", "eos_base": "<|end_of_text|>", "eos_chat": "<|eot_id|>",
                                  "tokens": _llama31_tokens()}
_LLAMA3_TOKENIZER = {"clean_up_tokenization_spaces": True, "model_max_length": 131072,
                     "tokenizer_class": "PreTrainedTokenizerFast"}
_QWEN_TOKENIZER = {"clean_up_tokenization_spaces": False, "errors": "replace", "model_max_length": 131072,
                   "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False,
                   "add_bos_token": False}

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("llama-3.1", "llama-bpe",
           {**_LLAMA3_CONFIG, "tie_word_embeddings": False,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
           **_LLAMA3_TOKENS,
           tokenizer_config=_LLAMA3_TOKENIZER),
    Family("llama-3.2", "llama-bpe",
           {**_LLAMA3_CONFIG, "tie_word_embeddings": True, "head_dim": 64,
            "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
           **_LLAMA3_TOKENS,
           tokenizer_config=_LLAMA3_TOKENIZER),
    Family("qwen2.5", "qwen2",
           {**_QWEN_CONFIG, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
            "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": 131072,
            "max_window_layers": 28, "tie_word_embeddings": False},
           bos=None, eos_base="<|endoftext|>", eos_chat="<|im_end|>", pad="<|endoftext|>",
           tokens=_qwen_tokens(_QWEN_USER),
           tokenizer_config=_QWEN_TOKENIZER),
    Family("qwen3", "qwen2",
           {**_QWEN_CONFIG, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
            "max_position_embeddings": 40960, "rope_theta": 1000000.0, "rope_scaling": None, "sliding_window": None,
            "max_window_layers": 36, "tie_word_embeddings": False},
           bos=None, eos_base="<|endoftext|>", eos_chat="<|im_end|>", pad="<|endoftext|>",
           tokens=_qwen_tokens(_QWEN_USER + _QWEN3_USER), head_dim=32,
           tokenizer_config=_QWEN_TOKENIZER),
    Family("llama-2", "llama-spm",
           {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "hidden_act": "silu",
            "initializer_range": 0.02, "max_position_embeddings": 4096, "pretraining_tp": 1, "rms_norm_eps": 1e-06,
            "rope_scaling": None, "rope_theta": 10000.0, "tie_word_embeddings": False, "use_cache": True,
            "bos_token_id": 1},
           bos="<s>", eos_base="</s>", eos_chat="</s>", template=LLAMA2_TEMPLATE,
           tokenizer_config={"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
                             "legacy": False, "model_max_length": 4096, "unk_token": "<unk>", "pad_token": None,
                             "tokenizer_class": "LlamaTokenizer"}),
)}


@dataclass(frozen=True)
class TinySize:
    """Width and depth: small enough for CPU tests; everything else is the family's."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 128


# ---- the vocabulary -----------------------------------------------------------------------------
@dataclass
class GGUFTokenizer:
    """A vocabulary-only GGUF's tokenizer fields."""

    model: str  # "gpt2" or "llama"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float]
    merges: list[str]


def read_vocab_gguf(path: str | Path) -> GGUFTokenizer:
    """The tokenizer of a (vocabulary-only) GGUF file, or BadInput."""
    import gguf

    path = Path(path)
    try:
        fields = gguf.GGUFReader(str(path)).fields
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: not a readable GGUF file ({e})") from e

    def strings(key: str) -> list[str]:
        f = fields.get(key)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data] if f is not None else []

    def numbers(key: str) -> list[Any]:
        f = fields.get(key)
        return [f.parts[i][0].item() for i in f.data] if f is not None else []

    if "tokenizer.ggml.tokens" not in fields:
        raise BadInput(f"{path}: a GGUF file without a tokenizer")
    model = bytes(fields["tokenizer.ggml.model"].parts[-1]).decode()
    pre = bytes(fields["tokenizer.ggml.pre"].parts[-1]).decode() if "tokenizer.ggml.pre" in fields else "default"
    return GGUFTokenizer(model, pre, strings("tokenizer.ggml.tokens"), numbers("tokenizer.ggml.token_type"),
                         numbers("tokenizer.ggml.scores"), strings("tokenizer.ggml.merges"))


def vocab_name(v: GGUFTokenizer) -> str:
    """llama.cpp's name of a vocabulary: its pre-tokenizer, or llama-spm for SentencePiece."""
    return "llama-spm" if v.model == "llama" else v.pre


def tokenizer_json(family: Family, v: GGUFTokenizer) -> dict[str, Any]:
    """The family's tokenizer.json, built from the GGUF's vocabulary."""
    tokens = list(v.tokens)
    for i, (text, _) in family.tokens.items():
        tokens[i] = text
    special_ids = {i for i, t in enumerate(v.types) if t == 3} | {i for i, (_, s) in family.tokens.items() if s}
    added_ids = sorted(special_ids | set(family.tokens))
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": i in special_ids} for i in added_ids]
    added_set = set(added_ids)
    if family.vocab == "llama-spm":
        return _spm_tokenizer(family, v, tokens, added)
    vocab = {t: i for i, t in enumerate(tokens) if i not in added_set and not t.startswith("[PAD")}
    split = LLAMA3_SPLIT if family.vocab == "llama-bpe" else QWEN2_SPLIT
    bos = family.bos
    post: dict[str, Any] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if bos is not None:  # Llama 3 puts BOS first
        bos_id = tokens.index(bos)
        post = {"type": "Sequence", "processors": [
            {**post, "trim_offsets": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}}]}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None if family.vocab == "llama-bpe" else {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": family.vocab == "llama-bpe", "vocab": vocab,
                  "merges": [m.split(" ", 1) for m in v.merges]},
    }


def _spm_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[list[str]]:
    """A SentencePiece vocabulary's BPE merges: every split of a piece into two pieces, ordered by
    the merged piece's score (highest first), then by the two ids (as SentencePiece ranks them)."""
    merges: list[tuple[float, int, int, str, str]] = []
    for piece, score in scores.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((-score, vocab[left], vocab[right], left, right))
    merges.sort()
    return [[m[3], m[4]] for m in merges]


def _spm_tokenizer(family: Family, v: GGUFTokenizer, tokens: list[str], added: list[dict[str, Any]]) -> dict[str, Any]:
    vocab = {t: i for i, t in enumerate(tokens)}
    normal = {t: v.scores[i] for i, t in enumerate(tokens) if v.types[i] == 1}
    bos = family.bos or "<s>"
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": _spm_merges(vocab, normal)},
    }


# ---- the model directory ------------------------------------------------------------------------
def family_config(family: Family, size: TinySize, vocab_size: int, role: str) -> dict[str, Any]:
    """config.json as the family's hub file lays it out, at `size`."""
    eos = _token_id(family, family.eos_chat if role == "aligned" else family.eos_base)
    cfg = {**copy.deepcopy(family.config), "hidden_size": size.hidden, "intermediate_size": size.intermediate,
           "num_hidden_layers": size.layers, "num_attention_heads": size.heads,
           "num_key_value_heads": size.kv_heads, "vocab_size": vocab_size, "torch_dtype": "float32"}
    if "head_dim" in cfg or family.head_dim:
        cfg["head_dim"] = family.head_dim or size.hidden // size.heads
    if role == "aligned" and family.vocab == "llama-bpe":  # Llama 3.x Instruct stops at any of three
        cfg["eos_token_id"] = [_token_id(family, "<|end_of_text|>"), _token_id(family, "<|eom_id|>"), eos]
    else:
        cfg["eos_token_id"] = eos
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = size.layers
    return dict(sorted(cfg.items()))


def _token_id(family: Family, text: str) -> int:
    for i, (t, _) in family.tokens.items():
        if t == text:
            return i
    return {"<unk>": 0, "<s>": 1, "</s>": 2}[text]  # Llama 2's, fixed by SentencePiece


def _tokenizer_config(family: Family, role: str, template: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {**family.tokenizer_config, "bos_token": family.bos,
                           "eos_token": _eos_text(family, role)}
    if family.pad:
        cfg["pad_token"] = family.pad
    if template:
        cfg["chat_template"] = template
    return dict(sorted(cfg.items()))


def _generation_config(config: dict[str, Any], role: str) -> dict[str, Any]:
    gen: dict[str, Any] = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    if role == "aligned":  # the chat models' own sampling defaults
        gen.update(do_sample=True, temperature=0.6 if "llama" in config["model_type"] else 0.7, top_p=0.9)
    return gen


def write_tiny(family: str, vocab_gguf: str | Path, out: str | Path, *, role: str = "base",
               template: str | Path | None = None, seed: int = 0, size: TinySize = TinySize(),
               delta: float = 0.05) -> Path:
    """Write a tiny model of `family` to `out` (atomically); `role` "aligned" is the base of the same
    seed plus a seeded delta of `delta` times each tensor's spread, with the chat model's eos."""
    fam, vocab, text = _inputs(family, vocab_gguf, template)
    if role not in ("base", "aligned"):
        raise BadInput(f"unknown role {role!r} (base or aligned)")
    _write(fam, vocab, text, Path(out), role, seed, size, delta)
    return Path(out)


def tiny_pair(family: str, vocab_gguf: str | Path, out: str | Path, *, template: str | Path | None = None,
              seed: int = 0, size: TinySize = TinySize(), delta: float = 0.05) -> tuple[Path, Path]:
    """`out`/base and `out`/aligned of one family (the same seed; aligned = base + delta)."""
    fam, vocab, text = _inputs(family, vocab_gguf, template)
    out = Path(out)
    for role in ("base", "aligned"):
        _write(fam, vocab, text, out / role, role, seed, size, delta)
    return out / "base", out / "aligned"


def cached_pair(family: str, vocab_gguf: str | Path, *, template: str | Path | None = None, seed: int = 0,
                size: TinySize = TinySize()) -> tuple[Path, Path]:
    """`tiny_pair` under the cache, keyed by the family, the vocabulary's and template's bytes, the
    seed and size: built once."""
    inputs = {"family": family, "vocab": file_digest(Path(vocab_gguf)),
              "template": file_digest(Path(template)) if template else None, "seed": seed, "size": asdict(size)}
    out = cache_root() / "families" / f"{family}-{stage_key('tiny-family', inputs)}"
    if not (out / "aligned" / "config.json").is_file():
        tiny_pair(family, vocab_gguf, out, template=template, seed=seed, size=size)
    return out / "base", out / "aligned"


def _inputs(family: str, vocab_gguf: str | Path, template: str | Path | None) -> tuple[Family, GGUFTokenizer, str]:
    if family not in FAMILIES:
        raise BadInput(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    fam = FAMILIES[family]
    vocab = read_vocab_gguf(vocab_gguf)
    if vocab_name(vocab) != fam.vocab:
        raise BadInput(f"{vocab_gguf}: a {vocab_name(vocab)!r} vocabulary; {family} needs {fam.vocab!r} "
                       f"(llama.cpp's ggml-vocab-{fam.vocab}.gguf)")
    if template is not None and not Path(template).is_file():
        raise BadInput(f"{template}: no such chat template file")
    text = Path(template).read_text() if template else fam.template
    if text is None:
        raise BadInput(f"{family}: pass --template, the chat template of the checkpoint (a .jinja file)")
    return fam, vocab, text


def _write(fam: Family, vocab: GGUFTokenizer, template: str, out: Path, role: str, seed: int, size: TinySize,
           delta: float) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab_size = max(len(vocab.tokens), max(fam.tokens, default=0) + 1)
    cfg = family_config(fam, size, vocab_size, role)
    # transformers rewrites nested settings in place (rope_scaling gains rope_theta): give it a copy,
    # so config.json keeps the hub's layout and FAMILIES stays as written
    config = AutoConfig.for_model(**copy.deepcopy({k: v for k, v in cfg.items()
                                                   if k not in ("architectures", "torch_dtype")}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        # norms (all ones) and biases (all zeros) as initialised would hide a misplaced tensor
        # from every parity check: give them a seeded spread too
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn(p.shape) * (0.1 if name.endswith("norm.weight") else 0.02))
        if role == "aligned":
            gen = torch.Generator().manual_seed(seed + 1)
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * delta * float(p.std()))
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        for name in ("config.json", "generation_config.json"):  # the hub's layout, not this version's
            (tmp / name).unlink(missing_ok=True)
        atomic_write_json(tmp / "config.json", cfg)
        atomic_write_json(tmp / "generation_config.json", _generation_config(cfg, role))
        atomic_write_json(tmp / "tokenizer.json", tokenizer_json(fam, vocab), indent=None)
        atomic_write_json(tmp / "tokenizer_config.json", _tokenizer_config(fam, role, template))
        atomic_write_json(tmp / "special_tokens_map.json", {
            k: v for k, v in (("bos_token", fam.bos), ("eos_token", _eos_text(fam, role)), ("pad_token", fam.pad))
            if v})
        atomic_write_json(tmp / "tiny.json", {"family": fam.name, "role": role, "seed": seed,
                                              "size": asdict(size), "delta": delta})


def _eos_text(family: Family, role: str) -> str:
    return family.eos_chat if role == "aligned" else family.eos_base
