"""`bftcore demo`: the whole pipeline on the embedded toy world (TOYWORLD.md's table).

Stages so far: build or reuse the toy world; measure base and aligned models on held-out tasks
(direct and prefilling attacks, benign exact-match); score held-out harmful and benign responses
with both models and build the base-favored-token index (the signal-decay picture); run the attack
suite on the aligned model (prefilling at k = 5..40 in the trained and the unseen style, the
rank-assisted prefill, sampled decoding, the completion attack, the decoding exploit).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bftcore import attack as atk
from bftcore import index as bfti
from bftcore.corpus import read_corpus
from bftcore.generate import TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths
from bftcore.progress import Progress
from bftcore.stats import RateRow
from bftcore.toy import Check, measure, threshold_checks, toy_world
from bftcore.toy.build import cache_root
from bftcore.toy.check import PREFILL_KS, completion_records, signal_decay_checks
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS

@dataclass
class DemoResult:
    world: Any
    rows: list[RateRow]
    checks: list[Check]
    index: bfti.Index
    run_dir: Path
    measures: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return all(c.holds for c in self.checks)


def run(arch: str = "llama", seed: int = 0, *, device: str = "cpu",
        progress: Progress | None = None) -> DemoResult:
    tw = toy_world(seed).build([arch], device=device, progress=progress)
    rows = measure(tw, arch, device=device, on_batch=progress)
    run_dir = cache_root() / "runs" / f"demo-{arch}-seed{seed}-{tw.settings.key()}"
    shards = run_dir / "heldout.shards"
    if shards.exists():  # the demo measures afresh: stale shards must not be reused
        shutil.rmtree(shards)
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl",
                              tw.data_dir / "benign_heldout.jsonl"])
    score_corpus(records, tw.model_dir(arch, "base"), tw.model_dir(arch, "aligned"), shards,
                 ScoreConfig(), device=device, progress=progress)
    index = bfti.build(shard_paths(shards), run_dir / "heldout.bfti", progress=progress)
    bfti.plot_signal_decay(index, run_dir / "signal_decay.png")
    checks = threshold_checks(rows) + signal_decay_checks(index.curves(), arch)
    suite = attack_suite(tw, arch, device=device, progress=progress)
    atk.write_results(suite, run_dir / "attacks")
    rows = sorted(rows + suite.rows, key=lambda r: (r.model != "base", r.attack != "direct",
                                                    r.metric != "asr", r.attack, r.k or 0))
    return DemoResult(tw, rows, checks, index, run_dir, suite.measures)


DEMO_KS = (5, 10, 20, 40)


def attack_suite(tw: Any, arch: str, *, device: str = "cpu", progress: Progress | None = None,
                 role: str = "aligned") -> atk.AttackResult:
    """The shallow-alignment table: every attack on one toy model, judged exactly."""
    harmful, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])
    unseen, _ = read_corpus([tw.data_dir / "harmful_unseen_heldout.jsonl"])
    benign, _ = read_corpus([tw.data_dir / "benign_heldout.jsonl"])
    gen = TorchGenerator(load_model(tw.model_dir(arch, role), device=device),
                         load_tokenizer(tw.tokenizer_dir(arch)))
    judge = PhraseJudge(tw.world.harmful_phrases)
    cfg = atk.AttackConfig(ks=DEMO_KS, max_new_tokens=64)
    suite = atk.Suite(gen, judge, cfg, model=role, arch=arch, openers=REFUSALS + RECOVERY_REFUSALS,
                      progress=progress)
    out = atk.AttackResult()
    prefill = suite.run("prefill", harmful)
    out.rows += [r for r in prefill.rows if r.k not in PREFILL_KS]  # k = 5, 10 are in the toy check
    out.samples += prefill.samples
    out.extend(suite.run("rank-prefill", harmful))
    out.extend(suite.run("prefill", unseen, tag="unseen"))
    suite.cfg = atk.AttackConfig(ks=(10,), max_new_tokens=64)
    out.extend(suite.run("prefill-sampled", harmful))
    out.extend(suite.run("completion", completion_records(tw.world)))
    out.extend(suite.run("decoding-exploit", harmful))
    out.measures.append(atk.perplexity(gen, benign, model=role, arch=arch))
    return out
