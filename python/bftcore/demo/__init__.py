"""`bftcore demo`: the whole pipeline on the embedded toy world, and its expectations table.

1. build or reuse the toy world; measure the base model on held-out tasks (direct request, benign
   exact-match);
2. score held-out harmful and benign responses with both models and build the base-favored-token
   index (the signal-decay picture);
3. run the hardening rows on the aligned model (direct, prefilling at k = 5..40 in the trained and
   the unseen style, the adaptive prefill (rank-prefill), sampled decoding, benign exact-match):
   the same rows, decoding length included, as every hardened model meets;
4. index the training split's harmful responses, run targeted completion (`bft`) and every baseline
   on the same data, steps and batch, and attack each result with the hard rows; the contrastive
   decoding variant and Any-Depth Alignment run beside them; with `full`, the aligned model and
   every hardened one also meet the literature's attacks (RAP and its oracle, deep prefill,
   restart, many-shot, the completion attack, the decoding exploit, a fine-tuning attack) and the
   continuous measures (refusal margin, the reference's rank, KL to the aligned model, perplexity);
5. export the completed model to GGUF Q8_0 and ONNX (with `full` also GGUF F16 and Q4_K_M),
   re-attack each deployed artifact through llama.cpp and onnxruntime with the same rows, and
   measure parity with PyTorch on the held-out texts.

Steps 1-2 are measured afresh on every run. What steps 3-5 train, export and measure is cached,
keyed by its inputs (the models' and data's bytes, the settings, library versions and the stage's
number in `cache.VERSIONS`), so a warm demo takes a minute or two; `rebuild` ignores every cache.
Each expectation is a `Check` decided at the 95% level (see `bftcore.stats`): a failed one is
reported, and only a broken pipeline raises.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bftcore import attack as atk
from bftcore import export as ex
from bftcore import index as bfti
from bftcore.cache import VERSIONS, cache_root, settings
from bftcore.corpus import read_corpus
from bftcore.demo.config import (
    ANY_DEPTH,
    BASELINES,
    CHECKED_EXPORTS,
    COMPLETED,
    CONTRAST,
    DEMO_ATTACK,
    DEMO_COMPLETE,
    DEMO_FINETUNE,
    DEMO_KS,
    EXPORTS,
    FINETUNE_PAIRS,
    LITERATURE_EVERY,
    MAX_EM_LOSS,
    MAX_EXPORT_GAP,
    METHODS,
    MIN_AGREEMENT,
    MIN_REDUCTION,
    QUICK_EXPORTS,
)
from bftcore.demo.exports import export_checks, export_parity, exported_models, keep_parity, missing_deploy_extras
from bftcore.demo.suites import (
    HARDENING_ATTACKS,
    benign_prefill_suite,
    cached_rows,
    finetune_attack,
    hardening_suite,
    heldout,
    literature_suite,
    over_refusal_suite,
)
from bftcore.demo.training import (
    completed_models,
    completion_checks,
    completion_inputs,
    index_records,
    keep_training_logs,
)
from bftcore.progress import Progress
from bftcore.score import ScoreConfig
from bftcore.stats import Check, RateRow
from bftcore.toy import measure, threshold_checks, toy_world
from bftcore.toy.check import signal_decay_checks

__all__ = [
    "ANY_DEPTH", "BASELINES", "CHECKED_EXPORTS", "COMPLETED", "CONTRAST", "DEMO_ATTACK", "DEMO_COMPLETE",
    "DEMO_FINETUNE", "DEMO_KS", "EXPORTS", "FINETUNE_PAIRS", "HARDENING_ATTACKS", "LITERATURE_EVERY",
    "MAX_EM_LOSS", "MAX_EXPORT_GAP", "METHODS", "MIN_AGREEMENT", "MIN_REDUCTION", "QUICK_EXPORTS",
    "DemoResult", "benign_prefill_suite", "cached_rows", "completed_models", "completion_checks",
    "completion_inputs", "export_checks", "export_parity", "exported_models", "finetune_attack",
    "hardening_suite", "heldout", "index_records", "literature_suite", "over_refusal_suite", "run",
]


@dataclass
class DemoResult:
    world: Any
    rows: list[RateRow]
    checks: list[Check]
    index: bfti.Index
    run_dir: Path
    measures: list[dict[str, Any]]
    models: dict[str, Path]
    parity: list[ex.Parity] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stages left out, each with the reason
    full: bool = False  # the literature's attacks measured too

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def summary(self) -> dict[str, Any]:
        """The `demo --json` object: every figure the tables print, and what produced them."""
        arch = self.rows[0].arch if self.rows else ""
        index = self.index.to_json(top=0)
        return {
            "rows": [r.to_dict() for r in self.rows], "measures": self.measures,
            "checks": [c.to_dict() for c in self.checks], "ok": not self.failed,
            "world": self.world.summary([arch]),
            "index": {"path": str(self.index.path), "header": index["header"], "buckets": index["buckets"],
                      "curves": self.index.curves().to_dicts()},
            "run_dir": str(self.run_dir), "models": {k: str(v) for k, v in self.models.items()},
            "parity": [p.to_dict() for p in self.parity], "skipped": self.skipped, "full": self.full,
            # what decides these figures besides the world: a recorded run names them
            "settings": {"versions": dict(VERSIONS), "toy": settings(self.world.settings),
                         "complete": settings(DEMO_COMPLETE),
                         "attack": settings(DEMO_ATTACK), "score": settings(ScoreConfig())},
        }


def run(arch: str = "llama", seed: int = 0, *, device: str = "cpu", progress: Progress | None = None,
        methods: tuple[str, ...] = METHODS, rebuild: bool = False, full: bool = False) -> DemoResult:
    """The quick tour (every model on the hardening rows), or with `full` every model on the
    literature's attacks as well (about ten minutes more, cold, on 2 cores)."""
    tw = toy_world(seed).build([arch], device=device, progress=progress, rebuild=rebuild)
    # the base model's rows at the demo's decoding length (the toy check's own rows decode longer)
    rows = measure(tw, arch, device=device, on_batch=progress, roles=("base",), cfg=DEMO_ATTACK)
    run_dir = cache_root() / "runs" / f"demo-{arch}-seed{seed}-{tw.settings.key()}"
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl", tw.data_dir / "benign_heldout.jsonl"])
    index = index_records(records, tw.model_dir(arch, "base"), tw.model_dir(arch, "aligned"),
                          run_dir / "heldout.bfti", device=device, progress=progress)
    bfti.plot_signal_decay(index, run_dir / "signal_decay.png")

    def hardening(model_dir: Path, name: str, **kw: Any) -> atk.AttackResult:
        return hardening_suite(tw, arch, model_dir, name, device=device, progress=progress,
                               rebuild=rebuild, **kw)

    aligned = tw.model_dir(arch, "aligned")
    suite = hardening(aligned, "aligned")
    checks = threshold_checks(rows + suite.rows) + signal_decay_checks(index.curves(), arch)
    models = completed_models(tw, arch, methods, device=device, progress=progress, rebuild=rebuild)
    keep_training_logs(models, run_dir / "training")
    for name, path in models.items():
        suite.extend(hardening(path, name))
    suite.extend(hardening(aligned, CONTRAST, contrast_base=tw.model_dir(arch, "base")))
    suite.extend(hardening(aligned, ANY_DEPTH, ada=True))

    def literature(model_dir: Path, name: str, **kw: Any) -> atk.AttackResult:
        return literature_suite(tw, arch, model_dir, name, device=device, progress=progress,
                                rebuild=rebuild, **kw)

    def benign(model_dir: Path, name: str, **kw: Any) -> atk.AttackResult:
        return benign_prefill_suite(tw, arch, model_dir, name, device=device, progress=progress,
                                    rebuild=rebuild, **kw)

    everyone: list[tuple[Path, str, dict[str, Any]]] = [
        (aligned, "aligned", {}), *((path, name, {}) for name, path in models.items()),
        (aligned, CONTRAST, {"contrast_base": tw.model_dir(arch, "base")}), (aligned, ANY_DEPTH, {"ada": True})]
    for path, name, kw in everyone if full else []:
        suite.extend(literature(path, name, **kw))
        suite.extend(benign(path, name, **kw))
    parity: list[ex.Parity] = []
    skipped = []
    missing = missing_deploy_extras()
    if missing and COMPLETED in models:
        skipped.append(f"export and re-attack of the deployed artifacts: {', '.join(missing)} not installed "
                       "(pip install 'bftcore[onnx,llamacpp]')")
    if COMPLETED in models and not missing:
        artifacts = exported_models(models[COMPLETED], progress=progress, rebuild=rebuild,
                                    only=() if full else QUICK_EXPORTS)
        for label, path in artifacts.items():
            suite.extend(hardening(models[COMPLETED], f"{COMPLETED} {label}", artifact=path))
        parity = export_parity(tw, models[COMPLETED], artifacts, rebuild=rebuild)
        # the same comparison where the attacks succeed: the aligned model's Q8_0 GGUF
        aligned_q8 = exported_models(aligned, progress=progress, only=("gguf-q8_0",), rebuild=rebuild)
        suite.extend(hardening(aligned, "aligned gguf-q8_0", artifact=aligned_q8["gguf-q8_0"]))
    atk.write_results(suite, run_dir / "attacks")
    keep_parity(parity, run_dir / "exports" / "parity.json")
    rows = sorted(rows + suite.rows, key=_row_order)
    if COMPLETED in models:
        checks += completion_checks(rows, COMPLETED)
    if COMPLETED in models and not missing:
        checks += export_checks(rows, parity, labels=CHECKED_EXPORTS if full else QUICK_EXPORTS)
        checks += export_checks(rows, [], "aligned", ("gguf-q8_0",))
    return DemoResult(tw, rows, checks, index, run_dir, suite.measures, models, parity, skipped, full)


_MODEL_ORDER = ("base", "aligned", COMPLETED, *BASELINES, CONTRAST, ANY_DEPTH, "completed gguf-f16", "completed gguf-q8_0",
                "completed gguf-q4_k_m", "completed onnx", "aligned gguf-q8_0")


def _row_order(r: RateRow) -> tuple[Any, ...]:
    m = _MODEL_ORDER.index(r.model) if r.model in _MODEL_ORDER else len(_MODEL_ORDER)
    return (m, r.attack != "direct", r.metric != "asr", r.attack, r.k or 0)
