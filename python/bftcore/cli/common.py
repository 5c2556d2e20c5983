"""What every command shares: the consoles, progress on stderr, the rich tables, JSON output, and
the option groups that reach the library as its own dataclasses (`ReadOptions`, `ScoreConfig`)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bftcore import dist
from bftcore.precision import DTYPES
from bftcore.progress import Progress as ProgressCallback
from bftcore.progress import plain_lines, progress_every

ARCH_CHOICE = click.Choice(["llama", "qwen2"])
# Off a terminal rich would wrap at 80 columns; tables get room and messages never wrap.
console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


# ---- progress -----------------------------------------------------------------------------------
@contextmanager
def progress_bars() -> Iterator[ProgressCallback]:
    """A callback (description, done, total) that shows progress on stderr: one rich bar per
    description on a terminal; plain lines elsewhere (a pipe, a log file, CI), where bars would
    show nothing for the whole run; nothing on the ranks other than 0 under torchrun."""
    if dist.rank_world()[0] != 0:
        yield lambda desc, done, total: None
        return
    if not err.is_terminal:
        yield plain_lines(lambda line: print(line, file=sys.stderr, flush=True), progress_every())
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as bars:
        tasks: dict[str, Any] = {}

        def update(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bars.add_task(desc, total=total)
            bars.update(tasks[desc], completed=done, total=total)

        yield update


# ---- option groups ------------------------------------------------------------------------------
def options_to(name: str, build: Callable[..., Any], *params: str) -> Decorator:
    """Hand a command the options `params` as one argument, `name` = build(**those options): how an
    option group becomes the library's own dataclass, in one place."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            kwargs[name] = build(**{p: kwargs.pop(p) for p in params})
            return fn(**kwargs)

        return command

    return decorate


def _with(options: list[Decorator], fold: Decorator) -> Decorator:
    """`options` in this order in --help, then `fold` gathering them for the command."""
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = fold(fn)
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return decorate


def corpus_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of every command that reads a corpus, given to it as `read: ReadOptions`."""
    from bftcore.corpus import FORMATS, ReadOptions

    return _with([
        click.option("--format", "format", type=click.Choice(FORMATS), help="Corpus format (default: detected per file)."),
        click.option("--prompt-column", help="Prompt column/key of any other CSV, JSONL or Parquet."),
        click.option("--response-column", help="Response column/key of any other CSV, JSONL or Parquet."),
        click.option("--label", "label", help="Label of records that carry none (default: the format's, e.g. harmful)."),
        click.option("--skip-bad", is_flag=True, help="Count and skip unreadable records instead of stopping."),
    ], options_to("read", ReadOptions, "format", "prompt_column", "response_column", "label", "skip_bad"))(fn)


def dtype_option(detail: str) -> Decorator:
    """--dtype: the type the command's models run in (a `bftcore.precision` name)."""
    return click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                        help=f"Type the models run in; auto: bfloat16 on a CUDA GPU that supports it, else float32. {detail}")


def thinking_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--thinking: the chat template's thinking block on (off by default)."""
    return click.option("--thinking", is_flag=True,
                        help="Render prompts with thinking on, for templates with an enable_thinking switch "
                             "(Qwen3). Off by default: the assistant turn starts after an empty thinking block.")(fn)


def _score_config(k: int, tau: float, batch_tokens: int, shard_size: int, max_length: int | None,
                  no_generate: bool, max_new_tokens: int, dtype: str, thinking: bool, compile: str) -> Any:
    from bftcore.score import ScoreConfig

    return ScoreConfig(k=k, tau=tau, batch_tokens=batch_tokens, shard_size=shard_size, max_length=max_length,
                       generate_missing=not no_generate, max_new_tokens=max_new_tokens, thinking=thinking,
                       dtype=dtype, compile=compile)


