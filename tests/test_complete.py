"""Targeted completion training: data, examples, the loop (exact resume, DDP), the CLI, baselines."""

from __future__ import annotations

import collections
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bftcore import complete as cp
from bftcore.backends import open_target
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.generate import Contrast, Decoding, TorchGenerator, contrast_logprobs
from bftcore.index import Index
from bftcore.judge import KeywordJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.stats import newcombe_difference
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from bftcore.toy.models import new_model, toy_config
from conftest import run_cli

ARCH = "llama"


@pytest.fixture(scope="module")
def small(toy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    """A small harmful/benign training set from the toy world's training split, and an index of
    its harmful responses."""
    root = tmp_path_factory.mktemp("complete")
    harmful = (toy.data_dir / "harmful_train.jsonl").read_text().splitlines()[:48]
    benign = (toy.data_dir / "benign_train.jsonl").read_text().splitlines()[:48]
    (root / "harmful.jsonl").write_text("\n".join(harmful) + "\n")
    (root / "benign.jsonl").write_text("\n".join(benign) + "\n")
    r = run_cli("index", str(root / "harmful.jsonl"), "--base", str(toy.model_dir(ARCH, "base")),
                "--aligned", str(toy.model_dir(ARCH, "aligned")), "--out", str(root / "h.bfti"),
                "--device", "cpu")
    assert r.returncode == 0, r.stderr
    return {"root": root, "harmful": root / "harmful.jsonl", "benign": root / "benign.jsonl",
            "index": root / "h.bfti"}


def _data(toy, small, refuses=None) -> cp.CompletionData:  # type: ignore[no-untyped-def]
    harmful, _ = read_corpus([small["harmful"]])
    benign, _ = read_corpus([small["benign"]])
    gen = TorchGenerator(load_model(toy.model_dir(ARCH, "aligned")), load_tokenizer(toy.tokenizer_dir(ARCH)))
    judge = KeywordJudge(extra=REFUSALS + RECOVERY_REFUSALS)
    return cp.build_data(harmful, benign, gen, refuses=refuses or judge.refuses, templates=REFUSALS)


def test_data_builder_self_distils_refusals_and_falls_back_to_templates(toy, small) -> None:  # type: ignore[no-untyped-def]
    data = _data(toy, small)
    tok = load_tokenizer(toy.tokenizer_dir(ARCH))
    assert len(data.harmful) == 48 and len(data.benign) == 48
    # the aligned toy model refuses every clean harmful prompt: s(x) is its own refusal
    assert all(h.refusal_source == "self" for h in data.harmful)
    assert all(tok.decode(h.refusal, skip_special_tokens=True) in REFUSALS for h in data.harmful)
    assert all(h.refusal[-1] == tok.eos_token_id and h.response[-1] != tok.eos_token_id for h in data.harmful)
    # a judge that calls nothing a refusal: every s(x) is a template refusal
    templated = _data(toy, small, refuses=lambda text: False)
    assert all(h.refusal_source == "template" for h in templated.harmful)
    assert data.digest() != templated.digest() and data.summary()["self_refusals"] == 48


def test_retention_profile_draws_k_in_proportion_to_rbar() -> None:
    profile = cp.RetentionProfile((1, 2, 3, 5, 9), (0.0, 1.0, 0.5, 0.0, 1.0), (10, 10, 10, 10, 10))
    rng = random.Random(0)
    ks = [profile.draw_k(rng, 12) for _ in range(20000)]
    assert min(ks) >= 2 and max(ks) <= 12
    share = {b: sum(1 for k in ks if lo <= k <= hi) / len(ks)
             for b, (lo, hi) in enumerate([(1, 1), (2, 2), (3, 4), (5, 8), (9, 12)])}
    assert share[0] == 0 and share[3] == 0  # R̄ = 0: the aligned model already learned there
    for b, want in ((1, 0.4), (2, 0.2), (4, 0.4)):  # ∝ R̄: 1, 0.5, 1
        assert abs(share[b] - want) < 0.02
    assert profile.draw_k(rng, 1) == 1  # no bucket with R̄ > 0 reachable: any k that fits
    assert profile.rbar(0) == 0.0 and profile.rbar(2) == 1.0 and profile.rbar(100) == 1.0
    # per position: a bucket ∝ R̄ × its positions up to the response's end (1, 0.5 × 2, 1 × 4)
    ks = [profile.draw_k(rng, 12, per_position=True) for _ in range(20000)]
    share = {b: sum(1 for k in ks if lo <= k <= hi) / len(ks) for b, (lo, hi) in enumerate([(2, 2), (3, 4), (9, 12)])}
    for b, want in ((0, 1 / 6), (1, 1 / 6), (2, 4 / 6)):
        assert abs(share[b] - want) < 0.02
    assert sum(share.values()) == 1.0


# ---- each method's prefix lengths k, against their exact distribution ----------------------
def _synthetic(n_response: int, records: int = 40) -> cp.CompletionData:
    """Token-level data without a model: every harmful response `n_response` tokens long."""
    harmful = [cp.HarmfulItem(f"h{i}", [1, 3 + i % 5], [4 + (i + j) % 9 for j in range(n_response)], [7, 8, 2],
                              "template", doc=i) for i in range(records)]
    benign = [cp.BenignItem(f"b{i}", [1, 5], [6, 2]) for i in range(records)]
    return cp.CompletionData(harmful, benign)


def _draws(data: cp.CompletionData, cfg: cp.CompleteConfig, profile: cp.RetentionProfile,
           steps: int = 250) -> list[cp.CompletionExample]:
    """The harmful examples of `steps` optimizer steps (32 per step: 8000 seeded draws)."""
    return [e for s in range(steps) for e in cp.make_examples(data, cfg, profile, s) if e.harmful]


def _chi_square_holds(ks: list[int], probs: dict[int, float]) -> None:
    """Pearson's χ² of the observed k against exact probabilities, below the 1 - 3e-5 quantile
    (Wilson-Hilferty); a k outside the support fails at once."""
    assert abs(sum(probs.values()) - 1) < 1e-12
    seen = collections.Counter(ks)
    assert set(seen) <= set(probs), sorted(set(seen) - set(probs))[:5]
    n = len(ks)
    stat = sum((seen[k] - n * p) ** 2 / (n * p) for k, p in probs.items())
    df = len(probs) - 1
    critical = df * (1 - 2 / (9 * df) + 4.0 * math.sqrt(2 / (9 * df))) ** 3
    assert stat < critical, (stat, critical, df)


def test_sft_never_trains_on_a_prefix() -> None:
    ex = _draws(_synthetic(30), cp.CompleteConfig(method="sft", batch_size=64), cp.RetentionProfile.uniform(), 20)
    assert len(ex) == 640 and all(e.kind == "direct" and not e.prefix and e.weight == 1.0 for e in ex)


@pytest.mark.parametrize("method", ["qi-augment", "qi-constrained"])
@pytest.mark.parametrize("n", [150, 30])
def test_qi_prefix_lengths_follow_their_distribution(method: str, n: int) -> None:
    """k = 0 with probability 1/2, else U[1, 100] capped at the response: uniform on [1, 100] for a
    response of 150 tokens; for one of 30, each k < 30 at 1/200 and the rest of the mass on k = 30."""
    ex = _draws(_synthetic(n), cp.CompleteConfig(method=method, batch_size=64), cp.RetentionProfile.uniform())
    probs = {0: 0.5} | dict.fromkeys(range(1, min(n, 100) + 1), 0.5 / 100)
    if n < 100:
        probs[n] = 0.5 * (100 - n + 1) / 100
    ks = [len(e.prefix) for e in ex]
    _chi_square_holds(ks, probs)
    assert abs(ks.count(0) / len(ks) - 0.5) < 4 * math.sqrt(0.25 / len(ks))
    assert all(e.kind == ("recovery" if e.prefix else "direct") and e.weight == 1.0 and e.rto is None for e in ex)


def test_derta_prefix_lengths_are_uniform_over_the_response() -> None:
    n = 30
    ex = _draws(_synthetic(n), cp.CompleteConfig(method="derta", batch_size=64), cp.RetentionProfile.uniform())
    _chi_square_holds([len(e.prefix) for e in ex], dict.fromkeys(range(n + 1), 1 / (n + 1)))
    assert all(e.rto == e.target[0] == 7 for e in ex)  # the refusal's first token at every prefix position


# edges 1, 2, 3-4, 5-8, 9-16, 17+: R̄ 0 in the first and fourth buckets, and no index data in the last
PROFILE = cp.RetentionProfile((1, 2, 3, 5, 9, 17), (0.0, 0.6, 0.3, 0.0, 0.9, 0.5), (4, 4, 4, 4, 4, 0))


@pytest.mark.parametrize("cap,k_draw,penalty", [(None, "bucket", "linear"), (12, "bucket", "linear"),
                                               (None, "position", "rank")])
def test_bft_prefix_lengths_follow_the_retention_profile(cap: int | None, k_draw: str, penalty: str) -> None:
    """k = 0 with probability direct_frac; else a bucket with probability ∝ R̄ among those with
    index data that the response (or --max-prefix) reaches (× its positions there, by position),
    then k uniform inside it; the target weighs 1 + α·R̄(bucket(k)); the rank penalty's prefix
    positions carry the refusal's opening token."""
    cfg = cp.CompleteConfig(method="bft", batch_size=64, direct_frac=0.25, alpha=2.0, max_prefix=cap,
                            k_draw=k_draw, penalty=penalty)
    ex = _draws(_synthetic(30), cfg, PROFILE)
    top = 16 if cap is None else cap  # the 17+ bucket has no data: k stops at 16
    buckets = {(2, 2): 0.6, (3, 4): 0.3, (9, top): 0.9}  # reachable, with data and R̄ > 0
    mass = {b: rbar * ((b[1] - b[0] + 1) if k_draw == "position" else 1) for b, rbar in buckets.items()}
    total = sum(mass.values())
    probs = {0: 0.25}
    for (lo, hi), m in mass.items():
        probs |= dict.fromkeys(range(lo, hi + 1), 0.75 * m / total / (hi - lo + 1))
    ks = [len(e.prefix) for e in ex]
    _chi_square_holds(ks, probs)
    # bucket by bucket: the empirical frequencies of recovery examples against the normalised mass
    rec = [k for k in ks if k]
    for (lo, hi), m in mass.items():
        share = sum(lo <= k <= hi for k in rec) / len(rec)
        assert abs(share - m / total) < 4 * math.sqrt(m / total * (1 - m / total) / len(rec)), (lo, hi)
    for e in ex:
        k = len(e.prefix)
        rbar = next((r for (lo, hi), r in buckets.items() if lo <= k <= hi), 0.0)
        assert e.weight == pytest.approx(1 + 2.0 * rbar) and e.kind == ("recovery" if k else "direct")
        assert (e.doc >= 0) == (k > 0)
        assert e.rto == (7 if penalty == "rank" and k else None)  # s(x) = [7, 8, 2]


def test_check_run_holds_every_rule() -> None:
    """One function checks a run for the CLI, `harden` and `complete`."""
    ok = {"index": True, "base": True}
    cp.check_run(cp.CompleteConfig(), **ok)
    cases = [
        (cp.CompleteConfig(method="nope"), ok, "unknown method"),
        (cp.CompleteConfig(k_draw="nope"), ok, "unknown k draw"),
        (cp.CompleteConfig(steps=0), ok, "--steps"),
        (cp.CompleteConfig(), {**ok, "merge": True}, "--merge applies to --lora"),
        (cp.CompleteConfig(), {**ok, "index": False}, "needs --index"),
        (cp.CompleteConfig(), {**ok, "base": False}, "needs --base"),
        (cp.CompleteConfig(teacher="suppressed"), {**ok, "base": False, "base_stats": True}, "needs --base"),
        (cp.CompleteConfig(fsdp=True), ok, "torchrun"),
        (cp.CompleteConfig(batch_size=8, grad_accum=4), {**ok, "world": 4}, "smaller than ranks x --grad-accum"),
    ]
    for cfg, kw, why in cases:
        with pytest.raises(BadInput, match=re.escape(why)):
            cp.check_run(cfg, **kw)
    # what each rule allows
    cp.check_run(cp.CompleteConfig(), index=True, base=False, base_stats=True)  # the shards stand in for the base
    cp.check_run(cp.CompleteConfig(method="sft"), index=False, base=False)
    cp.check_run(cp.CompleteConfig(lora=True), index=True, base=True, merge=True)
    cp.check_run(cp.CompleteConfig(fsdp=True, batch_size=8, grad_accum=4), index=True, base=True, world=2)


def _tiny_lm(seed: int):  # type: ignore[no-untyped-def]
    cfg = toy_config("llama", vocab_size=16, hidden=32, layers=1, intermediate=64, heads=2, kv_heads=1,
                     max_positions=64, bos_id=1, eos_id=2, pad_id=0)
    return new_model(cfg, seed)


@pytest.mark.parametrize("method", ["bft", "qi-augment"])
def test_gradient_accumulation_equals_the_whole_batch(method: str, tmp_path: Path) -> None:
    """The completion loop with grad_accum=2 (micro-batches of unequal token counts) against the
    same global batch in one go: the same logged terms and gradient norm, the same weights."""
    data = _synthetic(10, records=16)
    runs = []
    for accum in (1, 2):
        cfg = cp.CompleteConfig(method=method, steps=2, batch_size=8, grad_accum=accum, lr=1e-3, top_k=5)
        trainer = cp.Trainer(_tiny_lm(0), _tiny_lm(0).requires_grad_(False), _tiny_lm(1).requires_grad_(False),
                             cfg, PROFILE, pad_id=0)
        result = cp.train_loop(trainer, data, tmp_path / f"accum{accum}", "key")
        runs.append((result.log, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    (log1, w1), (log2, w2) = runs
    assert len(log1) == len(log2) == 2
    for a, b in zip(log1, log2):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for term in a:  # loss, each term, grad_norm (before clipping: a wrongly scaled gradient shows)
            assert a[term] == pytest.approx(b[term], rel=1e-5, abs=1e-7), term
    assert all(torch.allclose(w1[n], w2[n], rtol=0, atol=5e-5) for n in w1)
    start = dict(_tiny_lm(0).named_parameters())
    assert not all(torch.equal(w1[n], start[n]) for n in w1)  # it trained


def test_every_method_sees_the_same_records_and_builds_its_own_examples(toy, small) -> None:  # type: ignore[no-untyped-def]
    data = _data(toy, small)
    index_profile = cp.RetentionProfile.from_index(Index(small["index"]))
    base = cp.CompleteConfig(batch_size=16)
    seen = {}
    for method in cp.METHODS:
        cfg = cp.CompleteConfig(method=method, batch_size=16)
        seen[method] = [cp.step_records(data, cfg, s) for s in range(7)]
        ex = cp.make_examples(data, cfg, index_profile, 3)
        assert len(ex) == 16 and sum(e.kind == "benign" for e in ex) == 8
        harmful = [e for e in ex if e.harmful]
        if method == "sft":
            assert all(not e.prefix for e in harmful)
        if method in ("qi-augment", "qi-constrained"):
            assert all(len(e.prefix) <= 100 for e in harmful)
        if method == "derta":
            assert all(e.rto == e.target[0] for e in harmful)
        if method == "bft":
            for e in harmful:
                assert e.weight == pytest.approx(1 + base.alpha * index_profile.rbar(len(e.prefix)))
    assert all(seen[m] == seen["bft"] for m in cp.METHODS)
    # a fresh pass over the data every epoch: 7 steps x 8 harmful records cover the 48 records
    firsts = [i for s in seen["bft"][:6] for i in s[0]]
    assert sorted(firsts) == list(range(48))


def test_collate_positions_predict_their_tokens(toy, small) -> None:  # type: ignore[no-untyped-def]
    data = _data(toy, small)
    profile = cp.RetentionProfile.uniform()
    for method, penalty in (("bft", "linear"), ("bft", "rank"), ("derta", "rank")):
        cfg = cp.CompleteConfig(method=method, penalty=penalty, batch_size=12)
        ex = cp.make_examples(data, cfg, profile, 0)
        b = cp.collate(ex, pad_id=0, device=torch.device("cpu"))
        # a target position predicts the next input token, in the student and the clean sequence
        assert torch.equal(b.ids[b.tgt_row, b.tgt_col + 1], b.tgt_tok)
        assert torch.equal(b.clean_ids[b.tgt_row, b.clean_col + 1], b.tgt_tok)
        if (method, penalty) == ("bft", "linear"):  # prefix positions predict the harmful token h_t
            assert torch.equal(b.ids[b.pre_row, b.pre_col + 1], b.pre_tok)
        if (method, penalty) == ("bft", "rank"):  # ... or carry the refusal's opening token instead
            assert b.pre_tok.tolist() == [e.target[0] for e in ex for _ in e.prefix]
        counts = cp.term_counts(ex, cfg)
        assert counts["ce"] == b.tgt_tok.numel() + (b.pre_tok.numel() if method == "derta" else 0)


def test_contrastive_decoding() -> None:
    lpa = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    lpb = torch.log(torch.tensor([[0.2, 0.6, 0.2]]))
    got = contrast_logprobs(lpa, lpb, gamma=1.0, top_k=2).exp()[0]
    raw = torch.tensor([0.6, 0.3 * (0.3 / 0.6), 0.1])  # token 1: base favours it by log 2
    assert torch.allclose(got, raw / raw.sum(), atol=1e-6)
    assert torch.allclose(contrast_logprobs(lpa, lpa, 2.0, 3), lpa, atol=1e-6)


def test_contrastive_decoding_is_the_aligned_distribution_minus_the_base_excess(toy) -> None:  # type: ignore[no-untyped-def]
    """What the contrastive generator decodes from, whatever world the seed built: with the model as
    its own base there is no excess and decoding is plain; with the base model, the next-token
    log-probs are the aligned ones with the base's excess subtracted on the base top-k (recomputed
    here from the two models' own log-probs), and they differ from plain where the two models
    disagree (the first response token, where shallow alignment lives)."""
    tok = load_tokenizer(toy.tokenizer_dir(ARCH))
    aligned, base = load_model(toy.model_dir(ARCH, "aligned")), load_model(toy.model_dir(ARCH, "base"))
    records, _ = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])
    plain = TorchGenerator(aligned, tok)
    inputs = [plain.prompt_ids(r.prompt) + [int(t) for t in tok(r.response or "", add_special_tokens=False)["input_ids"][:k]]
              for r in records[:12] for k in (0, 10)]
    own = TorchGenerator(aligned, tok, contrast=Contrast(aligned, 2.0))
    assert own.generate(inputs, Decoding(40)) == plain.generate(inputs, Decoding(40))
    contrasted = TorchGenerator(aligned, tok, contrast=Contrast(base, 4.0, top_k=20)).next_logprobs(inputs)
    lpa = torch.from_numpy(plain.next_logprobs(inputs)).double()
    lpb = torch.from_numpy(TorchGenerator(base, tok).next_logprobs(inputs)).double()
    want = contrast_logprobs(lpa, lpb, 4.0, 20)
    assert torch.allclose(torch.from_numpy(contrasted).double(), want, atol=1e-4)
    first = list(range(0, len(inputs), 2))  # k = 0: the first response token
    excess = (lpb[first] - lpa[first]).clamp_min(0).max(-1).values
    assert bool((excess > 1.0).all())  # the base favours some token there far more than aligned does
    assert not torch.allclose(torch.from_numpy(contrasted[first]).double(), lpa[first], atol=1e-3)
    # what `bftcore attack --contrast-base --contrast-gamma` opens is that generator
    opened, arch = open_target(toy.model_dir(ARCH, "aligned"), contrast_base=toy.model_dir(ARCH, "base"),
                               contrast_gamma=4.0)
    assert arch == ARCH and torch.allclose(torch.from_numpy(opened.next_logprobs(inputs)).double(), want, atol=1e-4)


def _complete_args(toy, small, out: Path, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ["complete", "--base", str(toy.model_dir(ARCH, "base")), "--aligned",
            str(toy.model_dir(ARCH, "aligned")), "--index", str(small["index"]), "--data",
            str(small["harmful"]), "--benign", str(small["benign"]), "--out", str(out),
            "--device", "cpu", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(path.glob("*.safetensors"))))


@pytest.mark.parametrize("method", cp.METHODS)
def test_every_method_runs_from_the_cli(toy, small, tmp_path: Path, method: str) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / method
    r = run_cli(*_complete_args(toy, small, out, "--method", method, "--steps", "3", "--batch-size", "8",
                                "--json"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    card = json.loads((out / cp.CARD).read_text())
    assert summary["method"] == method and card["config"]["method"] == method
    assert len(card["log"]) == 3 and card["data"]["harmful"] == 48
    want = set(cp.term_counts([cp.CompletionExample("recovery", [1], [2], [3])], cp.CompleteConfig(method=method)))
    assert set(card["terms_final_mean10"]) == want  # every loss term is logged
    assert (out / "RUN_CARD.md").is_file() and not (tmp_path / f".{method}.work").exists()
    if method != "bft":
        return
    # an ordinary model directory that the other commands take
    a = run_cli("attack", str(out), "--data", str(small["harmful"]), "--attack", "prefill", "--k", "5",
                "--limit", "4", "--judge", "exact", "--json", "--device", "cpu")
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["rows"][0]["n"] == 4


def test_the_rank_penalty_runs_from_the_cli_and_logs_its_guard(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The rank form is the default; k drawn per position is an option."""
    out = tmp_path / "rank"
    r = run_cli(*_complete_args(toy, small, out, "--k-draw", "position", "--steps", "2", "--batch-size", "8", "--json"))
    assert r.returncode == 0, r.stderr
    card = json.loads((out / cp.CARD).read_text())
    assert card["config"]["penalty"] == "rank" and card["config"]["lam"] == 0.3
    assert card["config"]["k_draw"] == "position"
    assert set(card["terms_final_mean10"]) == {"ce", "penalty", "kd", "guard"}
    assert 0 < card["terms_final_mean10"]["guard"] < card["terms_final_mean10"]["ce"]


def test_harden_is_the_whole_job_from_files(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The library entry behind `bftcore complete`: reads the corpora, judges the aligned model's
    own answers with the keywords given, builds the data, trains, and returns the run card."""
    keywords = tmp_path / "keywords.txt"
    keywords.write_text("\n".join(REFUSALS + RECOVERY_REFUSALS) + "\n")
    inputs = cp.HardenInputs(aligned=toy.model_dir(ARCH, "aligned"), data=(small["harmful"],),
                             benign=(small["benign"],), out=tmp_path / "hardened", base=toy.model_dir(ARCH, "base"),
                             index=small["index"], refusal_keywords=keywords, device="cpu")
    card = cp.harden(inputs, cp.CompleteConfig(steps=2, batch_size=8))
    assert card is not None and card == json.loads((tmp_path / "hardened" / cp.CARD).read_text())
    assert len(card["log"]) == 2 and set(card["terms_final_mean10"]) == {"ce", "penalty", "kd", "guard"}
    # the same data as the library builds with that judge: every s(x) the aligned model's own
    assert card["data"]["self_refusals"] == 48 and card["data"]["hash"] == _data(toy, small).digest()
    assert card["index"] == str(small["index"]) and not cp.work_dir(tmp_path / "hardened").exists()
    # the run is checked before anything is read or generated
    bad = replace(inputs, index=None, out=tmp_path / "bad")
    with pytest.raises(BadInput, match="needs --index"):
        cp.harden(bad, cp.CompleteConfig())
    assert not cp.work_dir(tmp_path / "bad").exists()


def test_kill_and_rerun_gives_the_same_weights(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ("--steps", "40", "--batch-size", "8", "--checkpoint-every", "4")
    whole = tmp_path / "whole"
    assert run_cli(*_complete_args(toy, small, whole, *args)).returncode == 0
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bftcore", *_complete_args(toy, small, killed, *args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = tmp_path / ".killed.work" / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not killed.exists(), "the run ended before it was killed"
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 40
    r = run_cli(*_complete_args(toy, small, killed, *args, "--json"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from_step"] >= step
    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / cp.CARD).read_text())["log"] == json.loads((whole / cp.CARD).read_text())["log"]


def test_a_checkpoint_of_other_settings_is_refused(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "m"
    work = tmp_path / ".m.work"
    r = run_cli(*_complete_args(toy, small, out, "--steps", "2", "--batch-size", "4"))
    assert r.returncode == 0
    work.mkdir()
    # a stale checkpoint of other settings left in the work directory
    torch.save({"step": 1, "key": "other", "model": {}, "optimizer": {}, "log": []}, work / "checkpoint.pt")
    r = run_cli(*_complete_args(toy, small, out, "--steps", "3", "--batch-size", "4"))
    assert r.returncode == 2 and "other settings" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args,why", [
    (["--method", "bft", "--no-index"], "needs --index"),
    (["--method", "nope"], "nope"),
    (["--steps", "0"], "--steps"),
    (["--merge"], "--merge applies to --lora"),
])
def test_bad_input_exits_2(toy, small, tmp_path: Path, args: list[str], why: str) -> None:  # type: ignore[no-untyped-def]
    base = _complete_args(toy, small, tmp_path / "x")
    if "--no-index" in args:
        i = base.index("--index")
        del base[i:i + 2]
        args = [a for a in args if a != "--no-index"]
    r = run_cli(*base, *args)
    assert r.returncode == 2, r.stderr
    assert why in r.stderr and "Traceback" not in r.stderr


def test_lora_adapter_and_merged_model(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    for out, extra in ((adapter, ()), (merged, ("--merge",))):
        r = run_cli(*_complete_args(toy, small, out, "--lora", "--steps", "4", "--batch-size", "8", "--lr", "1e-2",
                                    *extra))
        assert r.returncode == 0, r.stderr
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "config.json").exists()
    assert (merged / "config.json").is_file()
    # the adapter loads as the aligned model plus the adapter, equal to the merged model
    a, m = load_model(adapter), load_model(merged)
    ids = torch.tensor([[1, 5, 9, 13, 40]])
    with torch.no_grad():
        la, lm = a(input_ids=ids).logits, m(input_ids=ids).logits
        lal = load_model(toy.model_dir(ARCH, "aligned"))(input_ids=ids).logits
    assert torch.allclose(la, lm, atol=1e-4) and not torch.allclose(la, lal, atol=1e-4)


def test_ddp_two_ranks_follow_the_single_process_loss_curve(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    args = ("--steps", "6", "--batch-size", "8", "--method", "bft")
    single = tmp_path / "single"
    assert run_cli(*_complete_args(toy, small, single, *args)).returncode == 0
    dist = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "bftcore", *_complete_args(toy, small, dist, *args)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((single / cp.CARD).read_text())
    two = json.loads((dist / cp.CARD).read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    for a, b in zip(one["log"], two["log"], strict=True):
        for term in ("loss", "ce", "penalty", "kd"):
            assert a[term] == pytest.approx(b[term], rel=2e-3, abs=1e-5), (a["step"], term)
    wa, wb = _weights(single), _weights(dist)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_fsdp_two_ranks_killed_and_resumed_follow_the_single_process_run(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """FSDP2 (weights, gradients and AdamW state sharded over 2 gloo ranks, gradient accumulation,
    activation recomputation), stopped after its first checkpoint and rerun: the same loss curve
    and weights as one process."""
    args = ("--steps", "6", "--batch-size", "8", "--method", "bft", "--checkpoint-every", "2")
    single = tmp_path / "single"
    assert run_cli(*_complete_args(toy, small, single, *args)).returncode == 0
    sharded = tmp_path / "sharded"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
           "-m", "bftcore", *_complete_args(toy, small, sharded, *args, "--fsdp", "--grad-accum", "2",
                                            "--grad-checkpointing")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoint = tmp_path / ".sharded.work" / "checkpoint.pt"
    deadline = time.time() + 600
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # what a scheduler's preemption does: SIGTERM to the launcher, which takes its workers down
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode != 0 and not sharded.exists(), "the run ended before it was killed"
    step = torch.load(checkpoint, weights_only=True)["step"]
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["resumed_from_step"] >= step > 0
    one = json.loads((single / cp.CARD).read_text())
    two = json.loads((sharded / cp.CARD).read_text())
    assert two["world_size"] == 2 and two["config"]["fsdp"]
    for a, b in zip(one["log"], two["log"], strict=True):
        for term in ("loss", "ce", "penalty", "kd", "grad_norm"):
            assert a[term] == pytest.approx(b[term], rel=2e-3, abs=1e-5), (a["step"], term)
    wa, wb = _weights(single), _weights(sharded)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_fsdp_without_torchrun_is_bad_input(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli(*_complete_args(toy, small, tmp_path / "x", "--steps", "2", "--fsdp"))
    assert r.returncode == 2 and "torchrun" in r.stderr and "Traceback" not in r.stderr


def test_harmful_records_without_responses_are_bad_input(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I poison the well?", "label": "harmful"}) + "\n")
    r = run_cli(*[a if a != str(small["harmful"]) else str(prompts) for a in
                  _complete_args(toy, small, tmp_path / "y", "--steps", "2")])
    assert r.returncode == 2 and "harmful responses" in r.stderr


def test_attack_with_contrastive_decoding_from_the_cli(toy, small) -> None:  # type: ignore[no-untyped-def]
    """The inference-time variant: contrasted with the base, the aligned model's own shallow
    recovery is amplified, and it stops most of the prefilling attacks at k = 10 that succeed
    without it (significantly: the 95% interval of the difference lies below 0)."""
    common = [str(toy.model_dir(ARCH, "aligned")), "--data", str(toy.data_dir / "harmful_heldout.jsonl"),
              "--attack", "prefill", "--k", "10", "--judge", "exact",
              "--max-new-tokens", "48", "--json", "--device", "cpu"]
    plain = run_cli("attack", *common)
    contrasted = run_cli("attack", *common, "--contrast-base", str(toy.model_dir(ARCH, "base")))
    assert plain.returncode == 0 and contrasted.returncode == 0, contrasted.stderr
    before = json.loads(plain.stdout)["rows"][0]
    after = json.loads(contrasted.stdout)["rows"][0]
    assert before["x"] >= 18 and after["x"] <= before["x"] // 2, (before, after)
    assert newcombe_difference(after["x"], after["n"], before["x"], before["n"])[1] < 0
    other = run_cli("attack", *common, "--contrast-base", str(toy.model_dir("qwen2", "base")))
    assert other.returncode == 2 and "do not share a tokenizer" in other.stderr


def test_base_statistics_from_scored_shards_equal_the_online_ones(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The penalty reads the base top-k from the shards `bftcore index` wrote for the same corpus:
    the same training as running the base model online, without it."""
    data = _data(toy, small)
    harmful, _ = read_corpus([small["harmful"]])
    from bftcore.models import tokenizer_hash

    tok = load_tokenizer(toy.tokenizer_dir(ARCH))
    stats = cp.ShardBaseStats(Path(str(small["index"]) + ".shards"), harmful, data, tokenizer_hash(tok), 20)
    base = load_model(toy.model_dir(ARCH, "base"))
    profile = cp.RetentionProfile.from_index(Index(small["index"]))
    ex = cp.make_examples(data, cp.CompleteConfig(batch_size=16), profile, 1)
    b = cp.collate(ex, tok.pad_token_id, torch.device("cpu"))
    assert b.pre_row.numel() > 0
    ids, lps = stats.lookup(b.pre_doc, b.pre_pos, 20)
    with torch.no_grad():
        online = torch.log_softmax(base(input_ids=b.ids, attention_mask=b.mask).logits[b.pre_row, b.pre_col], -1)
    top_lp, top_ids = torch.topk(online, 20, dim=-1)
    assert torch.allclose(lps, top_lp, atol=1e-4)
    assert (ids[:, :5] == top_ids[:, :5]).float().mean() > 0.99  # ties deep in the tail may swap
    # from the CLI: no --base needed, the run card says where the statistics came from
    out = tmp_path / "from-shards"
    args = _complete_args(toy, small, out, "--steps", "2", "--batch-size", "8", "--base-shards",
                          str(small["index"]) + ".shards")
    i = args.index("--base")
    del args[i:i + 2]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / cp.CARD).read_text())["base_statistics"] == "scored shards"
    other = run_cli(*[a if a != str(small["harmful"]) else str(toy.data_dir / "harmful_heldout.jsonl")
                      for a in args])
    assert other.returncode == 2 and "another corpus" in other.stderr


def _first_token_logprob(model_dir: Path, records: list, tok) -> float:  # type: ignore[no-untyped-def]
    """Mean log-prob of each harmful response's first token after its prompt (teacher-forced)."""
    from bftcore.chat import prompt_ids, response_ids

    model, total = load_model(model_dir), 0.0
    for r in records:
        p, t = prompt_ids(tok, r.messages()), response_ids(tok, r.response, eos=False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + t[:1]])).logits[0, len(p) - 1]
        total += float(torch.log_softmax(logits.float(), -1)[t[0]])
    return total / len(records)


def test_finetuning_attacks_from_the_cli(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`complete --method harmful-sft` (full and LoRA) and `harmful-constrained` fine-tune the
    aligned model on 10 harmful pairs, no benign data: plain SFT raises the log-prob of the harmful
    answers' first tokens (where the aligned model refuses); a defense without --benign exits 2."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join((toy.data_dir / "harmful_train.jsonl").read_text().splitlines()[:10]) + "\n")
    aligned = toy.model_dir("llama", "aligned")
    tok = load_tokenizer(aligned)
    records = read_corpus([pairs])[0]
    before = _first_token_logprob(aligned, records, tok)
    common = ["--aligned", str(aligned), "--data", str(pairs), "--steps", "10", "--batch-size", "4", "--lr", "1e-3",
              "--device", "cpu", "--json"]
    after = {}
    for name, extra in (("sft", ["--method", "harmful-sft"]), ("sft-lora", ["--method", "harmful-sft", "--lora", "--merge"]),
                        ("constrained", ["--method", "harmful-constrained"])):
        r = run_cli("complete", *common, *extra, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        card = json.loads((tmp_path / name / cp.CARD).read_text())
        assert card["config"]["method"] == extra[1] and card["data"]["benign"] == 0 and card["data"]["harmful"] == 10
        after[name] = _first_token_logprob(tmp_path / name, records, tok)
    assert after["sft"] > before + 1.0 and after["sft-lora"] > before, (before, after)
    assert after["constrained"] != before  # it trained
    r = run_cli("complete", *common, "--method", "sft", "--out", str(tmp_path / "defense"))
    assert r.returncode == 2 and "needs --benign" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_prefill_attention_is_the_mass_on_the_prefill_columns() -> None:
    """With uniform causal attention a target at column c pays K / (c + 1) to its K prefill
    tokens; benign and direct targets are not counted."""
    ex = [cp.CompletionExample("recovery", [5, 6, 7], [8, 9], [10, 11, 2]),
          cp.CompletionExample("benign", [5, 6], [], [12, 2]),
          cp.CompletionExample("recovery", [5], [8, 9, 9, 9], [10, 2])]
    b = cp.collate(ex, pad_id=0, device=torch.device("cpu"))
    width = b.ids.shape[1]
    causal = torch.tril(torch.ones(width, width))
    uniform = (causal / causal.sum(-1, keepdim=True))[None, None].expand(len(ex), 2, width, width)
    from bftcore.complete.methods import prefill_attention

    got = prefill_attention(b, [uniform, uniform])
    want = [2 / (c + 1) for c in (4, 5, 6)] + [4 / (c + 1) for c in (4, 5)]
    assert got.tolist() == pytest.approx(want)


def test_presto_without_its_regulariser_is_qi_augment_and_with_it_trains_the_attention(toy, small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = _data(toy, small)
    runs = {}
    for name, method, lam in (("qi", "qi-augment", 1.0), ("presto0", "presto", 0.0), ("presto", "presto", 5.0)):
        cfg = cp.CompleteConfig(method=method, steps=4, batch_size=8, presto_lambda=lam, checkpoint_every=100)
        result = cp.complete(None, toy.model_dir(ARCH, "aligned"), data, tmp_path / name, cfg)
        runs[name] = (result.log, _weights(tmp_path / name))
    (qi_log, qi_w), (p0_log, p0_w), (p_log, p_w) = runs["qi"], runs["presto0"], runs["presto"]
    assert [e["ce_harmful"] for e in p0_log] == pytest.approx([e["ce_harmful"] for e in qi_log], rel=1e-5)
    assert all(torch.allclose(qi_w[k], p0_w[k], atol=1e-6) for k in qi_w)
    assert all(e["attention"] == 0 for e in p0_log) and all(e["attention"] >= 0 for e in p_log)
    assert sum(e["attention"] > 0 for e in p_log) >= 2  # steps with recovery targets pay it
    assert not all(torch.allclose(qi_w[k], p_w[k], atol=1e-6) for k in qi_w)
