"""`bftcore report`: a run directory as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from bftcore.cli.common import console, emit_json


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The HTML file to write.")
@click.option("--title", help="Page title (default: 'bftcore report: ' and the run directory's name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary: what was found, plots, bytes.")
def report(run_dir: Path, out: Path, title: str | None, as_json: bool) -> None:
    """Gather a run directory into one self-contained HTML page: index curves and bucket tables
    (*.bfti), attack tables with their ASR-vs-k plots (results.parquet), training loss curves
    (train_log.jsonl) and export parity (parity.json). Plots are inlined; the page loads nothing
    else and needs no JavaScript.

    \b
    Example:
      bftcore report ~/.cache/bftcore/runs/demo-llama-seed0-KEY --out report.html
      bftcore report runs/exp1 --out exp1.html --title "exp1: bft vs sft" --json
    """
    from bftcore.report import build_report

    summary = build_report(run_dir, out, title)
    if as_json:
        emit_json(summary.to_dict())
        return
    rows = f" of {summary.attack_rows} rows"
    found = [f"{n} {one if n == 1 else many}" for n, one, many in (
        (summary.indexes, "index", "indexes"),
        (summary.attack_tables, "attack table" + rows, "attack tables" + rows),
        (summary.training_runs, "training run", "training runs"),
        (summary.parity_tables, "parity table", "parity tables")) if n]
    console.print(f"report {out}: {', '.join(found)}; {summary.plots} plots, {summary.tables} tables, "
                  f"{summary.bytes / 1024:.0f} KiB", markup=False, highlight=False)
