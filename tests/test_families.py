"""Tiny models of the real families: the family's tokenizer, config fields and special tokens,
checked against llama.cpp's own tokenizer test vectors and the families' known layouts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from bftcore.families import FAMILIES, TinySize, tiny_pair
from bftcore.models import check_same_tokenizer, load_tokenizer
from conftest import FAMILY_FILES, family_pair, run_cli, tree_bytes, vocab_dir, vocab_vectors

FAMILIES_TESTED = list(FAMILY_FILES)


def _vocab(family: str) -> str:
    return FAMILIES[family].vocab


def _weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_tokenizer_reproduces_llama_cpp_vectors(family: str) -> None:
    """tokenizer.json, as the `tokenizers` library runs it and as `load_tokenizer` loads it, gives
    every one of llama.cpp's vectors. transformers' own Llama 2 class rebuilds the normalizer and
    differs on texts that begin with whitespace (SentencePiece and llama.cpp agree with the
    vectors there): `load_tokenizer` reads tokenizer.json as written instead."""
    _, aligned = family_pair(family)
    vectors = vocab_vectors(_vocab(family))
    raw = Tokenizer.from_file(str(aligned / "tokenizer.json"))
    wrong = [t for t, ids in vectors if raw.encode(t, add_special_tokens=False).ids != ids]
    assert not wrong, (family, wrong[:3])
    ours = load_tokenizer(aligned)  # what every bftcore stage tokenizes with
    wrong = [t for t, ids in vectors if ours.encode(t, add_special_tokens=False) != ids]
    assert not wrong, (family, wrong[:3])
    if family == "llama-2":  # why bftcore reads tokenizer.json itself there
        hf = AutoTokenizer.from_pretrained(aligned)
        wrong = [t for t, ids in vectors if hf.encode(t, add_special_tokens=False) != ids]
        assert wrong and all(t[:1].isspace() for t in wrong), wrong


@pytest.mark.parametrize("family", FAMILIES_TESTED)
def test_config_special_tokens_and_template(family: str) -> None:
    base, aligned = family_pair(family)
    cfg = json.loads((aligned / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(aligned)
    tok, base_tok = AutoTokenizer.from_pretrained(aligned), AutoTokenizer.from_pretrained(base)
    weights = _weights(aligned)
    assert cfg["vocab_size"] == model.config.vocab_size >= len(tok)
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA, as every family here
    rope = model.config.rope_parameters or {}
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rendered = tok.apply_chat_template(chat, tokenize=False)
    if family.startswith("llama-3"):
        assert rope["rope_type"] == "llama3" and cfg["rope_scaling"]["factor"] == {"llama-3.1": 8.0, "llama-3.2": 32.0}[family]
        assert cfg["tie_word_embeddings"] is (family == "llama-3.2")
        assert ("lm_head.weight" in weights) is (family == "llama-3.1")
        assert tok.eos_token == "<|eot_id|>" and base_tok.eos_token == "<|end_of_text|>"
        assert cfg["eos_token_id"] == [128001, 128008, 128009] and tok.bos_token_id == 128000
        assert "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>" in rendered
    elif family.startswith("qwen"):
        assert tok.eos_token == "<|im_end|>" and base_tok.eos_token == "<|endoftext|>" and tok.bos_token is None
        assert "<|im_start|>assistant\n" in rendered
        biases = {k for k in weights if k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias"))}
        norms = {k for k in weights if k.endswith(("q_norm.weight", "k_norm.weight"))}
        if family == "qwen2.5":
            assert len(biases) == 3 * cfg["num_hidden_layers"] and not norms
        else:
            assert not biases and len(norms) == 2 * cfg["num_hidden_layers"]
            assert cfg["head_dim"] * cfg["num_attention_heads"] != cfg["hidden_size"]
            assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [151667, 151668]
    else:
        assert len(tok) == 32000 and tok.bos_token_id == 1 and tok.eos_token_id == 2
        assert json.loads((aligned / "tokenizer.json").read_text())["model"]["byte_fallback"]
        assert rendered == "<s>[INST] Hi [/INST] Hello. </s>"
    assert check_same_tokenizer(AutoTokenizer.from_pretrained(base), tok)
    base_weights = _weights(base)
    assert base_weights.keys() == weights.keys()
    assert all(not torch.equal(base_weights[k], weights[k]) for k in weights if weights[k].numel() > 1)


def test_a_pair_is_deterministic_and_its_seed_matters(tmp_path: Path) -> None:
    vocab = vocab_dir() / "ggml-vocab-llama-spm.gguf"
    size = TinySize(hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64)
    a = tiny_pair("llama-2", vocab, tmp_path / "a", seed=3, size=size)[1]
    b = tiny_pair("llama-2", vocab, tmp_path / "b", seed=3, size=size)[1]
    c = tiny_pair("llama-2", vocab, tmp_path / "c", seed=4, size=size)[1]
    assert tree_bytes(a) == tree_bytes(b)
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_cli_writes_a_pair_and_refuses_bad_input(tmp_path: Path) -> None:
    spm, qwen = vocab_dir() / "ggml-vocab-llama-spm.gguf", vocab_dir() / "ggml-vocab-qwen2.gguf"
    r = run_cli("models", "tiny", "llama-2", "--vocab", str(spm), "--out", str(tmp_path / "l2"),
                "--hidden", "32", "--layers", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["config"]["hidden_size"] == 32 and Path(out["aligned"], "model.safetensors").is_file()
    for args, why in ((["qwen3", "--vocab", str(spm)], "needs 'qwen2'"),
                      (["qwen3", "--vocab", str(qwen)], "--template"),
                      (["qwen3", "--vocab", str(tmp_path / "none.gguf")], "no such file"),
                      (["gemma", "--vocab", str(spm)], "gemma"),
                      (["llama-2", "--vocab", str(spm), "--template", str(tmp_path / "none.jinja")], "no such")):
        r = run_cli("models", "tiny", *args, "--out", str(tmp_path / "x"))
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and why in r.stderr, (args, r.stderr)


def test_writing_a_model_leaves_the_family_table_and_keeps_the_hubs_layout(tmp_path: Path) -> None:
    """transformers rewrites a config's nested settings in place: writing Llama 3.1 twice in one
    process gives the same bytes, FAMILIES is unchanged, and config.json keeps rope_theta beside
    rope_scaling as the hub's file does."""
    import copy

    from bftcore.families import write_tiny

    before = copy.deepcopy(FAMILIES["llama-3.1"].config)
    vocab = vocab_dir() / "ggml-vocab-llama-bpe.gguf"
    template = vocab_dir() / "templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja"
    size = TinySize(hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64)
    a = write_tiny("llama-3.1", vocab, tmp_path / "a", template=template, size=size)
    b = write_tiny("llama-3.1", vocab, tmp_path / "b", template=template, size=size)
    assert FAMILIES["llama-3.1"].config == before
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert "rope_theta" not in cfg["rope_scaling"] and cfg["rope_theta"] == 500000.0
    assert cfg["rope_scaling"] == before["rope_scaling"]
