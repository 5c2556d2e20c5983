"""Golden results: small, fast outputs of every cached stage, pinned in tests/golden.json.

A cache entry is keyed by its inputs and by the stage's number in `bftcore.cache.VERSIONS`, never
by source text. So a change that alters what a stage computes must bump that number, or caches
would serve stale results. tests/test_golden.py recomputes these figures: when they differ from
the pinned ones while the number is unchanged, the test fails and says which number to bump.
After a bump (or a deliberate change), regenerate the file:

    python tests/golden.py --update          (or: make golden)

Figures are exact where the computation is (digests of files written from deterministic data),
and rounded where it is floating point on a CPU (losses), compared with a tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bftcore.cache import VERSIONS, settings
from bftcore.files import file_digest, tree_digest
from bftcore.toy import ModelShape, ToySettings, toy_world
from bftcore.train import TrainConfig

GOLDEN = Path(__file__).with_name("golden.json")
# A tiny world: the generator's whole path (language, tokenizers, data, both models of both
# architectures) in seconds, trained long enough that its greedy choices are clear (generations
# are compared token for token; a barely trained model's near-ties could flip between machines).
TINY = ToySettings(
    shape=ModelShape(hidden=64, layers=1, intermediate=128, heads=2, kv_heads=1),
    base_train=TrainConfig(epochs=1.0, lr=3e-3), aligned_train=TrainConfig(epochs=0.5, lr=1e-3),
)
FLOAT_DIGITS = 4  # significant digits kept of a float figure
REL_TOL = 2e-3  # and the relative tolerance it is compared with


def _round(x: float) -> float:
    return float(f"{x:.{FLOAT_DIGITS}g}")


_built: dict[str, Any] = {}


def _tiny_world(root: Path) -> Any:
    """Built once per process (the stages share it; a later root reuses the first one's world)."""
    if "world" not in _built or not _built["world"].root.is_dir():
        _built["world"] = toy_world(0, root / "world", TINY).build(["llama", "qwen2"])
    return _built["world"]


def toy_world_figures(root: Path) -> dict[str, Any]:
    tw = _tiny_world(root)
    info = tw.info()
    out: dict[str, Any] = {
        "data": {p.name: file_digest(p)[:16] for p in sorted(tw.data_dir.iterdir())},
        "tokenizers": {style: tree_digest([tw.root / "tokenizers" / style])[:16] for style in ("gpt2", "qwen2")},
        "stats": info["stats"],
    }
    for arch in ("llama", "qwen2"):
        for role in ("base", "aligned"):
            card = json.loads((tw.model_dir(arch, role) / "bftcore_toy.json").read_text())["bftcore_toy"]
            out[f"{arch}/{role}/final_loss"] = _round(card["final_loss"])
    return out


def completion_figures(root: Path) -> dict[str, Any]:
    """Three steps of every method on the tiny world: the loss terms of each step."""
    from bftcore import complete as cp
    from bftcore.corpus import read_corpus
    from bftcore.generate import TorchGenerator
    from bftcore.judge import KeywordJudge
    from bftcore.models import load_model, load_tokenizer
    from bftcore.toy.language import REFUSALS

    tw = _tiny_world(root)
    base, aligned = tw.model_dir("llama", "base"), tw.model_dir("llama", "aligned")
    harmful, _ = read_corpus([tw.data_dir / "harmful_train.jsonl"])
    benign, _ = read_corpus([tw.data_dir / "benign_train.jsonl"])
    gen = TorchGenerator(load_model(aligned), load_tokenizer(aligned))
    data = cp.build_data(harmful[:24], benign[:24], gen, refuses=KeywordJudge(extra=REFUSALS).refuses,
                         templates=REFUSALS, max_new_tokens=8)
    profile = cp.RetentionProfile(tuple(cp.RetentionProfile.uniform().edges),
                                  tuple(0.1 * (i + 1) for i in range(10)), tuple(1 for _ in range(10)))
    out: dict[str, Any] = {"data": data.digest()}
    # every method at its defaults (ours: the rank penalty), ours with the linear penalty (the
    # earlier default) and with k drawn by position
    runs = {m: cp.CompleteConfig(method=m) for m in cp.METHODS}
    runs["bft-linear"] = cp.CompleteConfig(penalty="linear", lam=1.0)
    runs["bft-rank"] = cp.CompleteConfig(k_draw="position")
    for name, cfg in runs.items():
        cfg = replace(cfg, steps=3, batch_size=8, checkpoint_every=100)
        result = cp.complete(base, aligned, data, root / f"completed-{name}", cfg, profile=profile)
        out[name] = [{k: _round(v) for k, v in e.items() if k not in ("step", "lr")} for e in result.log]
    return out


def attack_figures(root: Path) -> dict[str, Any]:
    """A few rows of every attack on the tiny aligned model (exact judge), and its continuations."""
    from bftcore import attack as atk
    from bftcore.corpus import read_corpus
    from bftcore.generate import TorchGenerator
    from bftcore.judge import PhraseJudge
    from bftcore.models import load_model, load_tokenizer
    from bftcore.toy.check import completion_records

    tw = _tiny_world(root)
    aligned = tw.model_dir("llama", "aligned")
    gen = TorchGenerator(load_model(aligned), load_tokenizer(aligned))
    harmful = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])[0][:6]
    cfg = atk.AttackConfig(ks=(2, 5), max_new_tokens=12, samples=2)
    suite = atk.Suite(gen, PhraseJudge(tw.world.harmful_phrases), cfg, model="tiny", arch="llama")
    result = atk.AttackResult()
    for name in atk.ATTACKS:
        records = completion_records(tw.world)[:6] if name == "completion" else harmful
        result.extend(suite.run(name, records))
    return {"config": settings(cfg), "rows": [[r.attack, r.k, r.x, r.n] for r in result.rows],
            "continuations": [s.continuation for s in result.samples]}


