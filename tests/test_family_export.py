"""The export stage on the real families: tiny models that carry each family's real config,
vocabulary and chat template (families.py), exported by bftcore and read back by llama.cpp, the
llama.cpp server and onnxruntime.

Each family is exported once per artifact (module-scoped, built on first use). Parity runs on a
copy of the aligned model with sharper attention (query/key scaled, `sharpened`): at random
initialisation attention is nearly uniform and positions barely matter, so RoPE (and Llama 3's RoPE
scaling) would change the logits by less than float16 noise. Sharpened, dropping the scaling
changes them ~100x more than F16 rounding does, which the scaling-off test shows.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bftcore import export as ex
from bftcore.backends import LlamaCppGenerator, llama_server, open_llama
from bftcore.chat import thinking_default
from bftcore.errors import BadInput
from conftest import family_pair, run_cli, vocab_dir, vocab_vectors

FAMILIES = ("llama-3.1", "llama-3.2", "qwen2.5", "qwen3", "llama-2")
VOCAB = {"llama-3.1": "llama-bpe", "llama-3.2": "llama-bpe", "qwen2.5": "qwen2", "qwen3": "qwen2", "llama-2": "llama-spm"}
# llama.cpp's architecture and the end-of-turn token a chat model of the family stops at
ARCH = {"llama-3.1": "llama", "llama-3.2": "llama", "qwen2.5": "qwen2", "qwen3": "qwen3", "llama-2": "llama"}
EOT = {"llama-3.1": "<|eot_id|>", "llama-3.2": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>",
       "llama-2": None}
LLAMA3 = ("llama-3.1", "llama-3.2")
# the GGUF types exported per family, and ONNX
KINDS = ("f16", "q8_0", "q4_k_m", "onnx")
# bounds on max |Δ logit| and argmax agreement per artifact, on the sharpened random models
# (logits spread ~2). Measured worst over the five families: F16 1.4e-3 / 99.6%, Q8_0 0.035 / 94.8%,
# Q4_K_M 0.28 / 71.6%, ONNX 1.1e-6 / 100%. 4-bit weights of 64-wide random rows are coarse (Q4_K_M
# falls back to Q5_0 per tensor) and random logits are near-tied, so its argmax flips often; a broken
# layout gives agreement near 0 even so.
BOUNDS = {"f16": (0.01, 0.99), "q8_0": (0.1, 0.9), "q4_k_m": (0.6, 0.6), "onnx": (1e-4, 0.9999)}
SHARPEN = 100.0  # query . key scaled by this: attention logits of a few units instead of ~0.03
TWO_TURNS = [{"role": "system", "content": "You answer briefly."},
             {"role": "user", "content": "How do I mend a fishing net?"},
             {"role": "assistant", "content": "Lay it flat and tie the broken meshes."},
             {"role": "user", "content": "And if the rope is frayed?"}]


def sharpened(src: Path, out: Path, hub_config: bool) -> Path:
    """A copy of `src` with query and key projections scaled by sqrt(SHARPEN) each (not Qwen3's:
    its q/k norms give attention logits of unit scale already). `hub_config` keeps the hub's
    config.json; otherwise the copy has the one transformers 5 writes (`rope_parameters`), as
    `bftcore complete` leaves it."""
    from bftcore.models import load_model

    model = load_model(src)
    scale = 1.0 if getattr(model.config, "model_type", "") == "qwen3" else SHARPEN ** 0.5
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
                p.mul_(scale)
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.suffix != ".safetensors" and (hub_config or f.name != "config.json"):
            shutil.copyfile(f, out / f.name)
    return out


def long_text() -> str:
    """~850 tokens: positions where Llama 3's long-wavelength frequencies, divided by the factor,
    rotate a clearly different angle (wavelength > 8192 at head_dim 16, theta 500000)."""
    return " ".join(ex.PROBE_TEXTS * 4)


class Artifacts:
    """Every family's exports under one temporary directory, each built on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._memo: dict[tuple[str, ...], Any] = {}

    def _once(self, key: tuple[str, ...], build: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def model(self, family: str) -> Path:
        """The sharpened aligned model; Llama 3.2 in transformers 5's config layout, the rest the hub's."""
        return self._once(("model", family), lambda: sharpened(
            family_pair(family)[1], self.root / f"{family}-src", hub_config=family != "llama-3.2"))

    def artifact(self, family: str, kind: str) -> Path:
        def build() -> Path:
            src = self.model(family)
            if kind == "onnx":
                return ex.export_onnx(src, self.root / f"{family}-onnx")
            if kind == "noscale":  # Llama 3 written without its RoPE scaling
                return ex.export_gguf(src, self.root / f"{family}-noscale.gguf", "f16", rope_scaling=False)
            return ex.export_gguf(src, self.root / f"{family}-{kind}.gguf", kind)

        return self._once(("artifact", family, kind), build)

    def parity(self, family: str) -> dict[str, ex.Parity]:
        """verify (PyTorch once) for every artifact of the family, by kind."""
        def build() -> dict[str, ex.Parity]:
            kinds = [*KINDS, "noscale"] if family == "llama-3.1" else list(KINDS)
            paths = {k: self.artifact(family, k) for k in kinds}
            rows = ex.verify_many(self.model(family), paths, self.texts(family),
                                  transformers_gguf=False)  # its Python vocabulary parse: minutes here
            return dict(zip(kinds, rows, strict=True))

        return self._once(("parity", family), build)

    def texts(self, family: str) -> list[str]:
        """Two probes raw, two in the chat template, and the long text."""
        def build() -> list[str]:
            probes = ex.verify_texts(self.model(family))
            return [*probes[:2], *probes[len(ex.PROBE_TEXTS):][:2], long_text()]

        return self._once(("texts", family), build)


@pytest.fixture(scope="module")
def arts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return Artifacts(tmp_path_factory.mktemp("family-export"))


def gguf_meta(path: Path) -> dict[str, Any]:
    """The GGUF's scalar metadata and its tensor names."""
    header = ex.gguf_header(path)
    return {**header.values, "tensors": list(header.tensors)}


@functools.cache
def _raw_tokenizer(model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def raw_ids(model_dir: Path, text: str) -> list[int]:
    """The model's tokenizer.json through the tokenizers library (no transformers class around it)."""
    return list(_raw_tokenizer(model_dir).encode(text, add_special_tokens=False).ids)


def token_id(model_dir: Path, text: str) -> int:
    i = _raw_tokenizer(model_dir).token_to_id(text)
    assert i is not None, text
    return int(i)


# ---- RoPE scaling (no export) ------------------------------------------------------------------
@pytest.mark.parametrize("family", LLAMA3)
def test_llama3_rope_factors_both_config_layouts(family: str) -> None:
    """rope_freqs from the hub's layout and from transformers 5's are the same, and are exactly
    the divisors that turn the default frequencies into transformers' own llama3 frequencies."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from bftcore.families import FAMILIES

    # a copy: transformers rewrites nested settings in place (rope_scaling would gain rope_theta)
    hub = {**copy.deepcopy(FAMILIES[family].config), "hidden_size": 64, "num_attention_heads": 4, "head_dim": 16}
    assert "rope_theta" not in hub["rope_scaling"]  # the hub's layout: theta beside the scaling
    config = AutoConfig.for_model(**{k: v for k, v in hub.items() if k != "architectures"})
    saved = config.to_dict()
    assert "rope_parameters" in saved and saved["rope_parameters"]["rope_type"] == "llama3"
    rope_hub, rope_new = ex.rope_config(hub), ex.rope_config(saved)
    assert (rope_hub.type, rope_hub.theta) == (rope_new.type, rope_new.theta) == ("llama3", 500000.0)
    factors = ex.llama3_freq_factors(rope_hub, 16)
    np.testing.assert_array_equal(factors, ex.llama3_freq_factors(rope_new, 16))
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    default = 500000.0 ** -(np.arange(0, 16, 2) / 16)
    np.testing.assert_allclose(default / factors, inv_freq.numpy(), rtol=1e-6)
    factor = hub["rope_scaling"]["factor"]
    assert factors.dtype == np.float32 and factors.shape == (8,)
    assert factors[0] == 1.0 and factors[-1] == factor and 1.0 < factors[4] < factor  # short, long, blended


def test_unsupported_configs_are_refused(tmp_path: Path) -> None:
    from bftcore.families import FAMILIES

    base = {**FAMILIES["llama-3.1"].config, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 8}
    for rope in ({"rope_type": "yarn", "factor": 4.0}, {"type": "linear", "factor": 2.0}, {"rope_type": "dynamic"}):
        with pytest.raises(BadInput, match=r"rope scaling '\w+' is not exported for llama \(supported: default, "
                                           r"llama3\)"):
            ex.check_source(_write_config(tmp_path / "m", {**base, "rope_scaling": rope}), "gguf")
    with pytest.raises(BadInput, match=r"'llama3' is not exported for qwen2 \(supported: default\)"):
        ex.check_source(_write_config(tmp_path / "q", {**FAMILIES["qwen2.5"].config, **{
            k: base[k] for k in ("hidden_size", "num_attention_heads", "vocab_size", "rope_scaling")}}), "gguf")
    incomplete = {**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    with pytest.raises(BadInput, match="llama3 rope scaling without a numeric 'low_freq_factor' field"):
        ex.check_source(_write_config(tmp_path / "i", incomplete), "onnx")
    windowed = {**FAMILIES["qwen3"].config, **{k: base[k] for k in ("hidden_size", "num_attention_heads",
                                                                     "vocab_size")}, "use_sliding_window": True}
    with pytest.raises(BadInput, match="qwen3 with sliding-window attention is not exported"):
        ex.check_source(_write_config(tmp_path / "w", windowed), "gguf")


@pytest.mark.parametrize("family", ("llama-3.1", "qwen2.5"))
def test_pre_tokenizer_layouts(family: str, tmp_path: Path) -> None:
    """The hub's layout (families.py writes it) is recognised; a Split that is not isolated, or
    ignore_merges other than llama.cpp's for that pre-tokenizer, is refused: llama.cpp would split
    some words differently."""
    from bftcore.export.gguf import _pre_tokenizer_name

    src = family_pair(family)[1]
    spec = json.loads((src / "tokenizer.json").read_text())
    assert _pre_tokenizer_name(spec["pre_tokenizer"]) == VOCAB[family]
    removed = json.loads(json.dumps(spec["pre_tokenizer"]))
    removed["pretokenizers"][0]["behavior"] = "Removed"
    assert _pre_tokenizer_name(removed) is None
    (tmp_path / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())
    spec["model"]["ignore_merges"] = not spec["model"]["ignore_merges"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(BadInput, match=f"ignore_merges differs from llama.cpp's '{VOCAB[family]}'"):
        ex.tokenizer_vocab(tmp_path, 160000)


def _write_config(root: Path, cfg: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg))
    return root


# ---- the vocabulary and its metadata ----------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_tokenizes_the_family_vectors(arts: Artifacts, family: str) -> None:
    """llama.cpp, reading the GGUF bftcore wrote, tokenizes every one of llama.cpp's own test
    vectors of the vocabulary as expected; the metadata names the family's special tokens."""
    path = arts.artifact(family, "f16")
    llm = open_llama(path, n_ctx=64)
    vectors = vocab_vectors(VOCAB[family])
    wrong = [t for t, ids in vectors if list(llm.tokenize(t.encode(), add_bos=False, special=False)) != ids]
    assert not wrong, f"{len(vectors) - len(wrong)}/{len(vectors)}; first wrong: {wrong[0]!r}"
    assert len(vectors) == 46
    meta = gguf_meta(path)
    tcfg = json.loads((arts.model(family) / "tokenizer_config.json").read_text())
    assert meta["general.architecture"] == ARCH[family]
    assert meta["tokenizer.ggml.model"] == ("llama" if family == "llama-2" else "gpt2")
    if family != "llama-2":
        assert meta["tokenizer.ggml.pre"] == VOCAB[family]
    assert meta["tokenizer.ggml.eos_token_id"] == token_id(arts.model(family), tcfg["eos_token"])  # <|eot_id|>/<|im_end|>/</s>
    # bos as tokenizer_config.json names it, else config.json's (Qwen names none): llama.cpp's own files agree
    config = json.loads((arts.model(family) / "config.json").read_text())
    assert meta["tokenizer.ggml.bos_token_id"] == config["bos_token_id"] == gguf_meta(
        vocab_dir() / f"ggml-vocab-{VOCAB[family]}.gguf")["tokenizer.ggml.bos_token_id"]
    # Qwen3's carries a default for its thinking switch (off, as bftcore renders); the others, as written
    assert meta["tokenizer.chat_template"] == thinking_default(tcfg["chat_template"], False)
    assert (meta["tokenizer.chat_template"] == tcfg["chat_template"]) == (family != "qwen3")
    assert meta["tokenizer.ggml.add_bos_token"] == (family in (*LLAMA3, "llama-2"))
    vocab = llm._model.vocab
    import llama_cpp

    if EOT[family] is None:
        assert "tokenizer.ggml.eot_token_id" not in meta
    else:
        eot = token_id(arts.model(family), EOT[family])
        assert meta["tokenizer.ggml.eot_token_id"] == eot
        assert llama_cpp.llama_vocab_eot(vocab) == eot and llama_cpp.llama_vocab_is_eog(vocab, eot)
    if family in LLAMA3:  # Llama 3.1 Instruct also ends a turn with <|eom_id|> after a tool call
        eom = token_id(arts.model(family), "<|eom_id|>")
        assert meta["tokenizer.ggml.eom_token_id"] == eom and llama_cpp.llama_vocab_is_eog(vocab, eom)


# ---- the chat template through the server -----------------------------------------------------------
def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return dict(json.loads(r.read()))


@pytest.mark.parametrize("family", FAMILIES)
def test_server_renders_two_turns_as_transformers(arts: Artifacts, family: str) -> None:
    """The llama.cpp server, given the GGUF alone, renders a two-turn chat (system, user,
    assistant, user) exactly as transformers' apply_chat_template does: the same number of prompt
    tokens and the same next-token log-probs as llama.cpp in-process on transformers' text."""
    import llama_cpp.llama_chat_format as chat_format

    from bftcore.models import load_tokenizer

    path, src = arts.artifact(family, "f16"), arts.model(family)
    # as bftcore renders: Qwen3 with thinking off (the GGUF's template defaults to it), others as ever
    want = load_tokenizer(src).apply_chat_template(TWO_TURNS, tokenize=False, add_generation_prompt=True,
                                                   enable_thinking=False)
    local = LlamaCppGenerator(path)
    # the renderer the server builds from the GGUF's metadata (llama_cpp.Llama.__init__), directly
    llm = local.llm
    bos, eos = llm.token_bos(), llm.token_eos()
    formatter = chat_format.Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"], eos_token=llm._model.token_get_text(eos),
        bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
    rendered = formatter(messages=TWO_TURNS)
    assert rendered.prompt == want
    ids = list(llm.tokenize(want.encode(), add_bos=not rendered.added_special, special=True))
    assert ids == raw_ids(src, want)  # llama.cpp splits the rendered chat as tokenizer.json does
    ref = local.next_logprobs([ids])[0]
    with llama_server(path, n_ctx=512) as url:
        out = _post(f"{url}/v1/chat/completions", {"messages": TWO_TURNS, "max_tokens": 1, "temperature": 0,
                                                    "logprobs": True, "top_logprobs": 10, "seed": 0})
    assert out["usage"]["prompt_tokens"] == len(ids)
    top = [t["logprob"] for t in out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]
    np.testing.assert_allclose(sorted(top, reverse=True), np.sort(ref)[::-1][:10], atol=1e-3)


# ---- logits -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_logit_parity_every_artifact(arts: Artifacts, family: str) -> None:
    """F16, Q8_0, Q4_K_M (llama.cpp) and ONNX (onnxruntime) against PyTorch, through `verify`, on
    texts up to ~850 tokens; llama.cpp splits every text as tokenizer.json does."""
    from transformers import AutoTokenizer

    from bftcore.models import load_tokenizer

    rows, src, texts = arts.parity(family), arts.model(family), arts.texts(family)
    assert rows["f16"].positions > 900
    # bftcore's tokenizer splits every text as tokenizer.json does; transformers 5's own LlamaTokenizer
    # (Llama 2) re-derives its normalizer and splits text after a special token or leading spaces
    # unlike SentencePiece, tokenizer.json and llama.cpp (why load_tokenizer reads the file as written)
    ours, auto = load_tokenizer(src), AutoTokenizer.from_pretrained(src, local_files_only=True)
    assert all(list(ours(t, add_special_tokens=False)["input_ids"]) == raw_ids(src, t) for t in texts)
    auto_differs = sum(list(auto(t, add_special_tokens=False)["input_ids"]) != raw_ids(src, t) for t in texts)
    assert (auto_differs > 0) == (family == "llama-2")
    llm = open_llama(arts.artifact(family, "f16"), n_ctx=64)
    for t in texts:
        assert list(llm.tokenize(t.encode(), add_bos=False, special=True)) == raw_ids(src, t), t[:40]
    report = {k: (f"{r.max_abs_logit:.2e}", f"{r.argmax_agreement:.4f}") for k, r in rows.items()}
    for kind in KINDS:
        r, (bound, agreement) = rows[kind], BOUNDS[kind]
        assert r.token_mismatches == 0, (kind, r)
        assert r.max_abs_logit < bound and r.argmax_agreement >= agreement, (kind, report)


def test_rope_scaling_off_fails_parity(arts: Artifacts) -> None:
    """Llama 3.1's F16 file without `rope_freqs` fails the F16 criterion (max |Δ logit|) on the
    same texts, by a margin: the scaling, not float16 noise, is what the parity test sees."""
    rows = arts.parity("llama-3.1")
    on, off = rows["f16"], rows["noscale"]
    bound, agreement = BOUNDS["f16"]
    assert on.max_abs_logit < bound and on.argmax_agreement >= agreement
    assert off.max_abs_logit > 10 * bound, (on, off)  # measured: 0.21, 175x F16's 1.2e-3
    with_freqs, without = gguf_meta(arts.artifact("llama-3.1", "f16")), gguf_meta(arts.artifact("llama-3.1", "noscale"))
    assert set(with_freqs["tensors"]) - set(without["tensors"]) == {"rope_freqs.weight"}


# ---- heads and tensors ------------------------------------------------------------------------------------
def flipped_head(src: Path, out: Path) -> Path:
    """`src` with its output head tied if it was untied, untied (a distinct random head) if tied."""
    from safetensors.torch import load_file, save_file

    out.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            shutil.copyfile(f, out / f.name)
    cfg = json.loads((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    tied = bool(cfg.get("tie_word_embeddings"))
    if tied:
        gen = torch.Generator().manual_seed(7)
        emb = state["model.embed_tokens.weight"]
        state["lm_head.weight"] = torch.randn(emb.shape, generator=gen) * float(emb.std())
    else:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": not tied}))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_and_untied_heads(arts: Artifacts, family: str, tmp_path: Path) -> None:
    """The family's own head and the other kind: a tied head writes no output.weight (llama.cpp
    reuses token_embd), an untied one does; F32 logits match PyTorch either way. Qwen3 has its
    q/k norms, the others none."""
    native = gguf_meta(arts.artifact(family, "f16"))
    cfg = json.loads((family_pair(family)[1] / "config.json").read_text())
    assert ("output.weight" in native["tensors"]) == (not cfg["tie_word_embeddings"])
    norms = {t for t in native["tensors"] if "_norm" in t and t.startswith("blk.0.")}
    assert norms == {"blk.0.attn_norm.weight", "blk.0.ffn_norm.weight",
                     *(("blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight") if family == "qwen3" else ())}
    assert ("blk.0.attn_q.bias" in native["tensors"]) == (family == "qwen2.5")
    other = flipped_head(family_pair(family)[1], tmp_path / "flipped")
    out = ex.export_gguf(other, tmp_path / "flipped.gguf", "f32")
    assert ("output.weight" in gguf_meta(out)["tensors"]) == bool(cfg["tie_word_embeddings"])
    (row,) = ex.verify(other, out, list(ex.PROBE_TEXTS[:2]), "f32", transformers_gguf=False)
    assert row.max_abs_logit < 1e-3 and row.argmax_agreement == 1.0, row


# ---- refusals --------------------------------------------------------------------------------------------
def test_unexported_architectures_are_refused_in_one_line(tmp_path: Path) -> None:
    """A tiny Gemma and a Mistral with sliding-window attention, built here with transformers: the
    CLI exits 2 with one stderr line naming the supported architectures, before writing anything."""
    from transformers import AutoModelForCausalLM, GemmaConfig, MistralConfig

    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
             "num_key_value_heads": 1, "vocab_size": 64}
    cases = {"gemma": (GemmaConfig(**small, head_dim=16), "onnx"),
             "mistral": (MistralConfig(**small, sliding_window=16), "gguf")}
    for name, (config, to) in cases.items():
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / name)
        out = tmp_path / (f"{name}.gguf" if to == "gguf" else f"{name}-onnx")
        r = run_cli("export", str(tmp_path / name), "--to", to, "--out", str(out))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"architecture '{name}' cannot be exported" in lines[0], r.stderr
        assert "(supported: llama, qwen2, qwen3)" in lines[0] and not out.exists()


# ---- the command line and the header reader --------------------------------------------------------------
def test_cli_exports_and_verifies_llama31(tmp_path: Path) -> None:
    """`bftcore export --verify` end to end on the tiny Llama 3.1 as built (the hub's config
    layout), on the built-in probes: exit 0; transformers' GGUF reader is left out (it ignores
    rope_freqs), llama.cpp's row passes the F16 default."""
    out = tmp_path / "m.gguf"
    r = run_cli("export", str(family_pair("llama-3.1")[1]), "--to", "gguf", "--dtype", "f16", "--out", str(out),
                "--verify", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["ok"] and [p["reader"] for p in got["parity"]] == ["llama.cpp"]
    assert got["parity"][0]["token_mismatches"] == 0 and got["parity"][0]["argmax_agreement"] >= 0.99
    # rope_freqs, norms: F32; the 15 matrices (7 per layer, embeddings, untied output): F16
    assert got["tensor_types"] == {"F16": 16, "F32": 6}


def test_gguf_header_reads_what_the_gguf_package_reads(arts: Artifacts, tmp_path: Path) -> None:
    """bftcore's header reader (it skips the vocabulary's arrays) against the gguf package's
    reader on Llama 2's file; a truncated file is BadInput."""
    from gguf import GGUFReader, GGUFValueType

    path = arts.artifact("llama-2", "f16")
    header, reader = ex.gguf_header(path), GGUFReader(str(path))
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        if f.types[0] == GGUFValueType.ARRAY:
            assert header.arrays[key] == len(f.data), key
        else:
            assert header.values[key] == f.contents(), key
    assert len(header.values) + len(header.arrays) == len(reader.fields) - 3  # less GGUF.version/counts
    assert header.tensors == {t.name: (int(t.tensor_type), tuple(int(d) for d in t.shape)) for t in reader.tensors}
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(BadInput, match="not a readable GGUF file"):
        ex.gguf_header(cut)