def scoring_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of the commands that score a corpus: `scoring: ScoreConfig`, `too_long` and `device`."""
    return _with([
        click.option("--k", "k", type=click.IntRange(min=1), default=20, show_default=True, help="Base top-k stored per position."),
        click.option("--tau", type=float, default=0.0, show_default=True, help="Base-favored threshold on log pi_b - log pi_a."),
        click.option("--batch-tokens", type=click.IntRange(min=1), default=16384, show_default=True, help="Padded tokens per forward batch."),
        click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Documents per scored shard."),
        click.option("--max-length", type=click.IntRange(min=2), help="Prompt + response tokens (default: the model's context); longer responses are truncated and counted."),
        click.option("--too-long", type=click.Choice(["skip", "refuse"]), default="skip", show_default=True,
                     help="Prompts that do not fit --max-length: skip and count them, or refuse the corpus before scoring."),
        click.option("--no-generate", is_flag=True, help="Skip records without a response instead of scoring the base model's own greedy response."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Length of generated responses."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto."),
        dtype_option("Statistics are computed in float32 whatever the type."),
        thinking_option,
        click.option("--compile", "compile", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
                     help="torch.compile the per-position statistics (auto: at vocabularies of 32,768 and up, where it saves time)."),
    ], options_to("scoring", _score_config, "k", "tau", "batch_tokens", "shard_size", "max_length",
                  "no_generate", "max_new_tokens", "dtype", "thinking", "compile"))(fn)


def judge_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What configures a judge beside its name (`open_judge`'s arguments)."""
    for opt in reversed([
        click.option("--refusal-keywords", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Extra refusal keywords (one per line) for the keyword judge, rank-prefill, rap and --ada-every."),
        click.option("--judge-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Prompt template for a classifier/causal judge ({prompt}, {response})."),
        click.option("--judge-label", help="The classifier judge's label that means harmful."),
        click.option("--toy-seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Toy world of the exact judge."),
    ]):
        fn = opt(fn)
    return fn


def open_judge(spec: str, toy_seed: int, refusal_keywords: Path | None, template: Path | None,
               label: str | None, device: str) -> tuple[Any, list[str]]:
    """The judge, and the refusal openers rank-prefill, rap and Any-Depth steer around or stop at."""
    from bftcore.judge import make_judge

    extra = lines(refusal_keywords) if refusal_keywords else []
    phrases, openers = None, list(extra)
    if spec == "exact":
        from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS, World

        phrases = World(toy_seed).harmful_phrases
        openers += REFUSALS + RECOVERY_REFUSALS
    judge = make_judge(spec, phrases=phrases, extra_keywords=extra, device=device, label=label,
                       template=template.read_text() if template else None)
    return judge, openers


def lines(path: Path) -> list[str]:
    """The non-blank lines of a text file, stripped (keyword and refusal lists)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- output -------------------------------------------------------------------------------------
def emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


def print_checks(checks: list[Any], out: Console | None = None) -> None:
    """One line per expectation: its verdict (holds / FAILS / not shown), name and figures."""
    marks = {"holds": "[green]holds[/]", "fails": "[red]FAILS[/]", "not shown": "[yellow]not shown[/]"}
    for c in checks:
        (out or console).print(f"  {marks[c.status]}  {c.name}  ({c.detail})", highlight=False)


def strict_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--strict: exit 3 when an expectation fails (without it, verdicts are reported, exit 0)."""
    return click.option("--strict", is_flag=True,
                        help="Exit 3 when an expectation fails (verdicts are always printed).")(fn)


def print_read(report: Any) -> None:
    """One line on what reading a corpus found."""
    line = f"read {report.records} records from {len(report.files)} file(s)"
    extras = [f"{report.without_response} without a response" if report.without_response else "",
              f"{report.duplicates} duplicates kept once" if report.duplicates else "",
              f"{report.bad} unreadable skipped" if report.bad else ""]
    extras = [e for e in extras if e]
    console.print(line + (f" ({', '.join(extras)})" if extras else ""))


# ---- tables -------------------------------------------------------------------------------------
def rows_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("model", "arch", "attack", "k", "metric", "x/n", "rate [95% CI]"):
        table.add_column(col, justify="right" if col in ("k", "x/n") else "left")
    for r in rows:
        table.add_row(r.model, r.arch, r.attack, "" if r.k is None else str(r.k), r.metric,
                      r.fraction(), r.interval())
    return table


def comparison_table(rows: list[Any], models: list[str], title: str) -> Table:
    """One row per (attack, k, metric), one column per model: x/n and the rate with its interval."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("attack", no_wrap=True)
    for m in models:
        table.add_column(m, justify="right", no_wrap=True, min_width=16)
    cells: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if r.model in models:
            cells.setdefault((r.attack, r.k, r.metric), {})[r.model] = r
    for (attack, k, metric), by_model in cells.items():
        if len(by_model) < 2:
            continue
        name = attack if metric == "asr" else f"{attack} {metric.replace('_', '-')}"
        table.add_row(name if k is None else f"{name} k={k}", *(
            f"{by_model[m].fraction()}\n{_short_interval(by_model[m])}" if m in by_model else ""
            for m in models))
    return table


def gradient_table(profile: Any) -> Table:
    """The safety gradient per position bucket (`bftcore.gradient.GradientProfile`)."""
    after = f"; positions after a {profile.prefix_tokens}-token prefix" if profile.prefix_tokens else ""
    table = Table(title=f"safety SFT gradient of {profile.model} ({profile.records} records; parameters of block "
                        f"{profile.layer}{after})", title_justify="left")
    for col in ("positions", "tokens", "‖∂ℓ/∂logits‖", "‖mean ∇θ ℓ‖"):
        table.add_column(col, justify="right")
    for b, n, lg, pg in zip(profile.buckets, profile.positions, profile.logit_grad, profile.param_grad):
        table.add_row(b, str(n), "-" if lg is None else f"{lg:.4f}", "-" if pg is None else f"{pg:.4g}")
    return table


# the continuous measures a table shows, and how a value prints
_MEASURE_FORMATS = {"perplexity": "{:.3f}", "kl-to-aligned": "{:.2g}", "refusal-margin": "{:+.2f}",
                    "reference-rank": "{:.1f}", "refusal-skipped": "{:.3f}", "oracle-forced": "{:.3f}",
                    "ada-reassessed": "{:.0f}"}


def measures_table(measures: list[dict[str, Any]], models: list[str], title: str) -> Table:
    """One row per (measure, attack, k, bucket), one column per model: the continuous view beside
    the rates (perplexity and KL on benign responses, refusal margin, the reference's rank, ...)."""
    from rich import box

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("measure", no_wrap=True)
    shown = [m for m in models if any(x["model"] == m and x["metric"] in _MEASURE_FORMATS for x in measures)]
    for m in shown:
        table.add_column(m, justify="right", no_wrap=True)
    cells: dict[str, dict[str, str]] = {}
    for x in measures:
        if x["model"] in shown and x["metric"] in _MEASURE_FORMATS:
            where = "".join(f" {key}={x[key]}" for key in ("k", "bucket") if x.get(key) is not None)
            name = x["metric"] if x["metric"] in ("perplexity", "kl-to-aligned", "refusal-margin") \
                else f"{x.get('attack', '')} {x['metric']}"
            cells.setdefault(name + where, {})[x["model"]] = _MEASURE_FORMATS[x["metric"]].format(x["value"])
    for name, by_model in cells.items():
        table.add_row(name, *(by_model.get(m, "") for m in shown))
    return table


def _short_interval(r: Any) -> str:
    low, high = r.ci
    return f"{100 * r.rate:.1f} [{100 * low:.1f},{100 * high:.1f}]"


def _token_ids(mismatches: int) -> str:
    """The token-id column of a parity row."""
    if mismatches < 0:
        return "not checked"
    return "identical" if mismatches == 0 else f"{mismatches} texts differ"


def parity_table(parity: list[Any]) -> Table:
    """Exported artifacts against PyTorch on the same token ids: one row per artifact and reader."""
    n = f" ({parity[0].texts} texts, {parity[0].positions} positions)" if parity else ""
    table = Table(title=f"export parity with PyTorch{n}; llama.cpp with an F32 KV cache", title_justify="left")
    for col in ("artifact", "reader", "token ids", "max |Δ logit|", "argmax agreement"):
        table.add_column(col, justify="right" if col.startswith(("max", "argmax")) else "left")
    for p in parity:
        table.add_row(p.artifact, p.reader, _token_ids(p.token_mismatches), f"{p.max_abs_logit:.2e}",
                      f"{100 * p.argmax_agreement:.2f}%")
    return table


def export_parity_table(rows: list[Any]) -> Table:
    """One export against PyTorch: one row per reader."""
    table = Table(title=f"parity with PyTorch ({rows[0].texts} texts, {rows[0].positions} positions)")
    for col in ("reader", "token ids", "max |Δ logit|", "argmax agreement"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.reader, _token_ids(r.token_mismatches), f"{r.max_abs_logit:.2e}",
                      f"{100 * r.argmax_agreement:.2f}%")
    return table


def bucket_table(curves: Iterable[dict[str, Any]], title: str) -> Table:
    """An index's curves (`Index.curves()` rows): one row per (label, position bucket) with tokens."""
    table = Table(title=title, title_justify="left")
    for col in ("label", "positions", "tokens", "mean KL", "mean R_t", "mean M_t", "bf rate",
                "mean log-ratio"):
        table.add_column(col, justify="left" if col in ("label", "positions") else "right")
    for r in curves:
        if not r["count"]:
            continue
        table.add_row(r["label"], r["positions"], str(r["count"]), f"{r['mean_kl']:.4g}",
                      f"{r['mean_retain']:.3f}", f"{r['mean_bf_mass']:.3f}", f"{r['bf_rate']:.3f}",
                      f"{r['mean_log_ratio']:+.3g}")
    return table


def top_tokens_table(df: Any, title: str) -> Table:
    """An index's top base-favored tokens of one bucket (`Index.top_tokens`)."""
    table = Table(title=title, title_justify="left")
    for col in ("token", "text", "in B_t", "realised", "realised base-favored"):
        table.add_column(col)
    for r in df.iter_rows(named=True):
        table.add_row(str(r["token"]), repr(r["text"]) if r["text"] is not None else "",
                      str(r["base_favored"]), str(r["occurrences"]), str(r["realised_base_favored"]))
    return table