def export_figures(root: Path) -> dict[str, Any]:
    """GGUF files of a seeded fresh model (no training: bit-identical weights everywhere)."""
    from bftcore import export as ex
    from bftcore.models import load_tokenizer, save_model
    from bftcore.toy.models import new_model, toy_config

    tw = toy_world(0, root / "world", TINY).build([])  # tokenizers and data only
    tok = load_tokenizer(tw.tokenizer_dir("llama"))
    model = new_model(toy_config("llama", vocab_size=len(tok), hidden=256, layers=1, intermediate=256,
                                 heads=4, kv_heads=2, max_positions=64, bos_id=tok.bos_token_id,
                                 eos_id=tok.eos_token_id, pad_id=tok.pad_token_id), seed=0)
    save_model(model, tw.tokenizer_dir("llama"), root / "fresh")
    return {dtype: file_digest(ex.export(root / "fresh", "gguf", root / f"fresh.{dtype}.gguf", dtype))[:16]
            for dtype in ("f32", "f16", "q8_0")}


def converted_figures(root: Path) -> dict[str, Any]:
    """A pickle-only model directory converted to safetensors (`--allow-pickle`)."""
    from bftcore import models
    from bftcore.toy.models import new_model, toy_config

    model = new_model(toy_config("llama", vocab_size=32, hidden=16, layers=1, intermediate=32, heads=2,
                                 kv_heads=1, max_positions=16, bos_id=1, eos_id=2, pad_id=0), seed=0)
    src = root / "pickled"
    model.save_pretrained(src, safe_serialization=False)
    models.ALLOW_PICKLE = True
    try:
        dest = models.resolve_model(src)
    finally:
        models.ALLOW_PICKLE = False
    return {"files": sorted(f.name for f in dest.iterdir()),
            "weights": file_digest(dest / "model.safetensors")[:16]}


def tiny_family_figures(root: Path) -> dict[str, Any]:
    """A tiny Llama 2 pair from the real SentencePiece vocabulary (every file it writes), and the
    settings files of a tiny Llama 3.1."""
    from bftcore.families import TinySize, tiny_pair, write_tiny
    from conftest import vocab_dir

    size = TinySize(hidden=16, layers=1, heads=4, kv_heads=2, intermediate=32)
    tiny_pair("llama-2", vocab_dir() / "ggml-vocab-llama-spm.gguf", root / "pair", size=size)
    figures = {f"{role}/{f.name}": file_digest(f)[:16] for role in ("base", "aligned")
               for f in sorted((root / "pair" / role).iterdir())}
    # and the settings files of a family with RoPE scaling, a list of eos ids and a template
    llama31 = write_tiny("llama-3.1", vocab_dir() / "ggml-vocab-llama-bpe.gguf", root / "llama31", role="aligned",
                         template=vocab_dir() / "templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja", size=size)
    figures |= {f"llama-3.1/aligned/{name}": file_digest(llama31 / name)[:16]
                for name in ("config.json", "generation_config.json", "tokenizer_config.json")}
    return figures


STAGES = {"toy-world": toy_world_figures, "completion": completion_figures, "attack-rows": attack_figures,
          "export": export_figures, "converted": converted_figures, "tiny-family": tiny_family_figures}


def compute(stage: str, root: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    figures = json.loads(json.dumps(STAGES[stage](root)))  # as the file holds them: tuples are lists
    return {"version": VERSIONS[stage], "figures": figures}


def differences(want: Any, got: Any, where: str = "") -> list[str]:
    """Where two figure trees differ: floats beyond REL_TOL, anything else when not equal."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: missing on one side" for k in sorted(set(want) ^ set(got))]
        for k in sorted(set(want) & set(got)):
            out += differences(want[k], got[k], f"{where}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (a, b) in enumerate(zip(want, got)) for d in differences(a, b, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        ok = abs(want - got) <= REL_TOL * max(abs(want), abs(got), 1e-6)
        return [] if ok else [f"{where}: {want} pinned, {got} now"]
    return [] if want == got else [f"{where}: {str(want)[:120]} pinned, {str(got)[:120]} now"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite tests/golden.json")
    parser.add_argument("--stage", action="append", choices=sorted(STAGES), help="only these stages")
    args = parser.parse_args()
    pinned = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    for stage in args.stage or sorted(STAGES):
        with tempfile.TemporaryDirectory() as tmp:
            now = compute(stage, Path(tmp))
        diff = differences(pinned.get(stage), now)
        print(f"{stage}: version {now['version']}, {'unchanged' if not diff else f'{len(diff)} differences'}")
        pinned[stage] = now
    if args.update:
        GOLDEN.write_text(json.dumps(pinned, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
