"""`bftcore report`: one self-contained HTML page of a run directory.

    build_report(run_dir, out)    find what the run wrote, render one page, write it atomically

What is found under the run directory (recursively, in sorted order):

    *.bfti               a base-favored-token index: its signal-decay plot and per-bucket table
    results.parquet      an attack table (x/n and every rate with its 95% Wilson interval), the
                         ASR-vs-k plot, and the benign measures of measures.json beside it
    train_log.jsonl      a training run: one loss curve per run and a table; the method comes from
                         bftcore_complete.json beside it, else the directory's name
    parity.json,         export parity rows (export.Parity dicts)
    *.parity.json

Plots are PNGs inlined as data: URIs and the CSS is inline: the page loads nothing else and needs
no JavaScript, so it can be mailed or attached to an issue as one file. The page is a pure function
of the run directory (no timestamps), so reports of the same run compare byte for byte.
"""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bftcore import __version__
from bftcore.errors import BadInput
from bftcore.files import atomic_write
from bftcore.stats import RateRow, wilson

ATTACK_COLUMNS = ("model", "arch", "attack", "k", "metric", "x", "n")
PARITY_KEYS = ("artifact", "reader", "dtype", "texts", "positions", "token_mismatches", "max_abs_logit",
               "argmax_agreement")


@dataclass
class ReportSummary:
    out: Path
    indexes: int = 0
    attack_tables: int = 0
    attack_rows: int = 0
    training_runs: int = 0
    parity_tables: int = 0
    plots: int = 0
    tables: int = 0
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}


@dataclass
class _Found:
    """The files of a run directory that the report reads, each list sorted."""

    indexes: list[Path] = field(default_factory=list)
    attacks: list[Path] = field(default_factory=list)
    training: list[Path] = field(default_factory=list)
    parity: list[Path] = field(default_factory=list)
    gradients: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.indexes or self.attacks or self.training or self.parity or self.gradients)


def discover(run_dir: Path) -> _Found:
    """Every file the report can use under `run_dir`. Hidden paths are skipped: they are the
    temporary files of atomic writes and the work directories of unfinished training runs."""
    found = _Found()
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix == ".bfti":
            found.indexes.append(p)
        elif p.name == "results.parquet":
            found.attacks.append(p)
        elif p.name == "train_log.jsonl":
            found.training.append(p)
        elif p.name == "parity.json" or p.name.endswith(".parity.json"):
            found.parity.append(p)
        elif p.name == "gradient.json" or p.name.endswith(".gradient.json"):
            found.gradients.append(p)
    return found


