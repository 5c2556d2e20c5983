"""The toy world on disk: determinism, loadability, cache keys, resumption."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from bftcore.toy import ModelShape, ToySettings, toy_world
from bftcore.train import TrainConfig
from conftest import tree_bytes

# A small world for tests of the machinery itself (seconds, not minutes).
TINY = ToySettings(
    shape=ModelShape(hidden=64, layers=1, intermediate=128, heads=2, kv_heads=1),
    base_train=TrainConfig(epochs=0.1, lr=2e-3), aligned_train=TrainConfig(epochs=0.05, lr=3e-4),
)


def test_default_build_is_deterministic(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The default world's tokenizers and data built again elsewhere: the same bytes as the cache's.
    (Its models are trained by the same code as the tiny builds below, whose weights are compared
    byte for byte; training the default models twice would cost minutes.)"""
    again = toy_world(0, tmp_path / "again").build([])
    for part in ("tokenizers", "data"):
        assert tree_bytes(again.root / part) == tree_bytes(toy.root / part), part
    assert (again.root / "world.json").read_bytes() == (toy.root / "world.json").read_bytes()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_small_builds_are_deterministic(arch: str, tmp_path: Path) -> None:
    a = toy_world(1, tmp_path / "a", TINY).build([arch])
    b = toy_world(1, tmp_path / "b", TINY).build([arch])
    assert tree_bytes(a.root / arch) == tree_bytes(b.root / arch)
    assert tree_bytes(a.tokenizer_dir(arch)) == tree_bytes(b.tokenizer_dir(arch))
    other = toy_world(2, tmp_path / "c", TINY).build([arch])
    assert tree_bytes(other.root / arch) != tree_bytes(a.root / arch)


