"""The comparison: every defense against every attack of the harness, over training budgets and
toy-world seeds, at equal steps and at equal wall-clock, with the ablations of ours.

    python benches/compare.py [--preset cpu|gpu] [--world deep|default] [--arch llama] [--worlds 0 1 2]
                              [--budgets 10 30] [--literature-budgets 30] [--wall-clock 10]
                              [--out benches/compare] [--report-only]

The world: the deep toy world by default (`toy.DEEP`: answers of ~270 tokens, steps of each held-out
task never seen in training, one harmful verb held out whole, the unseen style known to the base
only), attacked to k = 160 and by the prefill of all but the last 16 tokens, far beyond the
prefixes the baselines train on (Qi et al.'s augmentation: up to 100 tokens); or the demo's world.

Defenses: ours (`bft`, the defaults: the rank form of the penalty at lam 0.3, chosen on world 0 by
benches/tune.py) and three ablations of it (`bft-no-index`: k drawn with every position bucket
equally likely and one position weight for all, the index's guidance off; `bft-no-penalty`: the
adaptive base-favored penalty off; `bft-no-teacher`: the hybrid-teacher distillation off); ours
with the linear penalty, the earlier default (`bft-linear`, `--penalty linear --lam 1`), and its
index ablation (`bft-linear-no-index`); the recovery-trained baselines (sft, qi-augment, derta, presto), all on the demo's data, batch and
learning rate; and what trains nothing, measured once per world: the aligned model, contrastive
decoding and Any-Depth Alignment.

Every trained model meets the demo's hardening rows (direct, prefill at every k, rank-prefill,
the unseen style, sampled decoding, benign exact-match), the refusal rate of direct requests per
label (over-refusal: benign, lookalike benign tasks on harmful objects, harmful), the same ASR rows
on the harmful verb held out whole, and the retention of the base by it per position bucket on the
held-out harmful responses; at the literature budgets also the literature's
attacks with the fine-tuning attack, the refusal margin, KL to the aligned model and perplexity
(`demo.literature_suite`), and the refusal rate after benign prefixes.

Equal steps: every method trains each budget's steps. Equal wall-clock: a `--wall-clock` budget B
gives every method the seconds ours took for B steps, that is round(B * s_bft / s_method) steps, s
the seconds per step each method took at the largest equal-steps budget (measured here, this run's
machine and load).

World seed 0 is where the method's settings were chosen (the tuning world): the tables pool the other
worlds (x/n summed over them, its 95% Wilson interval, the range of the per-world rates) and show the
tuning world apart. Resumable: every trained model and every measured row is cached by its inputs,
and results.json keeps every measured model with a digest of its inputs, so a run on another
machine (empty caches) measures only what the file lacks; results.json, the tables (compare.md) and
the plot (asr_vs_budget.png) go to --out (default benches/compare/, kept in git); `--report-only`
rewrites the tables and the plot from results.json for the plan's worlds and budgets, measuring nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # this 2-core machine, sized to ~3 hours: two budgets, the literature's attacks at the larger, one
    # wall-clock budget (a deep world builds in 13 min; a model trains and is measured in 1.5-4 min)
    "cpu": {"worlds": [0, 1, 2], "budgets": [10, 30], "literature_budgets": [30], "wall_clock": [10],
            "device": "cpu"},
    # the lent GPU: the grid whole
    "gpu": {"worlds": [0, 1, 2], "budgets": [10, 30, 100, 300], "literature_budgets": [10, 30, 100, 300],
            "wall_clock": [10, 30, 100, 300], "device": "cuda"},
}
TUNING_WORLD = 0
# row name -> (changes to the demo's CompleteConfig, k and weights guided by the training index)
LINEAR = {"penalty": "linear", "lam": 1.0}  # the earlier default penalty
TRAINED: dict[str, tuple[dict[str, Any], bool]] = {
    "bft": ({}, True),
    "bft-no-index": ({}, False),
    "bft-no-penalty": ({"penalty": "off"}, True),
    "bft-no-teacher": ({"teacher": "off"}, True),
    "bft-linear": (LINEAR, True),
    "bft-linear-no-index": (LINEAR, False),
    "sft": ({"method": "sft"}, True),
    "qi-augment": ({"method": "qi-augment"}, True),
    "derta": ({"method": "derta"}, True),
    "presto": ({"method": "presto"}, True),
}
ABLATIONS = ("bft-no-index", "bft-no-penalty", "bft-no-teacher", "bft-linear-no-index")  # dotted in the plot
UNTRAINED = ("aligned", "contrastive", "any-depth")
# the panels of the ASR-vs-budget figure: (attack, k)
PANELS = [("prefill", 10), ("prefill", 40), ("prefill", 160), ("rank-prefill", 40), ("prefill:unseen", 20),
          ("prefill-sampled", 10), ("rap", 40), ("deep-prefill", 128), ("restart", 10), ("many-shot-1-prefill", 10),
          ("ft-harmful-sft-prefill", 10), ("prefill-all-but-16", None)]
RETENTION_BUCKETS = ("1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65-128", "129-256")
WORLDS = ("default", "deep")


def world_settings(name: str) -> tuple[Any, Any]:
    """(toy-world settings, attack settings) of a world: the demo's, or the deep world with prefills
    to k = 160 and deep prefill at 128 (many-shot: one shot, what its context holds)."""
    from bftcore import demo
    from bftcore.toy.build import DEEP, ToySettings

    if name == "default":
        return ToySettings(), demo.DEMO_ATTACK
    return DEEP, replace(demo.DEMO_ATTACK, ks=(5, 10, 20, 40, 80, 160), deep_ks=(128,), shots=(1,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--world", choices=sorted(WORLDS), default="deep")
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--worlds", type=int, nargs="+")
    ap.add_argument("--budgets", type=int, nargs="+", help="equal-steps budgets")
    ap.add_argument("--literature-budgets", type=int, nargs="*", help="budgets that meet the literature's attacks too")
    ap.add_argument("--wall-clock", type=int, nargs="*", help="equal wall-clock budgets, in steps of ours")
    ap.add_argument("--methods", nargs="+", choices=list(TRAINED), default=list(TRAINED))
    ap.add_argument("--device")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("compare"))
    ap.add_argument("--report-only", action="store_true", help="rewrite compare.md and the plot from results.json")
    ap.add_argument("--select", nargs="+", metavar="ATTACK[@K]",
                    help="with --report-only: print only these rows and --methods (and the aligned model), per budget")
    a = ap.parse_args()
    plan = {k: v if getattr(a, k) is None else getattr(a, k) for k, v in PRESETS[a.preset].items()}
    from bftcore.progress import plain_lines

    progress = plain_lines(lambda line: print(line, file=sys.stderr, flush=True), 60.0)
    results = Results(a.out / "results.json")
    plan["world"] = a.world
    if a.select:  # a selection of the report's tables, printed (nothing measured, nothing written)
        rows = {(r.split("@")[0], int(r.split("@")[1]) if "@" in r else None) for r in a.select}
        held_out = [w for w in plan["worlds"] if w != TUNING_WORLD]
        for regime, budgets in (("steps", plan["budgets"]), ("wall-clock", plan["wall_clock"])):
            for budget in sorted(budgets):
                text = asr_table(results, regime, budget, held_out, methods=["aligned", *a.methods], rows=rows)
                if text:
                    print(f"{regime} {budget}, worlds {', '.join(map(str, held_out))}\n\n{text}\n")
        return
    for world in [] if a.report_only else plan["worlds"]:
        run_world(world, a.arch, plan, a.methods, results, progress)
        report(results, plan, a.out)
    report(results, plan, a.out)
    print((a.out / "compare.md").read_text())


class Results:
    """Every measured model: a JSON list rewritten whole (atomically) after each, so a stopped run
    keeps what it measured; keyed by (world, regime, budget, method)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            self.entries = {self.key(e): e for e in json.loads(path.read_text())}

    @staticmethod
    def key(e: dict[str, Any]) -> str:
        return f"{e['world']}/{e['regime']}/{e['budget']}/{e['method']}"

    def add(self, entry: dict[str, Any]) -> None:
        from bftcore.files import atomic_write_json

        self.entries[self.key(entry)] = entry
        atomic_write_json(self.path, sorted(self.entries.values(), key=self.key))

    def where(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.entries.values() if all(e[k] == v for k, v in match.items())]


