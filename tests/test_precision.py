"""--dtype: scoring, completion and attacks in bfloat16 on the CPU, against float32.

Scoring statistics are float32 whatever type the models run in; training keeps float32 weights
and AdamW state and autocasts the forward; generation loads the model in the type asked for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bftcore import complete as cp
from bftcore.attack import perplexity
from bftcore.cache import settings
from bftcore.cli import main
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.generate import TorchGenerator
from bftcore.judge import KeywordJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.precision import resolve_dtype
from bftcore.score import ScoreConfig, shard_stats
from bftcore.shards import COLUMNS, read_shard_table
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from conftest import family_pair, run_cli

ARCH = "llama"


def _lines(src: Path, dest: Path, n: int) -> Path:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return dest


@pytest.fixture(scope="module")
def files(toy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("precision")
    return {"harmful": _lines(toy.data_dir / "harmful_train.jsonl", root / "harmful.jsonl", 8),
            "benign": _lines(toy.data_dir / "benign_train.jsonl", root / "benign.jsonl", 8),
            "heldout": _lines(toy.data_dir / "harmful_heldout.jsonl", root / "heldout.jsonl", 6)}


def test_auto_is_float32_on_a_cpu_and_names_are_checked() -> None:
    assert resolve_dtype("auto", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"
    with pytest.raises(BadInput, match="int8"):
        resolve_dtype("int8", "cpu")


def test_float32_runs_keep_the_keys_they_had_before_dtype_existed() -> None:
    """A completion's key (a cache directory's name, a checkpoint's key) leaves dtype out at float32
    and auto, thinking out when off; bf16 and thinking enter it. The pin is the demo's bft run as
    keyed before either setting existed (then the linear penalty at lam 1 was the default)."""
    demo_bft = cp.CompleteConfig(steps=150, batch_size=32, penalty="linear", lam=1.0)
    assert demo_bft.key() == replace(demo_bft, dtype="float32").key() == "9ad305e9a993f620"
    assert len({demo_bft.key(), replace(demo_bft, dtype="bfloat16").key(), replace(demo_bft, thinking=True).key()}) == 3
    assert set(settings(ScoreConfig())) == set(asdict(ScoreConfig())) - {"dtype", "thinking"}


def test_statistics_of_bf16_logits_are_computed_in_float32() -> None:
    g = torch.Generator().manual_seed(0)
    lb, la = ((4 * torch.randn(16, 500, generator=g)).bfloat16() for _ in range(2))
    targets = torch.randint(0, 500, (16,), generator=g)
    got = shard_stats(lb, la, targets, 8, 0.0)
    assert all(v.dtype == torch.float32 for k, v in got.items() if k != "topk_token")
    lpb, lpa = torch.log_softmax(lb.double(), -1), torch.log_softmax(la.double(), -1)  # float64 reference
    kl = (lpa.exp() * (lpa - lpb)).sum(-1)
    assert torch.allclose(got["kl"].double(), kl, atol=1e-4)
    assert torch.allclose(got["lp_aligned"].double(), lpa.gather(-1, targets[:, None]).squeeze(-1), atol=1e-5)


def test_scoring_in_bf16_agrees_with_float32_to_bf16_precision(toy, files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tables = {}
    for dtype, extra in (("float32", ()), ("bfloat16", ("--thinking",))):
        r = run_cli("score", str(files["heldout"]), "--base", str(toy.model_dir(ARCH, "base")), "--aligned",
                    str(toy.model_dir(ARCH, "aligned")), "--out", str(tmp_path / dtype), "--device", "cpu",
                    "--dtype", dtype, *extra)
        assert r.returncode == 0, r.stderr
        manifest = json.loads((tmp_path / dtype / "manifest.json").read_text())
        assert manifest["dtype"] == dtype and manifest["thinking"] is bool(extra)  # recorded as run
        tables[dtype] = read_shard_table(tmp_path / dtype / "shard-00000.arrow", COLUMNS)
    a, b = tables["float32"], tables["bfloat16"]
    assert a.num_rows > 100 and a.column("token").equals(b.column("token"))
    for name in ("lp_base", "lp_aligned", "kl", "retain"):
        x, y = a.column(name).to_numpy(), b.column(name).to_numpy()
        assert not np.array_equal(x, y), name  # the models ran in another type
        # bf16 keeps 8 significant bits through every layer: log-probs move by up to a few percent
        # of their size, and a large KL sums such errors; on average the two agree far closer
        # (1% of the mean magnitude, and 0.01 absolute for figures near 0)
        d = np.abs(x - y)
        assert d.mean() < 0.01 + 0.01 * np.abs(x).mean(), (name, d.mean(), np.abs(x).mean())
        assert bool((d <= 0.25 + 0.05 * np.abs(x)).all()), (name, d.max())
    # M_t sums over a thresholded set: a near tie flips a token in or out, so compare it in bulk
    m = np.abs(a.column("bf_mass").to_numpy() - b.column("bf_mass").to_numpy())
    assert m.mean() < 0.05 and (m > 0.05).mean() < 0.05


@pytest.fixture(scope="module")
def data(toy, files) -> cp.CompletionData:  # type: ignore[no-untyped-def]
    aligned = toy.model_dir(ARCH, "aligned")
    gen = TorchGenerator(load_model(aligned), load_tokenizer(aligned))
    return cp.build_data(read_corpus([files["harmful"]])[0], read_corpus([files["benign"]])[0], gen,
                         refuses=KeywordJudge(extra=REFUSALS + RECOVERY_REFUSALS).refuses, templates=REFUSALS,
                         max_new_tokens=16)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_bf16_training_steps_float32_weights_and_optimizer_state(toy, data, tmp_path: Path, lora: bool) -> None:  # type: ignore[no-untyped-def]
    """One step, then the checkpoint: what trains (all weights, or the adapter) and AdamW's moments
    are float32 in both runs; the bf16 run's loss is float32's to bf16 precision, not bit for bit.
    (sft: the trainee alone decides its loss; the CLI test below runs a frozen reference in bf16.)"""
    loss = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        cfg = cp.CompleteConfig(method="sft", steps=3, batch_size=8, checkpoint_every=1, lr=1e-2,
                                lora=lora, dtype=dtype)
        cp.complete(None, toy.model_dir(ARCH, "aligned"), data, out, cfg, device="cpu", stop_after=1)
        ck = torch.load(cp.work_dir(out) / "checkpoint.pt", weights_only=True)
        assert ck["model"] and all(v.dtype == torch.float32 for v in ck["model"].values())
        assert all(("lora_" in n) is lora for n in ck["model"])
        moments = [v for s in ck["optimizer"]["state"].values() for k, v in s.items() if k.startswith("exp_avg")]
        assert len(moments) == 2 * len(ck["model"]) and all(m.dtype == torch.float32 for m in moments)
        loss[dtype] = ck["log"][0]["loss"]
    assert loss["bfloat16"] != loss["float32"] and loss["bfloat16"] == pytest.approx(loss["float32"], rel=0.02)


def test_a_lora_trainee_keeps_its_frozen_weights_in_the_compute_type(toy) -> None:  # type: ignore[no-untyped-def]
    from bftcore.complete.scaling import trainee_dtype, with_lora

    cfg = cp.CompleteConfig(lora=True, dtype="bfloat16")
    model = with_lora(load_model(toy.model_dir(ARCH, "aligned"), dtype=trainee_dtype(cfg)), cfg)
    types = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert types == {(True, torch.float32), (False, torch.bfloat16)}
    assert trainee_dtype(cp.CompleteConfig(dtype="bfloat16")) == torch.float32  # full weights: the master copy


def test_bf16_completion_from_the_cli_writes_float32_weights(toy, files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """qi-constrained: the trainee autocast to bf16 beside its frozen reference loaded in bf16."""
    out = tmp_path / "m"
    r = run_cli("complete", "--method", "qi-constrained", "--aligned", str(toy.model_dir(ARCH, "aligned")),
                "--data", str(files["harmful"]), "--benign", str(files["benign"]), "--out", str(out),
                "--steps", "3", "--batch-size", "8", "--device", "cpu", "--dtype", "bfloat16", "--thinking")
    assert r.returncode == 0, r.stderr
    card = json.loads((out / cp.CARD).read_text())
    assert card["config"]["dtype"] == "bfloat16" and card["config"]["thinking"] is True and len(card["log"]) == 3
    weights = load_file(str(out / "model.safetensors"))
    assert weights and all(v.dtype == torch.float32 for v in weights.values())


def test_attack_in_bf16_with_thinking_from_the_cli(files, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`attack --dtype bfloat16 --thinking` on a tiny Qwen3: the perplexity beside the rows is the
    one of the model in bf16 on prompts rendered with thinking on, not float32's nor thinking off's
    (the prompts condition the model differently)."""
    aligned = family_pair("qwen3")[1]
    r = run_cli("attack", str(aligned), "--data", str(files["heldout"]), "--attack", "direct,prefill", "--k", "2",
                "--limit", "2", "--max-new-tokens", "2", "--benign", str(files["heldout"]), "--device", "cpu",
                "--dtype", "bfloat16", "--thinking", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [row["n"] for row in out["rows"]] == [2, 2]
    got = next(m["value"] for m in out["measures"] if m["metric"] == "perplexity")
    tok = load_tokenizer(aligned)

    def measured(dtype: torch.dtype, thinking: bool) -> float:
        gen = TorchGenerator(load_model(aligned, dtype=dtype), tok)
        return float(perplexity(gen, read_corpus([files["heldout"]])[0], thinking=thinking)["value"])

    want = measured(torch.bfloat16, True)
    assert got == pytest.approx(want, rel=1e-7)
    for other in (measured(torch.float32, True), measured(torch.bfloat16, False)):
        assert abs(other - want) > 1e-5 * want and other == pytest.approx(want, rel=0.01)


BAD = [
    (["score", "{heldout}", "--base", "{base}", "--aligned", "{aligned}", "--out", "{out}", "--dtype", "int8"],
     "'int8' is not one of"),
    (["complete", "--method", "sft", "--aligned", "{aligned}", "--data", "{harmful}", "--benign", "{benign}",
      "--out", "{out}", "--dtype", "int8"], "'int8' is not one of"),
    (["attack", "{aligned}", "--data", "{heldout}", "--dtype", "int8"], "'int8' is not one of"),
    (["complete", "--method", "sft", "--aligned", "{aligned}", "--data", "{harmful}", "--benign", "{benign}",
      "--out", "{out}", "--dtype", "float16"], "float16 is for inference"),
    (["attack", "{out}.gguf", "--data", "{heldout}", "--dtype", "bfloat16"], "--dtype applies to the torch backend"),
]


@pytest.mark.parametrize("args,why", BAD, ids=["score", "complete", "attack", "complete-float16", "attack-gguf"])
def test_bad_dtype_exits_2_with_one_line(toy, files, tmp_path: Path, capsys: Any, args: list[str], why: str) -> None:  # type: ignore[no-untyped-def]
    paths = {**{k: str(v) for k, v in files.items()}, "out": str(tmp_path / "out"),
             "base": str(toy.model_dir(ARCH, "base")), "aligned": str(toy.model_dir(ARCH, "aligned"))}
    with pytest.raises(SystemExit) as exit_:
        main([a.format(**paths) for a in args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and why in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("bftcore: error: ")
    assert not (tmp_path / "out").exists()


def test_later_settings_stay_out_of_keys_only_at_their_defaults() -> None:
    """Every setting listed as later (cache.LATER_SETTINGS) defaults, in each config that has it,
    to a value that leaves it out of the keys; any other value enters them."""
    from dataclasses import fields

    from bftcore.attack import AttackConfig
    from bftcore.cache import LATER_SETTINGS
    from bftcore.toy import ToySettings

    seen = set()
    for cfg in (cp.CompleteConfig(), AttackConfig(), ScoreConfig(), ToySettings()):
        for f in fields(cfg):
            if f.name in LATER_SETTINGS:
                seen.add(f.name)
                assert getattr(cfg, f.name) in LATER_SETTINGS[f.name], (type(cfg).__name__, f.name)
                assert f.name not in settings(cfg)
    assert seen == set(LATER_SETTINGS)
    assert "deep_ks" in settings(AttackConfig(deep_ks=(32,))) and "presto_lambda" in settings(cp.CompleteConfig(presto_lambda=2.0))
    assert "lookalike" in settings(ToySettings(lookalike=True))
