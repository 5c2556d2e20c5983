"""The tuning pass of ours: variants of targeted completion trained on the tuning world only (world
seed 0 of the comparison's world), at one small budget, beside derta (the baseline that leads there).

    python benches/tune.py [--world deep] [--budget 10] [--variants linear "rank lam 0.3" ...] [--out benches/tune]

Every variant is our method with some settings changed (VARIANTS); each trains `--budget` steps with
the demo's data, batch and learning rate and meets compare.py's rows (the demo's hardening rows,
over-refusal, the held-out verb). The table keeps the rows that separate them: the deep prefills,
the unseen style, the held-out verb, and what it costs (benign exact-match, lookalike refusals),
a row per variant.
Nothing here reads a world the comparison reports (compare.py's TUNING_WORLD only); results.json
keeps every measured variant keyed by its inputs, so a run resumes and `--report-only` rewrites
tune.md (a table per budget measured) from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import compare  # the comparison's world, training and measuring, shared

# name -> (CompleteConfig changes, k and weights guided by the training index). The pass started from
# the linear penalty at lam 1, the default then; its ablations are of that form. It chose the rank
# form at lam 0.3, the default now.
LINEAR = compare.LINEAR
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "linear": (LINEAR, True),
    "no-penalty": ({**LINEAR, "penalty": "off"}, True),
    "linear, no teacher": ({**LINEAR, "teacher": "off"}, True),
    "derta": ({"method": "derta"}, True),
    "linear, k by position": ({**LINEAR, "k_draw": "position"}, True),
    "rank lam 1": ({"penalty": "rank", "lam": 1.0}, True),
    "rank lam 0.3": ({"penalty": "rank", "lam": 0.3}, True),
    "rank lam 0.1": ({"penalty": "rank", "lam": 0.1}, True),
    "rank lam 0.2": ({"penalty": "rank", "lam": 0.2}, True),
    "rank lam 0.3 guard 3": ({"penalty": "rank", "lam": 0.3, "guard": 3.0}, True),
}
# the table's columns: (label, attack, k); the metric is ASR unless the label names one
COLUMNS = [("k=40", "prefill", 40), ("k=80", "prefill", 80), ("k=160", "prefill", 160),
           ("unseen k=10", "prefill:unseen", 10), ("unseen k=40", "prefill:unseen", 40),
           ("unseen k=160", "prefill:unseen", 160), ("verb k=80", "prefill [held-out verb]", 80),
           ("verb k=160", "prefill [held-out verb]", 160), ("benign EM", "benign", None),
           ("lookalike refused", "over-refusal:lookalike", None)]

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", choices=compare.WORLDS, default="deep")
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--budget", type=int, default=10)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("tune"))
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    results = compare.Results(a.out / "results.json")
    if not a.report_only:
        run(a, results)
    budgets = sorted({e["budget"] for e in results.entries.values()})
    text = "\n\n".join(table(results, b, list(VARIANTS)) for b in budgets)
    from bftcore.files import atomic_write

    atomic_write(a.out / "tune.md", text + "\n")
    print(text)


def run(a: argparse.Namespace, results: compare.Results) -> None:
    from bftcore import demo
    from bftcore.cache import settings
    from bftcore.progress import plain_lines
    from bftcore.toy import toy_world

    progress = plain_lines(lambda line: print(line, file=sys.stderr, flush=True), 60.0)
    world_cfg, attack = compare.world_settings(a.world)
    tw = toy_world(compare.TUNING_WORLD, settings=world_cfg)
    tw.build([a.arch], device=a.device, progress=progress)
    root, data, profile = demo.completion_inputs(tw, a.arch, device=a.device, progress=progress)
    for name in a.variants:
        change, guided = VARIANTS[name]
        cfg = compare.row_config(change, a.budget, a.device)
        inputs = compare.inputs_digest(tw, a.arch, attack, complete=settings(cfg), guided=guided, literature=False)
        kept = results.entries.get(f"{compare.TUNING_WORLD}/steps/{a.budget}/{name}")
        if kept is not None and kept["inputs"] == inputs:
            continue
        path, seconds = compare.train(tw, a.arch, root, data, profile, name, cfg, guided, device=a.device,
                                      progress=progress)
        results.add({"world": compare.TUNING_WORLD, "regime": "steps", "budget": a.budget, "method": name,
                     "steps": a.budget, "seconds": seconds, "inputs": inputs,
                     **compare.measured(tw, a.arch, path, name, attack, literature=False, device=a.device,
                                        progress=progress)})


def table(results: compare.Results, budget: int, names: list[str]) -> str:
    """A row per variant measured at `budget`: each column's rate % [95% Wilson] (n in the header)."""
    from bftcore.stats import wilson

    entries = {e["method"]: e for e in results.where(budget=budget) if e["method"] in names}
    rows = [n for n in names if n in entries]
    if not rows:
        return ""
    found = {n: {(r["attack"], r["k"]): r for r in entries[n]["rows"]} for n in rows}
    sizes = {label: next((found[n][(a, k)]["n"] for n in rows if (a, k) in found[n]), 0) for label, a, k in COLUMNS}
    lines = [f"Tuning world {compare.TUNING_WORLD}, {budget} steps: ASR % [95% Wilson] unless named (n).", "",
             "| variant | " + " | ".join(f"{label} ({sizes[label]})" for label, *_ in COLUMNS) + " | s |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for n in rows:
        cells = []
        for _, attack, k in COLUMNS:
            r = found[n].get((attack, k))
            if r is None:
                cells.append("")
                continue
            low, high = wilson(r["x"], r["n"])
            cells.append(f"{100 * r['x'] / r['n']:.1f} [{100 * low:.1f}, {100 * high:.1f}]")
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {entries[n]['seconds']:.0f} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main()