def run_world(world: int, arch: str, plan: dict[str, Any], methods: list[str], results: Results,
              progress: Any) -> None:
    """Measure what results.json lacks for one world. An entry is kept when its inputs (`inputs_digest`)
    are those of this run: a run on a fresh machine, whose caches are empty, goes on from the file alone."""
    from bftcore import demo
    from bftcore.cache import settings
    from bftcore.toy import toy_world

    device = plan["device"]
    world_cfg, attack = world_settings(plan["world"])
    tw = toy_world(world, settings=world_cfg)  # built only when something is measured
    built: dict[str, Any] = {}

    def ready() -> dict[str, Any]:
        if not built:
            tw.build([arch], device=device, progress=progress)
            built.update(zip(("root", "data", "profile"),
                             demo.completion_inputs(tw, arch, device=device, progress=progress)))
        return built

    def kept(regime: str, budget: int, name: str, inputs: str) -> dict[str, Any] | None:
        e = results.entries.get(f"{world}/{regime}/{budget}/{name}")
        return e if e is not None and e.get("inputs") == inputs else None

    base, aligned = tw.model_dir(arch, "base"), tw.model_dir(arch, "aligned")
    for name, kw in {"aligned": {}, "contrastive": {"contrast_base": base}, "any-depth": {"ada": True}}.items():
        inputs = inputs_digest(tw, arch, attack, method=name)
        if kept("none", 0, name, inputs) is None:
            ready()
            results.add({"world": world, "regime": "none", "budget": 0, "method": name, "steps": 0, "seconds": 0.0,
                         "inputs": inputs, **measured(tw, arch, aligned, name, attack, literature=True, device=device,
                                                      progress=progress, **kw)})

    def trained(name: str, steps: int, regime: str, budget: int) -> dict[str, Any]:
        literature = budget in plan["literature_budgets"]
        change, guided = TRAINED[name]
        cfg = row_config(change, steps, device)
        inputs = inputs_digest(tw, arch, attack, complete=settings(cfg), guided=guided, literature=literature)
        entry = kept(regime, budget, name, inputs)
        if entry is None:
            b = ready()
            path, seconds = train(tw, arch, b["root"], b["data"], b["profile"], name, cfg, guided,
                                  device=device, progress=progress)
            entry = {"world": world, "regime": regime, "budget": budget, "method": name, "steps": steps,
                     "seconds": seconds, "inputs": inputs,
                     **measured(tw, arch, path, name, attack, device=device, progress=progress, literature=literature)}
            results.add(entry)
        return entry

    per_step: dict[str, float] = {}
    largest = max(plan["budgets"])
    for steps in sorted(plan["budgets"]):
        for name in methods:
            entry = trained(name, steps, "steps", steps)
            if steps == largest:
                per_step[name] = entry["seconds"] / steps
    for budget in plan["wall_clock"]:
        if "bft" not in per_step:
            break
        for name in methods:
            steps = max(1, round(budget * per_step["bft"] / per_step[name]))
            trained(name, steps, "wall-clock", budget)


