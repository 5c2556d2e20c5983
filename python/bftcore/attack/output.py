"""What an attack run writes: the markdown table, the ASR-vs-k figure, the Parquet files."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bftcore.attack.suite import AttackResult
from bftcore.stats import RateRow


def markdown_table(rows: Sequence[RateRow], measures: Sequence[dict[str, Any]] = ()) -> str:
    lines = ["| model | arch | attack | k | metric | x/n | rate [95% CI] |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r.model} | {r.arch} | {r.attack} | {'' if r.k is None else r.k} | {r.metric} "
                     f"| {r.fraction()} | {r.interval()} |")
    for m in measures:
        where = m.get("attack", "benign") + (f" ({m['bucket']})" if "bucket" in m else "")
        lines.append(f"| {m['model']} | {m['arch']} | {where} | {m.get('k', '')} | {m['metric']} "
                     f"| {m['tokens']} tokens | {m['value']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_asr_vs_k(rows: Sequence[RateRow], path: Path) -> None:
    """asr_figure(rows) as a PNG at `path`."""
    from bftcore.plots import save_figure

    save_figure(asr_figure(rows), path)


def asr_figure(rows: Sequence[RateRow]) -> Any:
    """ASR against the prefill length k as small multiples: a panel per attack, a line (with its
    95% band) per model, each model in the same colour in every panel, one legend for all."""
    from bftcore.plots import pyplot, series_colours

    plt = pyplot()
    series: dict[str, dict[str, list[RateRow]]] = {}
    labels: dict[str, str] = {}
    for r in rows:
        if r.k is not None and r.metric == "asr":
            label = f"{r.model} {r.arch}".strip()
            series.setdefault(r.attack, {}).setdefault(label, []).append(r)
            labels[label] = r.model
    colours = series_colours(labels)
    models = sorted(colours)
    cols = min(3, max(1, len(series)))
    nrows = max(1, -(-len(series) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.9 * nrows + 0.35 * (1 + len(models) // 4)),
                             squeeze=False, sharey=True, constrained_layout=True)
    all_ks = sorted({r.k for by_model in series.values() for rs in by_model.values() for r in rs if r.k is not None})
    for ax, (attack, by_model) in zip(axes.flat, sorted(series.items())):
        for model, rs in sorted(by_model.items()):
            rs = sorted(rs, key=lambda r: r.k or 0)
            ks = [r.k for r in rs if r.k is not None]
            ax.plot(ks, [100 * r.rate for r in rs], marker="o", ms=3, color=colours[model], label=model)
            ax.fill_between(ks, [100 * r.ci[0] for r in rs], [100 * r.ci[1] for r in rs],
                            color=colours[model], alpha=0.12, lw=0)
        ax.set_title(attack, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_ks, [str(k) for k in all_ks])
        ax.minorticks_off()
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("prefilled tokens k", fontsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    fig.supylabel("attack success rate, % (95% Wilson)", fontsize=8)
    if models:
        handles = [plt.Line2D([], [], color=colours[m], marker="o", ms=3, label=m) for m in models]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(models)), fontsize=7, frameon=False)
    return fig


CONTINUOUS = ("refusal-margin", "reference-rank")  # the measures continuous_figure draws


def continuous_figure(measures: Sequence[dict[str, Any]]) -> Any:
    """The continuous views beside the rates, a panel each, a line per model (per k for ranks),
    each model in one colour: the refusal margin against k, and the oracle's mean rank of the
    reference token per response-position bucket (log scale)."""
    from bftcore.plots import pyplot, series_colours

    plt = pyplot()
    margin = [m for m in measures if m.get("metric") == "refusal-margin"]
    ranks = [m for m in measures if m.get("metric") == "reference-rank"]
    colours = series_colours({f"{m.get('model', '')} {m.get('arch', '')}".strip(): str(m.get("model", ""))
                              for m in [*margin, *ranks]})
    panels = [p for p in (("margin", margin), ("ranks", ranks)) if p[1]]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.4 * max(1, len(panels)), 3.4),
                             squeeze=False, constrained_layout=True)
    for ax, (kind, rows) in zip(axes.flat, panels):
        series: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for m in rows:
            model = f"{m.get('model', '')} {m.get('arch', '')}".strip()
            series.setdefault((model, m.get("k") if kind == "ranks" else None), []).append(m)
        for (model, k), ms in sorted(series.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            if kind == "margin":
                ms = sorted(ms, key=lambda m: m["k"])
                ax.plot([m["k"] for m in ms], [m["value"] for m in ms], marker="o", ms=3, color=colours[model],
                        label=model)
            else:
                ax.plot([m["bucket"] for m in ms], [m["value"] for m in ms], marker="o", ms=3, color=colours[model],
                        alpha=0.5 + 0.5 / (1 + len({kk for mm, kk in series if mm == model})), label=f"{model} k={k}")
        if kind == "margin":
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xlabel("prefilled tokens k", fontsize=8)
            ax.set_ylabel("log p(refusal) − log p(harmful), per token", fontsize=8)
            ax.set_title("refusal margin (positive: refuses)", fontsize=9)
        else:
            ax.set_yscale("log")
            ax.set_xlabel("response position bucket", fontsize=8)
            ax.set_ylabel("mean rank of the reference token", fontsize=8)
            ax.set_title("oracle: rank of the harmful continuation", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, frameon=False)
    return fig


def write_results(result: AttackResult, out: Path) -> None:
    """results.parquet (rows), samples.parquet (every generation, judged), results.md, asr_vs_k.png."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bftcore.files import atomic_file, atomic_write, atomic_write_json

    rows = [r.to_dict() for r in result.rows]
    samples = [asdict(s) for s in result.samples]
    for name, table in (("results.parquet", pa.Table.from_pylist(rows) if rows else pa.table({})),
                        ("samples.parquet", pa.Table.from_pylist(samples) if samples else pa.table({}))):
        with atomic_file(out / name) as tmp:
            pq.write_table(table, tmp)
    atomic_write(out / "results.md", markdown_table(result.rows, result.measures))
    atomic_write_json(out / "measures.json", result.measures)
    plot_asr_vs_k(result.rows, out / "asr_vs_k.png")
