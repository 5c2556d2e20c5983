"""`bftcore demo`: the whole pipeline on the embedded toy world, and its expectations table.

The tables are drawn from the run's summary (the `--json` object), so a recorded run renders the
same text again: docs/gen_docs.py draws docs/demo.md from one.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

import click
from rich.console import Console

from bftcore.cli.common import (
    ARCH_CHOICE,
    bucket_table,
    comparison_table,
    console,
    emit_json,
    measures_table,
    parity_table,
    print_checks,
    progress_bars,
    rows_table,
    strict_option,
)
from bftcore.errors import CheckFailed

# the demo's methods (bftcore.demo.METHODS), listed here so that --help does not import torch
METHOD_CHOICES = ("bft", "sft", "qi-augment", "derta", "presto")


@click.command()
@click.option("--arch", type=ARCH_CHOICE, default="llama", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--rebuild", is_flag=True,
              help="Ignore every cache: rebuild the toy world, retrain, re-export and re-measure.")
@click.option("--full", is_flag=True,
              help="Also meet every model with the literature's attacks (RAP, deep prefill, restart, many-shot, "
                   "completion, decoding exploit, fine-tuning) and the continuous measures, and re-attack the "
                   "GGUF F16 and Q4_K_M exports too: ~12 min more, cold.")
@click.option("--method", "methods", multiple=True, type=click.Choice(METHOD_CHOICES),
              help="Train and compare only these methods (repeatable; default: ours and every baseline).")
@strict_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: rows, checks, index, models, parity.")
def demo(arch: str, seed: int, device: str, rebuild: bool, full: bool, methods: tuple[str, ...],
         strict: bool, as_json: bool) -> None:
    """The whole pipeline on the embedded toy world: builds (or reuses) it, attacks the base and
    aligned models, indexes their held-out responses, trains targeted completion and the
    baselines, exports and re-attacks, and prints the toy world's expectations (docs/toy-world.md),
    each decided at the 95% level: holds, fails, or not shown. `--full` adds the literature's
    attacks for every model; the whole comparison is benches/compare.py.

    Exits 0 when the pipeline ran, whatever the verdicts; 3 with --strict when one fails.

    \b
    Example:
      bftcore demo --arch qwen2
      bftcore demo --full --json > demo.json
      bftcore demo --method bft --method derta
    """
    from bftcore import demo as demo_run
    from bftcore.models import resolve_device

    t0 = time.perf_counter()
    with progress_bars() as bar:
        result = demo_run.run(arch, seed, device=str(resolve_device(device)), progress=bar, rebuild=rebuild,
                              methods=methods or demo_run.METHODS, full=full)
    summary = {**result.summary(), "seconds": round(time.perf_counter() - t0, 2)}
    if as_json:
        emit_json(summary)
    else:
        print_demo(summary, console)
    if strict and result.failed:
        raise CheckFailed(f"{len(result.failed)} expectation(s) of the demo failed")


def print_demo(summary: dict[str, Any], out: Console) -> None:
    """The demo's tables and verdicts, from its summary (`DemoResult.summary()`)."""
    from bftcore.export import Parity
    from bftcore.stats import Check, RateRow

    rows = [RateRow(**{k: r[k] for k in ("model", "arch", "attack", "k", "metric", "x", "n")})
            for r in summary["rows"]]
    models = list(dict.fromkeys(r.model for r in rows))
    settings = summary["settings"]
    out.print(summary["world"]["line"])
    out.print(rows_table([r for r in rows if r.model in ("base", "aligned")],
                         "attacks on held-out tasks (exact judge; sampled: T=0.9, top-p 0.6, 8 samples)"))
    deployed = [m for m in models if m.startswith("completed ")]
    repaired = ["aligned", *[m for m in models if m not in ("base", "aligned", *deployed)
                             and not m.startswith("aligned ")]]
    if len(repaired) > 1:
        out.print(comparison_table(
            rows, repaired,
            f"completion ({settings['complete']['steps']} steps, batch {settings['complete']['batch_size']}, "
            "same data for every method) against the baselines; x/n and rate % [95% Wilson]"))
    if deployed:
        out.print(comparison_table(
            rows, ["completed", *deployed],
            "the completed model deployed: PyTorch beside its GGUF exports in llama.cpp and its ONNX "
            "export in onnxruntime, same attacks; x/n and rate % [95% Wilson]"))
        out.print(comparison_table(
            rows, ["aligned", *[m for m in models if m.startswith("aligned ")]],
            "the same comparison on the aligned model, which the attacks break: PyTorch beside its "
            "Q8_0 GGUF in llama.cpp, same rows; x/n and rate % [95% Wilson]"))
        out.print(parity_table([Parity(**p) for p in summary["parity"]]))
    if summary["measures"]:
        out.print(measures_table(
            summary["measures"], repaired,
            "continuous measures: perplexity and KL(model || aligned) per token on benign held-out responses; "
            "refusal margin (log-prob per token, refusal minus harmful continuation, after k harmful tokens); "
            "the reference's mean rank (RAP's oracle, k=10) per position bucket; share of RAP tokens off the top-1"))
    out.print(bucket_table(summary["index"]["curves"], "index of held-out responses, per position bucket"))
    print_checks([Check(c["name"], c["status"], c["detail"]) for c in summary["checks"]], out)
    for why in summary["skipped"]:
        out.print(f"  skipped: {why}", markup=False, highlight=False)
    run_dir = summary["run_dir"]
    out.print(f"  every row and sample in {run_dir}/attacks; report: bftcore report {shlex.quote(run_dir)} "
              "--out report.html", markup=False, highlight=False)
    if not summary["full"]:
        out.print("  every model on the literature's attacks: bftcore demo --full; every method, budget and "
                  "world, with the ablations: python benches/compare.py", markup=False, highlight=False)
