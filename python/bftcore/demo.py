"""`bftcore demo`: the whole pipeline on the embedded toy world (TOYWORLD.md's table).

Stages so far: build or reuse the toy world; measure base and aligned models on held-out tasks
(direct and prefilling attacks, benign exact-match); score held-out harmful and benign responses
with both models and build the base-favored-token index (the signal-decay picture).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bftcore import index as bfti
from bftcore.corpus import read_corpus
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths
from bftcore.progress import Progress
from bftcore.stats import RateRow
from bftcore.toy import Check, measure, threshold_checks, toy_world
from bftcore.toy.build import cache_root
from bftcore.toy.check import signal_decay_checks

@dataclass
class DemoResult:
    world: Any
    rows: list[RateRow]
    checks: list[Check]
    index: bfti.Index
    run_dir: Path

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
    return DemoResult(tw, rows, checks, index, run_dir)