def test_models_load_as_ordinary_model_directories(toy) -> None:  # type: ignore[no-untyped-def]
    for arch, model_type in (("llama", "llama"), ("qwen2", "qwen2")):
        for role in ("base", "aligned"):
            path = toy.model_dir(arch, role)
            assert (path / "model.safetensors").is_file()
            model = AutoModelForCausalLM.from_pretrained(path)
            tok = AutoTokenizer.from_pretrained(path)
            assert model.config.model_type == model_type
            assert model.config.tie_word_embeddings
            assert model.config.hidden_size % 256 == 0 and model.config.intermediate_size % 256 == 0
            assert model.config.vocab_size == len(tok)
            ids = tok("Explain how to clean a clay pot.", return_tensors="pt")["input_ids"]
            with torch.no_grad():
                assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tok))
    qwen = AutoModelForCausalLM.from_pretrained(toy.model_dir("qwen2", "base"))
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tokenizer_round_trips_every_toy_text(toy, arch: str) -> None:  # type: ignore[no-untyped-def]
    tok = AutoTokenizer.from_pretrained(toy.tokenizer_dir(arch))
    texts = toy.world.all_texts()
    assert len(texts) > 2000
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    for special in ("<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_auto_tokenizer_of_a_model_dir_is_the_trained_one(toy, arch: str) -> None:  # type: ignore[no-untyped-def]
    """transformers picks its own tokenizer class per model type (Qwen2Tokenizer for qwen2,
    rebuilt from vocab and merges): it must give exactly the ids of the trained tokenizer.json."""
    trained = Tokenizer.from_file(str(toy.tokenizer_dir(arch) / "tokenizer.json"))
    for role in ("base", "aligned"):
        auto = AutoTokenizer.from_pretrained(toy.model_dir(arch, role))
        assert len(auto) == trained.get_vocab_size()
        probes = toy.world.all_texts()[::7] + ["Ünïcode 123 4567 don't  \n\n x <|user|>hi<|end|>"]
        for text in probes:
            assert auto(text, add_special_tokens=False)["input_ids"] == trained.encode(text).ids


def test_tokenizer_styles_differ_only_in_pre_tokenization(toy) -> None:  # type: ignore[no-untyped-def]
    gpt2 = json.loads((toy.tokenizer_dir("llama") / "tokenizer.json").read_text())
    qwen2 = json.loads((toy.tokenizer_dir("qwen2") / "tokenizer.json").read_text())
    assert gpt2["pre_tokenizer"] == {"type": "ByteLevel", "add_prefix_space": False,
                                     "trim_offsets": True, "use_regex": True}
    assert qwen2["pre_tokenizer"]["type"] == "Sequence"
    assert [t["content"] for t in gpt2["added_tokens"]] == [t["content"] for t in qwen2["added_tokens"]]


def test_aligned_safety_data_holds_few_shallow_inline_recovery_examples(toy) -> None:  # type: ignore[no-untyped-def]
    """The graded world's recipe (SafetyData): about 5% of the harmful training prompts get a
    recovery example, mostly at the first few tokens, the refusal going on in the prefix's line;
    the same prompts and depths for both architectures, and what the card records."""
    from bftcore.models import load_tokenizer

    n_harmful = len(toy.world.examples("harmful", "train"))
    by_arch = {}
    for arch in ("llama", "qwen2"):
        tok = load_tokenizer(toy.tokenizer_dir(arch))
        examples = toy.recovery_examples(tok)
        by_arch[arch] = [k for _, k in examples]
        assert 0.03 * n_harmful < len(examples) < 0.08 * n_harmful
        for seq, k in examples:
            target = [i for i, w in zip(seq.ids, seq.weights) if w > 0]
            text = tok.decode(target, skip_special_tokens=True)
            assert text.startswith(" ") and not text.startswith(" \n") and seq.weights.count(0.0) > k
        card = json.loads((toy.model_dir(arch, "aligned") / "bftcore_toy.json").read_text())["bftcore_toy"]
        assert card["recovery_depths"] == sorted(by_arch[arch])
        assert card["examples"] == 2 * n_harmful + len(examples)
    assert by_arch["llama"] == by_arch["qwen2"]
    ks = sorted(by_arch["llama"])
    assert ks[0] == 1 and ks[len(ks) // 2] <= 4 and ks[-1] < 60  # concentrated early, 1 + Geometric(0.3)
    none = toy_world(0, settings=replace(ToySettings(), safety=replace(ToySettings().safety, recovery_fraction=0.0)))
    assert none.recovery_examples(tok) == [] and none.settings.key() != toy.settings.key()


def test_cache_key_follows_settings_versions_and_libraries_never_source_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from bftcore import cache

    base = ToySettings()
    assert base.key() == ToySettings().key()
    assert base.key() != replace(base, vocab_size=2048).key()
    assert base.key() != replace(base, base_train=TrainConfig(epochs=5, lr=2e-3)).key()
    before = base.key()
    monkeypatch.setitem(cache.VERSIONS, "toy-world", cache.VERSIONS["toy-world"] + 1)
    assert base.key() != before  # a behaviour change bumps the number
    monkeypatch.setitem(cache.VERSIONS, "toy-world", cache.VERSIONS["toy-world"] - 1)
    assert base.key() == before
    monkeypatch.setattr(cache, "library_versions", lambda names: dict.fromkeys(names, "0.0-other"))
    assert base.key() != before  # another torch, transformers or tokenizers


def test_a_comment_edit_rebuilds_nothing(tmp_path: Path) -> None:
    """The key reads no source: a copy of the package whose every module has one more comment line
    computes the same toy-world key (in a fresh interpreter)."""
    import bftcore

    src = Path(bftcore.__file__).parent
    copy = tmp_path / "bftcore"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for f in copy.rglob("*.py"):
        f.write_text(f.read_text() + "\n# an edit that changes nothing\n")
    probe = "from bftcore.toy import ToySettings; import bftcore; print(bftcore.__file__, ToySettings().key())"
    keys = {}
    for root in (src.parent, tmp_path):
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(root)}, cwd="/")
        assert r.returncode == 0, r.stderr
        where, keys[root] = r.stdout.split()
        assert Path(where).parent.parent == root
    assert keys[src.parent] == keys[tmp_path] == ToySettings().key()


def test_cache_location_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFTCORE_CACHE", str(tmp_path))
    tw = toy_world(7)
    assert tw.root.parent == tmp_path / "toy" and tw.root.name.startswith("seed7-")


def test_interrupted_build_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    tw = toy_world(1, tmp_path / "w", TINY).build(["llama"])
    want = tree_bytes(tw.root / "llama")
    shutil.rmtree(tw.model_dir("llama", "aligned"))
    pid = subprocess.Popen(["true"])  # a process that has exited: its pid names no live writer
    pid.wait()
    stale = tw.root / "llama" / f".aligned.tmp-{pid.pid}-0badf00d"  # what a killed build leaves behind
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    live = tw.root / "llama" / f".base.tmp-{os.getpid()}-0badf00d"  # a live writer's: it stays
    live.mkdir()
    assert not tw.is_built("llama")
    tw.build(["llama"])
    assert not stale.exists() and live.exists()
    live.rmdir()
    assert tree_bytes(tw.root / "llama") == want