def build_report(run_dir: Path, out: Path, title: str | None = None) -> ReportSummary:
    """Render the run directory's indexes, attacks, training runs and export parity into `out`."""
    run_dir = Path(run_dir)
    out = Path(out)
    if not run_dir.exists():
        raise BadInput(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise BadInput(f"{run_dir}: not a directory; give the directory a run wrote (e.g. the demo's)")
    if out.is_dir():
        raise BadInput(f"--out {out} is a directory; give the HTML file to write")
    found = discover(run_dir)
    if found.empty():
        raise BadInput(f"{run_dir}: nothing to report (no *.bfti index, attacks results.parquet, "
                       "train_log.jsonl, parity.json or gradient.json under it)")
    page = _Page(run_dir, title or f"bftcore report: {run_dir.resolve().name}")
    with tempfile.TemporaryDirectory(prefix="bftcore-report-") as tmp:
        plots = _Plots(Path(tmp))
        sections = [
            _index_section(found.indexes, page, plots),
            _gradient_section(found.gradients, found.indexes, page, plots),
            _attack_section(found.attacks, page, plots),
            _training_section(found.training, page, plots),
            _parity_section(found.parity, page),
        ]
    text = page.render(found, [s for s in sections if s])
    data = text.encode("utf-8")
    atomic_write(out, data)  # a reader (a browser reloading the page) never sees half a page
    return ReportSummary(out=out, indexes=len(found.indexes), attack_tables=len(found.attacks),
                         attack_rows=page.attack_rows, training_runs=len(found.training),
                         parity_tables=len(found.parity), plots=plots.count, tables=page.tables,
                         bytes=len(data))


# ---- HTML pieces ----------------------------------------------------------------------------
def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


class _Plots:
    """Plots drawn into a temporary directory by the writers the other commands use, read back
    as data: URIs."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0

    def img(self, draw: Callable[[Path], None], alt: str, caption: str) -> str:
        self.count += 1
        path = self.tmp / f"plot{self.count}.png"
        draw(path)
        uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        return (f'<figure><img src="{uri}" alt="{esc(alt)}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")


class _Page:
    def __init__(self, run_dir: Path, title: str) -> None:
        self.run_dir = run_dir
        self.title = title
        self.tables = 0
        self.attack_rows = 0

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.run_dir))

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]], numeric: Sequence[int] = (),
              caption: str = "") -> str:
        """A table; columns in `numeric` are right-aligned."""
        self.tables += 1
        right = set(numeric)

        def cell(tag: str, i: int, v: object) -> str:
            return f'<{tag} class="num">{esc(v)}</{tag}>' if i in right else f"<{tag}>{esc(v)}</{tag}>"

        head = "".join(cell("th", i, h) for i, h in enumerate(headers))
        body = "\n".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"

    def render(self, found: _Found, sections: list[str]) -> str:
        counts = [(len(found.indexes), "index", "indexes", "indexes"),
                  (len(found.attacks), "attack table", "attack tables", "attacks"),
                  (len(found.training), "training run", "training runs", "training"),
                  (len(found.parity), "export parity table", "export parity tables", "parity")]
        have = [f'<a href="#{anchor}">{n} {esc(one if n == 1 else many)}</a>'
                for n, one, many, anchor in counts if n]
        if found.gradients:  # optional: not listed as missing
            n = len(found.gradients)
            have.append(f'<a href="#gradient">{n} gradient profile{"" if n == 1 else "s"}</a>')
        missing = [esc(many) for n, _, many, _ in counts if not n]
        found_line = "Found " + ", ".join(have) + (f"; no {', no '.join(missing)}." if missing else ".")
        return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="bftcore {esc(__version__)}">',
            f"<title>{esc(self.title)}</title>",
            f"<style>{CSS}</style></head><body>",
            f"<header><h1>{esc(self.title)}</h1>",
            (f'<p class="meta">Run directory <code>{esc(self.run_dir.resolve())}</code>; '
             f"bftcore {esc(__version__)}.</p>"),
            f'<p class="found">{found_line}</p></header>',
            *sections,
            "</body></html>",
            "",
        ])


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
       max-width: 1280px; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { border-bottom: 2px solid #d0d7de; padding-bottom: .2rem; margin-top: 2.2rem; }
h3 { margin-bottom: .3rem; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f3f4f6; padding: 0 .2rem; }
.meta, .found, figcaption, caption, .note { color: #57606a; }
figure { margin: .8rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
table { border-collapse: collapse; margin: .6rem 0 1.2rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .2rem .55rem; text-align: left; white-space: nowrap; }
th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fafbfc; }
.num { text-align: right; }
"""


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


# ---- sections -------------------------------------------------------------------------------
def _index_section(paths: list[Path], page: _Page, plots: _Plots) -> str:
    from bftcore import index as bfti

    if not paths:
        return ""
    parts = ['<section id="indexes"><h2>Base-favored-token indexes</h2>',
             ('<p class="note">Per response-position bucket: KL(π_a ‖ π_b), retention R_t, the aligned '
              "mass M_t on the base-favored set B_t, and the realised base-favored rate.</p>")]
    for path in paths:
        idx = bfti.Index(path)
        h = idx.header
        meta = h.get("meta", {})
        parts.append(f"<article><h3>{esc(page.rel(path))}</h3>")
        parts.append(f'<p class="note">{esc(h["rows"])} response tokens; labels {esc(", ".join(idx.labels))}; '
                     f"k={esc(h['k'])}, tau={esc(h['tau'])}; base <code>{esc(meta.get('base', '?'))}</code>; "
                     f"aligned <code>{esc(meta.get('aligned', '?'))}</code></p>")
        parts.append(plots.img(partial(bfti.plot_signal_decay, idx), f"signal decay of {page.rel(path)}",
                               "Signal decay per position bucket and label (log-2 position axis)."))
        rows = [(r["label"], r["positions"], r["count"], _fmt(r["mean_kl"], ".4g"), _fmt(r["mean_retain"], ".3f"),
                 _fmt(r["mean_bf_mass"], ".3f"), _fmt(r["bf_rate"], ".3f"), _fmt(r["mean_log_ratio"], "+.3g"))
                for r in idx.curves().iter_rows(named=True) if r["count"]]
        parts.append(page.table(("label", "positions", "tokens", "mean KL", "mean R_t", "mean M_t", "bf rate",
                                 "mean log-ratio"), rows, numeric=range(2, 8), caption="per position bucket"))
        parts.append("</article>")
    parts.append("</section>")
    return "\n".join(parts)


def _gradient_section(paths: list[Path], indexes: list[Path], page: _Page, plots: _Plots) -> str:
    """The safety gradient per position (`bftcore gradient --out gradient.json`), every profile in
    one plot, beside the first index's R_t and KL."""
    from bftcore import index as bfti
    from bftcore.gradient import GradientProfile, plot_gradient

    if not paths:
        return ""
    profiles = []
    for path in paths:
        try:
            profiles.append(GradientProfile.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:
            raise BadInput(f"{path}: not a gradient profile ({e})") from e
    idx = bfti.Index(indexes[0]) if indexes else None
    parts = ['<section id="gradient"><h2>The safety gradient per response position</h2>',
             ('<p class="note">The safety SFT loss of each target token: ‖∂ℓ_t/∂logits_t‖ averaged over '
              "the records, and the norm of the batch's mean gradient on one block's parameters"
              + (f"; beside them R_t and KL of {esc(page.rel(indexes[0]))}" if idx else "") + ".</p>"),
             plots.img(partial(plot_gradient, profiles, index=idx), "safety gradient per position",
                       "Gradient norms per response position (log-log)." + (" Right: the index." if idx else ""))]
    for path, prof in zip(paths, profiles):
        rows = [(b, n, _fmt(lg, ".4f"), _fmt(pg, ".4g"))
                for b, n, lg, pg in zip(prof.buckets, prof.positions, prof.logit_grad, prof.param_grad)]
        parts.append(page.table(("positions", "tokens", "‖∂ℓ/∂logits‖", "‖mean ∇θ ℓ‖"), rows, numeric=range(1, 4),
                                caption=f"{page.rel(path)}: {prof.model}, {prof.records} records, block {prof.layer}"))
    parts.append("</section>")
    return "\n".join(parts)


def read_attack_rows(path: Path) -> list[RateRow]:
    """The rows of an attack's results.parquet (as `attack.write_results` writes them)."""
    import polars as pl

    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as e:
        raise BadInput(f"{path}: unreadable ({' '.join(str(e).split())})") from e
    if table.height == 0:  # write_results writes an empty table when an attack gave no rows
        return []
    missing = [c for c in ATTACK_COLUMNS if c not in table.columns]
    if missing:
        raise BadInput(f"{path}: not an attack results table (no column {', '.join(missing)})")
    rows = []
    for r in table.select(ATTACK_COLUMNS).iter_rows(named=True):
        try:
            k = None if r["k"] is None else int(r["k"])
            row = RateRow(str(r["model"]), str(r["arch"] or ""), str(r["attack"]), k, str(r["metric"]),
                          int(r["x"]), int(r["n"]))
            wilson(row.x, row.n)  # ValueError unless 0 <= x <= n
        except (TypeError, ValueError) as e:
            raise BadInput(f"{path}: a row that is not a rate ({r}): {e}") from e
        rows.append(row)
    return rows


def _attack_section(paths: list[Path], page: _Page, plots: _Plots) -> str:
    from bftcore.attack import CONTINUOUS, plot_asr_vs_k

    if not paths:
        return ""
    parts = ['<section id="attacks"><h2>Attacks</h2>',
             '<p class="note">Every rate is x successes of n with its 95% Wilson score interval.</p>']
    for path in paths:
        rows = read_attack_rows(path)
        page.attack_rows += len(rows)
        parts.append(f"<article><h3>{esc(page.rel(path))}</h3>")
        if any(r.k is not None and r.metric == "asr" for r in rows):
            parts.append(plots.img(partial(plot_asr_vs_k, rows), f"ASR against k, {page.rel(path)}",
                                   "Attack success rate against the prefill length k, with 95% Wilson bands."))
        if rows:
            parts.append(page.table(
                ("model", "arch", "attack", "k", "metric", "x/n", "n", "rate [95% Wilson]"),
                [(r.model, r.arch, r.attack, "" if r.k is None else r.k, r.metric, r.fraction(), r.n, r.interval())
                 for r in rows], numeric=(3, 5, 6, 7), caption=f"{len(rows)} rows"))
        else:
            parts.append('<p class="note">No rows.</p>')
        measures = _read_measures(path.with_name("measures.json"))
        if any(m.get("metric") in CONTINUOUS for m in measures):
            parts.append(plots.img(partial(_save_continuous, measures),
                                   f"continuous views, {page.rel(path)}",
                                   "The refusal margin against k, and the oracle's rank of the harmful continuation "
                                   "per position bucket: measures that move where every rate is 0 or 1."))
        if measures:
            parts.append(page.table(
                ("model", "arch", "attack", "k", "metric", "value", "tokens"),
                [(m.get("model", ""), m.get("arch", ""), str(m.get("attack", "")) + (f" ({m['bucket']})" if "bucket" in m else ""),
                  m.get("k", ""), m.get("metric", ""), _measure_value(m.get("value")), m.get("tokens", ""))
                 for m in measures], numeric=(3, 5, 6),
                caption="measures (measures.json)"))
        parts.append("</article>")
    parts.append("</section>")
    return "\n".join(parts)


def _save_continuous(measures: list[dict[str, Any]], out: Path) -> None:
    from bftcore.attack import continuous_figure
    from bftcore.plots import save_figure

    save_figure(continuous_figure(measures), out)


def _read_measures(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: unreadable ({e})") from e
    if not isinstance(obj, list) or not all(isinstance(m, dict) for m in obj):
        raise BadInput(f"{path}: not a list of measures")
    return obj


def _measure_value(value: Any) -> str:
    if isinstance(value, (int, float)):
        return format(value, ".4f")
    return json.dumps(value, sort_keys=True)[:200]  # e.g. lm-eval's nested results


@dataclass
class TrainingRun:
    name: str  # the run's directory, relative to the run directory
    method: str
    steps: list[int]
    loss: list[float]


def read_training_run(path: Path, run_dir: Path) -> TrainingRun:
    """A train_log.jsonl (one JSON object per step with `step` and `loss`) and its method."""
    steps, loss = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: unreadable ({e})") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            steps.append(int(entry["step"]))
            loss.append(float(entry["loss"]))
        except (ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{path}:{n}: not a training log entry with step and loss ({e})") from e
    method = path.parent.name
    card = path.with_name("bftcore_complete.json")
    if card.is_file():
        try:
            method = str(json.loads(card.read_text(encoding="utf-8"))["config"]["method"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BadInput(f"{card}: not a run card ({e})") from e
    return TrainingRun(str(path.parent.relative_to(run_dir)), method, steps, loss)


def plot_losses(runs: Sequence[TrainingRun], path: Path) -> None:
    """Training loss against the step, one line per run."""
    from bftcore.plots import pyplot, save_figure, series_colours

    fig, ax = pyplot().subplots(figsize=(7.2, 4.2 + 0.11 * len(runs)), constrained_layout=True)
    colours = series_colours({run.name: run.method for run in runs})  # a method's colour in the other figures
    for run in runs:
        ax.plot(run.steps, run.loss, linewidth=1.2, label=f"{run.name} ({run.method})", color=colours[run.name])
    if all(v > 0 for run in runs for v in run.loss):  # losses fall by orders of magnitude
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (sum of the method's terms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    save_figure(fig, path)


def _training_section(paths: list[Path], page: _Page, plots: _Plots) -> str:
    if not paths:
        return ""
    runs = [read_training_run(p, page.run_dir) for p in paths]
    parts = ['<section id="training"><h2>Training</h2>']
    if any(r.loss for r in runs):
        parts.append(plots.img(partial(plot_losses, runs), "training loss per step",
                               "Training loss per step, one line per run (methods' losses differ in "
                               "their terms: compare each run's own curve)."))
    rows = []
    for r in runs:
        tail = r.loss[-10:]
        rows.append((r.name, r.method, r.steps[-1] if r.steps else 0, _fmt(r.loss[0] if r.loss else None, ".4f"),
                     _fmt(r.loss[-1] if r.loss else None, ".4f"), _fmt(sum(tail) / len(tail) if tail else None, ".4f")))
    parts.append(page.table(("run", "method", "steps", "first loss", "last loss", "mean of last 10"), rows,
                            numeric=range(2, 6), caption="train_log.jsonl of each run"))
    parts.append("</section>")
    return "\n".join(parts)


def read_parity(path: Path) -> list[dict[str, Any]]:
    """Export parity rows: a JSON list of `export.Parity.to_dict()` objects."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"{path}: unreadable ({e})") from e
    if not isinstance(obj, list) or not all(isinstance(p, dict) and all(k in p for k in PARITY_KEYS) for p in obj):
        raise BadInput(f"{path}: not a list of export parity rows ({', '.join(PARITY_KEYS)})")
    return obj


def _parity_section(paths: list[Path], page: _Page) -> str:
    if not paths:
        return ""
    parts = ['<section id="parity"><h2>Export parity</h2>',
             ('<p class="note">Each exported artifact against the PyTorch model on the same token ids. '
              "Argmax agreement is x of n positions with its 95% Wilson interval.</p>")]
    for path in paths:
        rows = []
        for p in read_parity(path):
            mism = int(p["token_mismatches"])
            ids = "not checked" if mism < 0 else ("identical" if mism == 0 else f"{mism} texts differ")
            n = int(p["positions"])
            x = round(float(p["argmax_agreement"]) * n)
            low, high = wilson(x, n) if 0 <= x <= n else (math.nan, math.nan)
            rows.append((p["artifact"], p["reader"], p["dtype"], p["texts"], ids,
                         f"{float(p['max_abs_logit']):.2e}", f"{x}/{n}",
                         f"{100 * float(p['argmax_agreement']):.2f}% [{100 * low:.2f}, {100 * high:.2f}]"))
        parts.append(f"<article><h3>{esc(page.rel(path))}</h3>")
        parts.append(page.table(("artifact", "reader", "dtype", "texts", "token ids", "max |Δ logit|",
                                 "argmax agreement x/n", "rate [95% Wilson]"), rows, numeric=(3, 5, 6, 7)))
        parts.append("</article>")
    parts.append("</section>")
    return "\n".join(parts)
