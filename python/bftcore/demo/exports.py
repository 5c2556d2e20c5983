"""The export stage in the demo: the completed model's GGUF and ONNX forms (cached per model),
their parity with PyTorch, and the export row's expectations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from bftcore import export as ex
from bftcore.cache import model_digest, stage_key
from bftcore.demo.config import CHECKED_EXPORTS, COMPLETED, EXPORTS, MAX_EXPORT_GAP, MIN_AGREEMENT
from bftcore.demo.suites import HARDENING_ATTACKS
from bftcore.files import atomic_write_json
from bftcore.progress import Progress
from bftcore.stats import NOT_SHOWN, Check, RateRow, exact_check


def missing_deploy_extras() -> list[str]:
    """The modules of the export stage (extras `onnx` and `llamacpp`) this Python lacks: without
    them the demo runs everything else and says what it left out."""
    import importlib.util

    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime", "llama_cpp"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:  # in sys.modules as None: deliberately hidden
            found = False
        if not found:
            missing.append(module)
    return missing


def keep_parity(parity: list[ex.Parity], path: Path) -> None:
    """The export parity rows in the run directory (none: a stale file of an earlier run goes)."""
    if parity:
        atomic_write_json(path, [p.to_dict() for p in parity])
    else:
        path.unlink(missing_ok=True)


def _export_root(model_dir: Path) -> Path:
    key = stage_key("export", {"model": model_digest(model_dir)})
    return model_dir.parent / "exports" / f"{model_dir.name}-{key}"


def exported_models(model_dir: Path, *, progress: Progress | None = None, only: tuple[str, ...] = (),
                    rebuild: bool = False) -> dict[str, Path]:
    """The model's GGUF and ONNX exports (label -> path), written once per model and exporter."""
    root = _export_root(model_dir)
    out: dict[str, Path] = {}
    for to, dtype, label in EXPORTS:
        if only and label not in only:
            continue
        path = root / (f"{dtype}.gguf" if to == "gguf" else "onnx")
        if rebuild or not path.exists():
            ex.export(model_dir, to, path, dtype, progress=progress)
        out[label] = path
    return out


def export_parity(tw: Any, model_dir: Path, artifacts: dict[str, Path], *,
                  rebuild: bool = False) -> list[ex.Parity]:
    """Each artifact against PyTorch on every held-out text (prompt in the chat template +
    response), cached beside the exports, one file per artifact."""
    root = _export_root(model_dir)
    dtypes = {label: dtype for _, dtype, label in EXPORTS}
    texts: list[Any] = []
    rows: list[ex.Parity] = []
    for label, path in artifacts.items():
        cache = root / f"parity-{label}.json"
        if cache.is_file() and not rebuild:
            rows += [ex.Parity(**p) for p in json.loads(cache.read_text())]
            continue
        texts = texts or ex.verify_texts(
            model_dir, [tw.data_dir / "harmful_heldout.jsonl", tw.data_dir / "benign_heldout.jsonl"], limit=100_000)
        mine = [replace(p, artifact=label) for p in ex.verify(model_dir, path, texts, dtypes[label])]
        atomic_write_json(cache, [p.to_dict() for p in mine])
        rows += mine
    return rows


def export_checks(rows: list[RateRow], parity: list[ex.Parity], model: str = COMPLETED,
                  labels: tuple[str, ...] = CHECKED_EXPORTS, prefix: str | None = None) -> list[Check]:
    """The export row: GGUF F16 (`full` only), Q8_0 and ONNX give every ASR row of PyTorch within 2 points, and
    their argmax agreement with PyTorch on the held-out set is >= 99%. Both compare two programs
    on the same inputs (a reproduction, not an estimate): exact counts, no interval. Rows where
    both sides are 0 tell nothing (a hardened model): when every row is such, the check says so
    instead of passing (the aligned model's rows, where the attacks succeed, are the test)."""
    ref = {(r.attack, r.k): r for r in rows
           if r.model == model and r.metric == "asr" and r.attack in HARDENING_ATTACKS}  # what artifacts meet
    checks = []
    for label in labels:
        name = f"{prefix or model} {label}"
        mine = {(r.attack, r.k): r for r in rows if r.model == name and r.metric == "asr"}
        both = [key for key in ref if key in mine]
        gaps = [(abs(mine[key].rate - ref[key].rate), key) for key in both if mine[key].x or ref[key].x]
        title = f"{name}: every ASR row within {100 * MAX_EXPORT_GAP:.0f} points of PyTorch"
        if len(both) < len(ref) or not both:
            checks.append(exact_check(title, False, f"{len(both)} of {len(ref)} rows measured"))
        elif not gaps:
            checks.append(Check(title, NOT_SHOWN, f"all {len(both)} rows are 0 on both sides: nothing to compare"))
        else:
            worst, (attack, k) = max(gaps)
            checks.append(exact_check(title, worst <= MAX_EXPORT_GAP + 1e-12,
                                      f"{len(gaps)} rows with successes of {len(both)}, largest gap "
                                      f"{100 * worst:.1f} points ({attack} k={k})"))
        if not parity:
            continue
        reader = "onnxruntime" if label == "onnx" else "llama.cpp"
        p = next((p for p in parity if p.artifact == label and p.reader == reader), None)
        checks.append(exact_check(
            f"{name}: argmax agreement with PyTorch >= {100 * MIN_AGREEMENT:.0f}% on held-out texts",
            p is not None and p.argmax_agreement >= MIN_AGREEMENT and p.token_mismatches == 0,
            "not measured" if p is None else
            f"{100 * p.argmax_agreement:.2f}% of {p.positions} positions, max |Δ logit| "
            f"{p.max_abs_logit:.2g}, token ids {'identical' if p.token_mismatches == 0 else 'differ'}"))
    return checks