def row_config(change: dict[str, Any], steps: int, device: str) -> Any:
    """The demo's completion settings with `change`, at `steps`, in the device's precision."""
    from bftcore import demo
    from bftcore.precision import resolve_dtype

    return replace(demo.DEMO_COMPLETE, steps=steps, dtype=resolve_dtype(demo.DEMO_COMPLETE.dtype, device), **change)


def inputs_digest(tw: Any, arch: str, attack: Any, **what: Any) -> str:
    """What an entry of results.json was measured from: the world, the attack settings, the versions
    of the stages that train and measure, and `what` (the method, or a trained model's settings,
    guidance and literature flag; not its row name, so a renamed row keeps its entries)."""
    from bftcore.cache import VERSIONS, settings
    from bftcore.files import json_digest

    versions = {stage: VERSIONS[stage] for stage in ("toy-world", "completion", "attack-rows")}
    return json_digest({"world": tw.settings.key(), "arch": arch, "attack": settings(attack),
                        "versions": versions, **what})


def train(tw: Any, arch: str, root: Path, data: Any, profile: Any, name: str, cfg: Any, guided: bool, *,
          device: str, progress: Any) -> tuple[Path, float]:
    """The model of completion settings `cfg` (cached by its settings; `guided`: k and weights from
    the training index, else every bucket alike) and the seconds its training took (the run card's:
    the seconds of the run that finished it; `name` for the log only). A model is named by what it
    was trained from, so rows of the same settings (here or in tune.py) share it."""
    from bftcore import complete as cp

    dest = root / "compare" / (cfg.key() + ("" if guided else "-uniform"))
    if not dest.is_dir():
        prof = profile if guided else cp.RetentionProfile.uniform(profile.edges)
        t0 = time.perf_counter()
        cp.complete(tw.model_dir(arch, "base"), tw.model_dir(arch, "aligned"), data, dest, cfg, profile=prof,
                    device=device, progress=progress, index_path=str(root / "train.bfti"))
        print(f"{name}: {cfg.steps} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    card = json.loads((dest / cp.CARD).read_text())
    return dest, float(card["seconds_this_run"])


def measured(tw: Any, arch: str, path: Path, name: str, attack: Any, *, literature: bool, device: str,
             progress: Any, **kw: Any) -> dict[str, Any]:
    """A model's rows and measures (the demo's cached suites) and its retention curve."""
    from bftcore import demo

    kw.update(device=device, progress=progress, attack=attack)
    res = demo.hardening_suite(tw, arch, path, name, **kw)
    res.extend(demo.over_refusal_suite(tw, arch, path, name, **kw))
    if literature:
        res.extend(demo.literature_suite(tw, arch, path, name, **kw))
        res.extend(demo.benign_prefill_suite(tw, arch, path, name, **kw))
    kw = {k: v for k, v in kw.items() if k in ("contrast_base", "ada")}
    # a decoding-time defense has no distribution of its own to index: no retention curve
    retention = None if kw else retention_curve(tw, arch, path, device=device, progress=progress)
    return {"rows": [r.to_dict() for r in res.rows] + held_out_verb_rows(res, tw.world), "measures": res.measures,
            "retention": retention, "literature": literature}


def held_out_verb_rows(res: Any, world: Any) -> list[dict[str, Any]]:
    """Each ASR row again on the prompts of the harmful verbs held out whole (attack name + " [held-out
    verb]"), from the row's samples; none in a world without."""
    from bftcore.stats import RateRow

    rows = {(r.attack, r.k): r for r in res.rows if r.metric == "asr"}
    groups: dict[tuple[str, Any], list[Any]] = {}
    for s in res.samples if world.heldout_verbs else []:
        task = world.task_of(s.record)
        if task is not None and task.family == "harmful":
            groups.setdefault((s.attack, s.k), []).append((s, task.verb in world.heldout_verbs))
    out = []
    for (attack, k), samples in groups.items():
        row = rows.get((attack, k))
        if row is None or len(samples) != row.n:  # samples that are not this row's trials
            continue
        mine = [s for s, held in samples if held]
        out.append(RateRow(row.model, row.arch, f"{attack} [held-out verb]", k, "asr",
                           sum(s.success for s in mine), len(mine)).to_dict())
    return out


def retention_curve(tw: Any, arch: str, model: Path, *, device: str, progress: Any) -> dict[str, float]:
    """Mean retention of the base by `model` per position bucket on the held-out harmful responses
    (the index of base vs this model): a deep defense keeps it low past the first tokens."""
    from bftcore import index as bfti
    from bftcore.cache import model_digest, settings, stage_key
    from bftcore.corpus import read_corpus
    from bftcore.demo import index_records
    from bftcore.files import file_digest
    from bftcore.score import ScoreConfig

    data = tw.data_dir / "harmful_heldout.jsonl"
    base = tw.model_dir(arch, "base")
    key = stage_key("attack-rows", {"retention": True, "base": model_digest(base), "model": model_digest(model),
                                     "data": file_digest(data), "score": settings(ScoreConfig())})
    path = tw.root / "completed" / "measured" / f"{arch}-retention-{key}.bfti"
    index = bfti.Index(path) if path.is_file() else index_records(
        read_corpus([data])[0], base, model, path, device=device, progress=progress)
    return {r["positions"]: r["mean_retain"] for r in index.curves().iter_rows(named=True)
            if r["label"] == "harmful" and r["count"]}


# ---- the report --------------------------------------------------------------------------------
def report(results: Results, plan: dict[str, Any], out: Path) -> None:
    from bftcore.files import atomic_write

    held_out = [w for w in plan["worlds"] if w != TUNING_WORLD]
    parts = [(f"Worlds reported: {', '.join(map(str, held_out)) or 'none'} (pooled); tuning world "
              f"{TUNING_WORLD} apart. Cells: x/n summed over the worlds, rate % [95% Wilson], and the range "
              "of the per-world rates when they differ.")]
    for regime, budgets in (("steps", plan["budgets"]), ("wall-clock", plan["wall_clock"])):
        for budget in sorted(budgets):
            for worlds, tag in ((held_out, "reported worlds"), ([TUNING_WORLD], "tuning world")):
                text = asr_table(results, regime, budget, worlds)
                if text:
                    what = "steps" if regime == "steps" else "steps of ours' wall-clock"
                    parts.append(f"### {budget} {what}, {tag}\n\n{text}")
    for worlds, tag in ((held_out, "mean over the reported worlds"), ([TUNING_WORLD], "tuning world")):
        if any(e["world"] in worlds for e in results.entries.values()):
            parts.append(f"### Continuous measures ({tag})\n\n" + measures_table(results, plan, worlds))
    parts.append("### Training cost\n\n" + cost_table(results, plan))
    atomic_write(out / "compare.md", "\n\n".join(parts) + "\n")
    shown = held_out if any(e["world"] in held_out for e in results.entries.values()) else [TUNING_WORLD]
    plot_budgets(results, plan, shown, out / "asr_vs_budget.png")


def _columns(entries: list[dict[str, Any]]) -> list[str]:
    order = [*UNTRAINED, *TRAINED]
    return [m for m in order if any(e["method"] == m for e in entries)]


def _rows_of(results: Results, regime: str, budget: int, worlds: list[int]) -> list[dict[str, Any]]:
    got = [e for e in results.entries.values() if e["world"] in worlds and e["regime"] == regime
           and e["budget"] == budget]
    return got + [e for e in results.entries.values() if e["world"] in worlds and e["regime"] == "none"] if got else []


def asr_table(results: Results, regime: str, budget: int, worlds: list[int], *, methods: list[str] | None = None,
              rows: set[tuple[str, int | None]] | None = None) -> str:
    """Every row of a budget (or only `rows`, as (attack, k)) for every method (or only `methods`)."""
    entries = [e for e in _rows_of(results, regime, budget, worlds) if methods is None or e["method"] in methods]
    if not any(e["method"] in TRAINED for e in entries):
        return ""
    columns = _columns(entries)
    cells: dict[tuple[str, Any, str], dict[str, list[dict[str, Any]]]] = {}
    for e in entries:
        for r in e["rows"]:
            if rows is None or (r["attack"], r["k"]) in rows:
                cells.setdefault((r["attack"], r["k"], r["metric"]), {}).setdefault(e["method"], []).append(r)
    steps = {e["method"]: e["steps"] for e in entries if e["regime"] != "none"}
    head = "| attack | " + " | ".join(f"{m} ({steps[m]})" if m in steps else m for m in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for (attack, k, metric), by in sorted(cells.items(), key=lambda kv: (kv[0][2] != "asr", kv[0][0], kv[0][1] or 0)):
        trained = [m for m in by if m in TRAINED]
        if not trained:  # a row only the untrained models have (the literature's, off this budget)
            continue
        name = attack if metric == "asr" else f"{attack} ({metric.replace('_', ' ')})"
        lines.append(f"| {name}{'' if k is None else f' k={k}'} | "
                     + " | ".join(pooled(by.get(m, [])) for m in columns) + " |")
    return "\n".join(lines)


def pooled(rows: list[dict[str, Any]]) -> str:
    """x/n summed over the worlds, its 95% Wilson interval, the range of the per-world rates."""
    from bftcore.stats import wilson

    if not rows:
        return ""
    x, n = sum(r["x"] for r in rows), sum(r["n"] for r in rows)
    low, high = wilson(x, n)
    rates = [100 * r["x"] / r["n"] for r in rows]
    spread = f"; {min(rates):.0f}-{max(rates):.0f}" if max(rates) > min(rates) else ""
    return f"{x}/{n} {100 * x / n:.1f} [{100 * low:.1f},{100 * high:.1f}]{spread}"


def _measure(entry: dict[str, Any], metric: str, k: int | None, bucket: str | None = None) -> float | None:
    got = [m["value"] for m in entry["measures"] if m["metric"] == metric and m.get("k") == k
           and m.get("bucket") == bucket]
    return got[0] if got else None


def measures_table(results: Results, plan: dict[str, Any], worlds: list[int]) -> str:
    """Per method and equal-steps budget: retention per bucket, refusal margin, the oracle's rank of
    the reference token (after 10 forced tokens, positions 9-16 and 65-128), KL, perplexity."""
    # (column label, metric, k, bucket)
    scalars = [("margin k=10", "refusal-margin", 10, None), ("margin k=40", "refusal-margin", 40, None),
               ("oracle rank 9-16", "reference-rank", 10, "9-16"),
               ("oracle rank 65-128", "reference-rank", 10, "65-128"),
               ("KL to aligned", "kl-to-aligned", None, None), ("perplexity", "perplexity", None, None)]
    cols = [*(f"R_t {b}" for b in RETENTION_BUCKETS), *(label for label, *_ in scalars)]
    lines = ["| method | steps | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for budget in [0, *sorted(plan["budgets"])]:
        entries = [e for e in results.entries.values() if e["world"] in worlds
                   and e["regime"] == ("none" if budget == 0 else "steps") and e["budget"] == budget]
        for method in _columns(entries):
            mine = [e for e in entries if e["method"] == method]
            values = [[(e["retention"] or {}).get(b) for e in mine] for b in RETENTION_BUCKETS]
            values += [[_measure(e, *measure) for e in mine] for _, *measure in scalars]
            cells = [f"{sum(v) / len(v):.3g}" if v and None not in v else "" for v in values]
            lines.append(f"| {method} | {budget or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cost_table(results: Results, plan: dict[str, Any]) -> str:
    lines = ["| method | " + " | ".join(f"s/step at {b}" for b in sorted(plan["budgets"])) + " |",
             "|---" * (len(plan["budgets"]) + 1) + "|"]
    for method in TRAINED:
        cells = []
        for b in sorted(plan["budgets"]):
            got = [e["seconds"] / e["steps"] for e in results.where(regime="steps", budget=b, method=method)]
            cells.append(f"{sum(got) / len(got):.2f}" if got else "")
        if any(cells):
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_budgets(results: Results, plan: dict[str, Any], worlds: list[int], path: Path) -> None:
    """Small multiples: a panel per attack that was measured, a line per method (its colour
    everywhere; ablations of ours dotted), ASR pooled over `worlds` against the equal-steps budget;
    the untrained defenses as dashed horizontal lines."""
    import math

    from bftcore.plots import model_colour, pyplot, save_figure

    budgets = sorted(plan["budgets"])

    def asr(method: str, regime: str, budget: int, attack: str, k: Any) -> float | None:
        rows = [r for e in results.where(regime=regime, budget=budget, method=method) if e["world"] in worlds
                for r in e["rows"] if r["attack"] == attack and r["k"] == k and r["metric"] == "asr"]
        return 100 * sum(r["x"] for r in rows) / sum(r["n"] for r in rows) if rows else None

    panels = [(a, k) for a, k in PANELS if any(asr(m, "steps", b, a, k) is not None for m in TRAINED for b in budgets)]
    if not panels:
        return
    plt = pyplot()
    ncols = min(5, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows + 0.8), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (attack, k) in zip(axes.flat, panels):
        for method in UNTRAINED:
            y = asr(method, "none", 0, attack, k)
            if y is not None:
                ax.axhline(y, ls="--", lw=1, color=model_colour(method), label=method)
        for method in TRAINED:
            points = [(b, asr(method, "steps", b, attack, k)) for b in budgets]
            points = [(b, y) for b, y in points if y is not None]
            if points:
                ax.plot(*zip(*points), ":" if method in ABLATIONS else "-", marker="o", ms=3,
                        color=model_colour(method), label=method)
        ax.set_title(attack if k is None else f"{attack} k={k}", fontsize=9)
        ax.set_xscale("log")  # the budgets as plain ticks, one x range for every panel
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlim(budgets[0] / 1.3, budgets[-1] * 1.3)
        ax.set_ylim(-3, 103)
        ax.tick_params(labelsize=7)
    legend: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=6, fontsize=8)
    height = fig.get_figheight()  # the legend and the x label in the bottom 0.8 inch
    fig.supxlabel("training steps (equal-steps budgets)", y=0.5 / height, fontsize=9)
    fig.supylabel(f"ASR % (pooled over world{'s' * (len(worlds) > 1)} {', '.join(map(str, worlds))})", fontsize=9)
    fig.tight_layout(rect=(0, 0.75 / height, 1, 1))
    save_figure(fig, path)


if __name__ == "__main__":
    main()
