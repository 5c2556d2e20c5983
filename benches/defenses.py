"""Every defense against every attack on the toy world: the full table, at two training budgets and
over three training seeds.

    python benches/defenses.py [--arch llama] [--budgets 150 30] [--seeds 0 1 2] [--out FILE]

Each recovery-trained method (ours, sft, qi-augment, derta, presto) trains with the demo's data,
batch and learning rate for each budget and seed (`demo.DEMO_COMPLETE` with its steps and seed
replaced); the aligned model, contrastive decoding and Any-Depth Alignment need no training and are
measured once. Every model then meets the demo's rows (`demo.hardening_suite`: direct, prefill at
k = 5..40, the adaptive prefill, the unseen style, sampled decoding, benign exact-match) and the
literature's (`demo.literature_suite`: RAP and its oracle, deep prefill, restart, many-shot, the
completion attack, the decoding exploit, the fine-tuning attack, the continuous measures) and the
refusal rate after benign prefixes (`demo.benign_prefill_suite`).

Resumable: every trained model and every measured row is cached by its inputs (the demo's caches),
so a run that stops goes on where it was. Prints Markdown: per budget, one row per attack and one
column per method, the pooled x/n over the seeds with its 95% Wilson interval and the range of the
per-seed rates; then the continuous measures (mean over seeds).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

TRAINED = ("bft", "sft", "qi-augment", "derta", "presto")
MEASURES = [("refusal-margin", 10, None), ("refusal-margin", 40, None), ("reference-rank", 10, "9-16"),
            ("reference-rank", 10, "65-128"), ("kl-to-aligned", None, None), ("perplexity", None, None)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--budgets", type=int, nargs="+", default=[150, 30])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    a = ap.parse_args()

    from bftcore import demo
    from bftcore.progress import plain_lines
    from bftcore.toy import toy_world

    progress = plain_lines(lambda line: print(line, file=sys.stderr, flush=True), 60.0)
    tw = toy_world(0).build([a.arch])
    aligned, base = tw.model_dir(a.arch, "aligned"), tw.model_dir(a.arch, "base")

    def measured(path: Path, name: str, **kw: Any) -> Any:
        result = demo.hardening_suite(tw, a.arch, path, name, progress=progress, **kw)
        result.extend(demo.literature_suite(tw, a.arch, path, name, progress=progress, **kw))
        result.extend(demo.benign_prefill_suite(tw, a.arch, path, name, progress=progress, **kw))
        return result

    untrained = {"aligned": measured(aligned, "aligned"),
                 demo.CONTRAST: measured(aligned, demo.CONTRAST, contrast_base=base),
                 demo.ANY_DEPTH: measured(aligned, demo.ANY_DEPTH, ada=True)}
    out = []
    for steps in a.budgets:
        # method -> seed -> result
        runs: dict[str, dict[int, Any]] = defaultdict(dict)
        for seed in a.seeds:
            cfg = replace(demo.DEMO_COMPLETE, steps=steps, seed=seed)
            models = demo.completed_models(tw, a.arch, TRAINED, cfg=cfg, progress=progress)
            for name, path in models.items():
                runs[name][seed] = measured(path, name)
        for name, result in untrained.items():
            runs[name] = {a.seeds[0]: result}  # no training: measured once, counted once
        out.append(table(runs, steps, a.seeds))
    text = "\n\n".join(out)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


def table(runs: dict[str, dict[int, Any]], steps: int, seeds: list[int]) -> str:
    order = ["aligned", "completed", *[m for m in TRAINED if m != "bft"], "contrastive", "any-depth"]
    columns = [m for m in order if m in runs]
    cells: dict[tuple[str, int | None, str], dict[str, list[Any]]] = {}
    for model in columns:
        for seed in runs[model]:
            for r in runs[model][seed].rows:
                cells.setdefault((r.attack, r.k, r.metric), {}).setdefault(model, []).append(r)
    lines = [(f"### {steps} steps x batch 32, training seeds {', '.join(map(str, seeds))} (aligned, contrastive "
             "and any-depth: no training, one measurement)"), "",
             "| attack | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for (attack, k, metric), by_model in cells.items():
        name = attack if metric == "asr" else f"{attack} ({metric.replace('_', ' ')})"
        lines.append(f"| {name}{'' if k is None else f' k={k}'} | " + " | ".join(
            pooled(by_model.get(m, [])) for m in columns) + " |")
    lines += ["", "| measure (mean over seeds) | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for metric, k, bucket in MEASURES:
        values = []
        for m in columns:
            got = [x["value"] for seed in runs[m] for x in runs[m][seed].measures
                   if x["metric"] == metric and x.get("k") == k and x.get("bucket") == bucket]
            values.append(f"{sum(got) / len(got):.3g}" if got else "")
        where = "".join(f" {n}={v}" for n, v in (("k", k), ("bucket", bucket)) if v is not None)
        lines.append(f"| {metric}{where} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def pooled(rows: list[Any]) -> str:
    """x/n summed over the seeds, its 95% Wilson interval, and the range of the per-seed rates."""
    from bftcore.stats import RateRow

    if not rows:
        return ""
    total = RateRow(rows[0].model, rows[0].arch, rows[0].attack, rows[0].k, rows[0].metric,
                    sum(r.x for r in rows), sum(r.n for r in rows))
    low, high = total.ci
    rates = [100 * r.rate for r in rows]
    spread = f"; {min(rates):.0f}-{max(rates):.0f}" if max(rates) > min(rates) else ""
    return f"{total.x}/{total.n} {100 * total.rate:.1f} [{100 * low:.1f},{100 * high:.1f}]{spread}"


if __name__ == "__main__":
    main()
