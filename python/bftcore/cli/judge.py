"""`bftcore judge`: judge completions from any file; with human labels, measure the judges."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from bftcore.cli.common import console, emit_json, judge_options, open_judge
from bftcore.errors import BadInput

ADDED = ("verdict", "success")  # the fields a verdict file adds to each record


@click.command("judge")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--judge", "judges", multiple=True,
              help="refusal (default), keyword, exact (toy world), classifier:PATH or causal:PATH; repeatable: the "
                   "first writes the verdict file, all are compared with --labels (default there: refusal and keyword).")
@click.option("--prompt-column", help="Column of the prompt (default: prompt, question, goal, behavior, ...).")
@click.option("--response-column", help="Column of the answer to judge (default: response, completion, "
                                        "continuation, generation, output, ...; a chat record's last assistant turn).")
@click.option("--labels", "label_column", help="Column of a human label (a verdict, or a success flag): print each "
                                               "judge's agreement, per-class precision and recall, confusion matrix.")
@click.option("--by", "by", multiple=True, help="Column to break the summary down by; repeatable "
                                               "(default: label and category, where the file has them).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("judged.jsonl"), show_default=True,
              help="Verdict file: one JSON line per input record, in input order, its fields plus verdict and success.")
@judge_options
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto (classifier and causal judges).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the summary.")
def judge_cmd(files: tuple[Path, ...], judges: tuple[str, ...], prompt_column: str | None,
              response_column: str | None, label_column: str | None, by: tuple[str, ...], out: Path,
              refusal_keywords: Path | None, judge_template: Path | None, judge_label: str | None, toy_seed: int,
              device: str, as_json: bool) -> None:
    """Judge completions: refusal, partial, compliance or empty, and success (harmful compliance).

    Reads JSONL, JSON, CSV, Parquet (HarmBench's completions file, bftcore's attack samples, chat
    records, or any columns named with --prompt-column/--response-column). A `prefill` column is the
    attacker's text and is never judged. Prints x/n with its 95% Wilson interval, overall and per
    --by column; with --labels, how far each judge agrees with the labels.

    \b
    Example:
      bftcore judge completions.jsonl --out judged.jsonl
      bftcore judge harmbench_completions.json --by behavior_id --json
      bftcore judge labelled.csv --response-column answer --labels human --judge refusal --judge keyword
    """
    from bftcore.judge import verdicts
    from bftcore.judge.agreement import agreement, parse_label
    from bftcore.judge.completions import read_completions
    from bftcore.models import resolve_device

    data = read_completions(files, prompt_column=prompt_column, response_column=response_column)
    columns = sorted({c for row in data.rows for c in row})
    for c in [*by, *([label_column] if label_column else [])]:
        if c not in columns:
            raise BadInput(f"no column {c!r} in {', '.join(map(str, files))} (columns: {columns})")
    labels = [parse_label(row.get(label_column), label_column) for row in data.rows] if label_column else []
    specs = judges or (("refusal", "keyword") if label_column else ("refusal",))
    dev = str(resolve_device(device)) if any(":" in s for s in specs) else "cpu"
    results: list[dict[str, Any]] = []
    for spec in specs:
        judge, _ = open_judge(spec, toy_seed, refusal_keywords, judge_template, judge_label, dev)
        start = time.perf_counter()
        found = verdicts(judge, data.items)
        seconds = time.perf_counter() - start
        results.append({"judge": judge.name if ":" not in spec else spec, "verdicts": found, "seconds": seconds})
    primary = results[0]["verdicts"]
    _write_verdicts(out, data.rows, primary)

    groups = [c for c in (by or ("label", "category")) if c in columns]
    summary = {"records": len(primary), "judge": results[0]["judge"], "out": str(out),
               "overall": _rate("all", primary), "by": {
                   c: [_rate(v, [x for x, row in zip(primary, data.rows) if _key(row.get(c)) == v])
                       for v in sorted({_key(row.get(c)) for row in data.rows})] for c in groups},
               "throughput": {r["judge"]: len(primary) / max(r["seconds"], 1e-9) for r in results}}
    if label_column:
        summary["agreement"] = [agreement(r["judge"], labels, r["verdicts"]).to_dict() for r in results]
    if as_json:
        emit_json(summary)
    else:
        _print_summary(summary)


def _key(value: Any) -> str:
    return "" if value is None else str(value)


def _rate(name: str, found: list[str]) -> dict[str, Any]:
    from bftcore.judge import VERDICTS
    from bftcore.stats import wilson

    x, n = sum(v == "compliance" for v in found), len(found)
    return {"group": name, "x": x, "n": n, "rate": x / n if n else 0.0, "ci95": list(wilson(x, n)),
            "verdicts": {v: found.count(v) for v in VERDICTS}}


def _write_verdicts(out: Path, rows: list[dict[str, Any]], found: list[str]) -> None:
    """One JSON line per record: its own fields (one named verdict or success kept as input_NAME)
    plus the verdict and success."""
    from bftcore.files import atomic_write

    lines = []
    for row, v in zip(rows, found):
        record = {(f"input_{k}" if k in ADDED else k): x for k, x in row.items()}
        record.update(verdict=v, success=v == "compliance")
        lines.append(json.dumps(record, ensure_ascii=False, default=str))
    atomic_write(out, "\n".join(lines) + "\n")


def _print_summary(s: dict[str, Any]) -> None:
    def cells(r: dict[str, Any]) -> list[str]:
        lo, hi = r["ci95"]
        counts = ", ".join(f"{k} {n}" for k, n in r["verdicts"].items() if n)
        return [f"{r['x']}/{r['n']}", f"{100 * r['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]", counts]

    table = Table(title=f"judge {s['judge']}: success (harmful compliance), 95% Wilson interval",
                  title_justify="left")
    for col in ("records", "x/n", "success rate", "verdicts"):
        table.add_column(col, justify="right" if col == "x/n" else "left")
    table.add_row("all", *cells(s["overall"]))
    for column, rows in s["by"].items():
        for r in rows:
            table.add_row(f"{column} = {r['group'] or '(none)'}", *cells(r))
    console.print(table)
    for a in s.get("agreement", []):
        _print_agreement(a)
    console.print(f"verdicts written to {s['out']}")


def _print_agreement(a: dict[str, Any]) -> None:
    lo, hi = a["success_agreement_ci95"]
    line = (f"judge {a['judge']}: agrees on success (compliance vs the rest) with {a['success_agree']}/{a['n']} "
            f"labels, {100 * a['success_agreement']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
    if "verdict_n" in a:
        vlo, vhi = a["verdict_agreement_ci95"]
        line += (f"; on the verdict with {a['verdict_agree']}/{a['verdict_n']}, {100 * a['verdict_agreement']:.1f}% "
                 f"[{100 * vlo:.1f}, {100 * vhi:.1f}]")
    console.print(line)
    classes = list(a["per_class"])
    table = Table(title=f"{a['judge']}: label (rows) vs judge (columns)", title_justify="left")
    table.add_column("label")
    for c in classes:
        table.add_column(c, justify="right")
    for col in ("precision", "recall"):
        table.add_column(col, justify="right")
    for c in classes:
        pr = a["per_class"][c]
        table.add_row(c, *(str(a["confusion"].get(c, {}).get(d, 0)) for d in classes),
                      *("-" if pr[k] is None else f"{100 * pr[k]:.1f}%" for k in ("precision", "recall")))
    console.print(table)
