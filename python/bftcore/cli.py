"""The `bftcore` command.

Conventions kept by every command: `--help` with an example, a progress bar on anything longer
than a second (on stderr), `--json` on anything that reports figures (one JSON object on stdout),
and exit codes 0 ok / 1 a check failed / 2 bad input, with a one-line reason and no traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bftcore import __version__
from bftcore.complete import METHODS, PENALTIES, TEACHERS, CompleteConfig
from bftcore.errors import BadInput, CheckFailed

ARCH_CHOICE = click.Choice(["llama", "qwen2"])
# Off a terminal rich would wrap at 80 columns; tables get room and messages never wrap.
console = Console(width=None if sys.stdout.isatty() else 160, soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _quiet_libraries() -> None:
    """transformers' own progress bars and notices would drown ours."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A callback (description, done, total) that drives one rich bar per description."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True, disable=not enabled) as bars:
        tasks: dict[str, Any] = {}

        def update(desc: str, done: int, total: int) -> None:
            if desc not in tasks:
                tasks[desc] = bars.add_task(desc, total=total)
            bars.update(tasks[desc], completed=done, total=total)

        yield update


def _rows_table(rows: list[Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("model", "arch", "attack", "k", "metric", "x/n", "rate [95% CI]"):
        table.add_column(col, justify="right" if col in ("k", "x/n") else "left")
    for r in rows:
        table.add_row(r.model, r.arch, r.attack, "" if r.k is None else str(r.k), r.metric,
                      r.fraction(), r.interval())
    return table


def _comparison_table(rows: list[Any], models: list[str], title: str) -> Table:
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


def _parity_table(parity: list[Any]) -> Table:
    """Exported artifacts against PyTorch on the same token ids: one row per artifact and reader."""
    n = f" ({parity[0].texts} texts, {parity[0].positions} positions)" if parity else ""
    table = Table(title=f"export parity with PyTorch{n}; llama.cpp with an F32 KV cache", title_justify="left")
    for col in ("artifact", "reader", "token ids", "max |Δ logit|", "argmax agreement"):
        table.add_column(col, justify="right" if col.startswith(("max", "argmax")) else "left")
    for p in parity:
        ids = "not checked" if p.token_mismatches < 0 else \
            ("identical" if p.token_mismatches == 0 else f"{p.token_mismatches} texts differ")
        table.add_row(p.artifact, p.reader, ids, f"{p.max_abs_logit:.2e}", f"{100 * p.argmax_agreement:.2f}%")
    return table


def _short_interval(r: Any) -> str:
    low, high = r.ci
    return f"{100 * r.rate:.1f} [{100 * low:.1f},{100 * high:.1f}]"


def _print_checks(checks: list[Any]) -> None:
    for c in checks:
        mark = "[green]holds[/]" if c.holds else "[red]FAILS[/]"
        console.print(f"  {mark}  {c.name}  ({c.detail})")


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


# ---- the command tree ---------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="bftcore")
@click.option("--allow-pickle", is_flag=True,
              help="Load models whose weights are pickle files (.bin/.pt): converted once to safetensors "
                   "with torch's weights-only unpickler. Off by default: a pickle can run code.")
def cli(allow_pickle: bool) -> None:
    """Find where an aligned LLM's safety is only shallow, repair it, ship it, re-attack it.

    \b
    Example:
      bftcore demo                  # the whole pipeline on the embedded toy world (CPU)
    """
    _quiet_libraries()
    if allow_pickle:
        from bftcore import models

        models.ALLOW_PICKLE = True


@cli.group()
def toy() -> None:
    """The embedded toy world: a task language, a tokenizer, base and aligned models.

    \b
    Example:
      bftcore toy build --arch llama
      bftcore toy check --json
    """


def _archs(arch: str | None) -> list[str]:
    return [arch] if arch else ["llama", "qwen2"]


@toy.command("build")
@click.option("--arch", type=ARCH_CHOICE, help="One architecture (default: both).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Build here instead of the cache ($BFTCORE_CACHE, default ~/.cache/bftcore).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def toy_build(arch: str | None, seed: int, out: Path | None, device: str, as_json: bool) -> None:
    """Build the toy world (or reuse the cached one) and print where it is.

    Deterministic: the same seed on the same machine gives identical tokenizer files and weights.
    A world in the cache is keyed by the seed and a hash of the generator's code and settings.

    \b
    Example:
      bftcore toy build --arch qwen2 --seed 1 --out /tmp/toy1
    """
    from bftcore.models import resolve_device
    from bftcore.toy import toy_world

    dev = str(resolve_device(device))
    tw = toy_world(seed, out)
    t0 = time.perf_counter()
    with progress_bars() as bar:
        tw.build(_archs(arch), device=dev, progress=bar)
    summary = _world_summary(tw, _archs(arch))
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    if as_json:
        _emit_json(summary)
        return
    console.print(_world_line(tw))
    for a in _archs(arch):
        for role in ("base", "aligned"):
            console.print(f"  {a} {role}: {tw.model_dir(a, role)}")
    console.print(f"  data: {tw.data_dir}")


def _world_summary(tw: Any, archs: list[str]) -> dict[str, Any]:
    info = tw.info()
    return {
        "root": str(tw.root), "seed": info["seed"], "key": info["key"], "tasks": info["tasks"],
        "stats": info["stats"], "data": str(tw.data_dir),
        "models": {a: {r: str(tw.model_dir(a, r)) for r in ("base", "aligned")} for a in archs},
    }


def _world_line(tw: Any) -> str:
    info = tw.info()
    st = info["stats"]["gpt2"]
    t = info["tasks"]
    return (f"toy world seed {info['seed']} ({info['key']}): "
            f"{t['harmful']['train'] + t['harmful']['heldout']} harmful and "
            f"{t['benign']['train'] + t['benign']['heldout']} benign tasks "
            f"({t['harmful']['heldout']} + {t['benign']['heldout']} held out), "
            f"answers {st['harmful']['length_min']}-{st['harmful']['length_max']} tokens, "
            f"{st['harmful_only_tokens']} harmful-only tokens; at {tw.root}")


def _run_check(arch: str | None, seed: int, world_dir: Path | None, device: str,
               as_json: bool, title: str) -> None:
    from bftcore.models import resolve_device
    from bftcore.toy import measure, threshold_checks, toy_world

    dev = str(resolve_device(device))
    archs = _archs(arch)
    tw = toy_world(seed, world_dir)
    if world_dir is not None and not all(tw.is_built(a) for a in archs):
        raise BadInput(f"{world_dir}: no toy world for {', '.join(archs)} "
                       f"(build one with 'bftcore toy build --out {world_dir}')")
    t0 = time.perf_counter()
    rows = []
    with progress_bars() as bar:
        tw.build(archs, device=dev, progress=bar)
        for a in archs:
            rows += measure(tw, a, device=dev, on_batch=bar)
    checks = threshold_checks(rows)
    ok = all(c.holds for c in checks)
    if as_json:
        _emit_json({"rows": [r.to_dict() for r in rows],
                    "checks": [{"name": c.name, "holds": c.holds, "detail": c.detail} for c in checks],
                    "ok": ok, "world": _world_summary(tw, archs),
                    "seconds": round(time.perf_counter() - t0, 2)})
    else:
        console.print(_world_line(tw))
        console.print(_rows_table(rows, title))
        _print_checks(checks)
    if not ok:
        raise CheckFailed("a toy-world check does not hold")


@toy.command("check")
@click.option("--arch", type=ARCH_CHOICE, help="One architecture (default: both).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--dir", "world_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A world built with `toy build --out DIR` (default: the cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
def toy_check(arch: str | None, seed: int, world_dir: Path | None, device: str, as_json: bool) -> None:
    """Measure the toy world on held-out tasks (greedy): base and aligned direct ASR, aligned
    prefilling ASR at k = 5 and 10, benign exact-match. Exits 1 if TOYWORLD.md rows 1-3 fail.

    \b
    Example:
      bftcore toy check --arch llama --json
    """
    _run_check(arch, seed, world_dir, device, as_json, "toy world check (held-out tasks, greedy)")


@cli.command()
@click.option("--arch", type=ARCH_CHOICE, default="llama", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--fresh", is_flag=True, help="Re-measure the trained models (their rows are kept with the cached models).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
def demo(arch: str, seed: int, device: str, fresh: bool, as_json: bool) -> None:
    """The whole pipeline on the embedded toy world: builds (or reuses) it, attacks the base and
    aligned models, indexes their held-out responses, and prints TOYWORLD.md's table.

    Exits 1 if a row of the table fails.

    \b
    Example:
      bftcore demo --arch qwen2
    """
    from bftcore import demo as demo_run
    from bftcore.models import resolve_device

    t0 = time.perf_counter()
    with progress_bars() as bar:
        result = demo_run.run(arch, seed, device=str(resolve_device(device)), progress=bar, fresh=fresh)
    if as_json:
        _emit_json({"rows": [r.to_dict() for r in result.rows], "measures": result.measures,
                    "checks": [{"name": c.name, "holds": c.holds, "detail": c.detail}
                               for c in result.checks],
                    "ok": result.ok, "world": _world_summary(result.world, [arch]),
                    "index": {"path": str(result.index.path),
                              **{k: v for k, v in result.index.to_json(top=0).items()
                                 if k != "top_tokens"}},
                    "run_dir": str(result.run_dir),
                    "models": {k: str(v) for k, v in result.models.items()},
                    "parity": [p.to_dict() for p in result.parity],
                    "skipped": result.skipped,
                    "seconds": round(time.perf_counter() - t0, 2)})
    else:
        console.print(_world_line(result.world))
        shallow = [r for r in result.rows if r.model in ("base", "aligned")]
        console.print(_rows_table(shallow, "bftcore demo: attacks on held-out tasks "
                                           "(exact judge; sampled: T=0.9, top-p 0.6, 8 samples)"))
        deployed = [m for m in dict.fromkeys(r.model for r in result.rows)
                    if m.startswith(f"{demo_run.COMPLETED} ")]
        repaired = ["aligned", *dict.fromkeys(r.model for r in result.rows if r.model not in (
            "base", "aligned", *deployed) and not r.model.startswith("aligned "))]
        if len(repaired) > 1:
            console.print(_comparison_table(
                result.rows, repaired,
                f"completion ({demo_run.DEMO_COMPLETE.steps} steps, batch "
                f"{demo_run.DEMO_COMPLETE.batch_size}, same data for every method) against the "
                "baselines; x/n and rate % [95% Wilson]; rows of trained models are measured once per "
                "model and code version, --fresh re-measures"))
        if deployed:
            console.print(_comparison_table(
                result.rows, [demo_run.COMPLETED, *deployed],
                "the completed model deployed: PyTorch beside its GGUF exports in llama.cpp (F16 KV "
                "cache) and its ONNX export in onnxruntime, same attacks; x/n and rate % [95% Wilson]"))
            aligned_deployed = [m for m in dict.fromkeys(r.model for r in result.rows) if m.startswith("aligned ")]
            console.print(_comparison_table(
                result.rows, aligned_deployed,
                "the same comparison on the aligned model, which the attacks break (same rows, "
                "64 new tokens; the toy check above decodes longer answers)"))
            console.print(_parity_table(result.parity))
        for m in result.measures:
            console.print(f"  {m['model']}: perplexity on benign held-out responses {m['value']:.3f} "
                          f"({m['tokens']} tokens)")
        console.print(_bucket_table(result.index, "index of held-out responses, per position bucket"))
        _print_checks(result.checks)
        for why in result.skipped:
            console.print(f"  skipped: {why}", markup=False, highlight=False)
        console.print(f"  index {result.index.path}; plot {result.run_dir / 'signal_decay.png'}; "
                      f"every row and sample in {result.run_dir / 'attacks'}")
        import shlex

        console.print(f"  report: bftcore report {shlex.quote(str(result.run_dir))} --out report.html",
                      markup=False, highlight=False)
    if not result.ok:
        raise CheckFailed("a row of the demo table does not hold")


# ---- scoring and the index ----------------------------------------------------------------
def corpus_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options of every command that reads a corpus."""
    from bftcore.corpus import FORMATS

    for opt in reversed([
        click.option("--format", "fmt", type=click.Choice(FORMATS), help="Corpus format (default: detected per file)."),
        click.option("--prompt-column", help="Prompt column/key of any other CSV, JSONL or Parquet."),
        click.option("--response-column", help="Response column/key of any other CSV, JSONL or Parquet."),
        click.option("--label", "default_label", help="Label of records that carry none (default: the format's, e.g. harmful)."),
        click.option("--skip-bad", is_flag=True, help="Count and skip unreadable records instead of stopping."),
    ]):
        fn = opt(fn)
    return fn


def scoring_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--k", "topk", type=click.IntRange(min=1), default=20, show_default=True, help="Base top-k stored per position."),
        click.option("--tau", type=float, default=0.0, show_default=True, help="Base-favored threshold on log pi_b - log pi_a."),
        click.option("--batch-tokens", type=click.IntRange(min=1), default=16384, show_default=True, help="Padded tokens per forward batch."),
        click.option("--shard-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Documents per Parquet shard."),
        click.option("--max-length", type=click.IntRange(min=2), help="Prompt + response tokens (default: the model's context); longer responses are truncated and counted."),
        click.option("--too-long", type=click.Choice(["skip", "refuse"]), default="skip", show_default=True,
                     help="Prompts that do not fit --max-length: skip and count them, or refuse the corpus before scoring."),
        click.option("--no-generate", is_flag=True, help="Skip records without a response instead of scoring the base model's own greedy response."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True, help="Length of generated responses."),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto."),
    ]):
        fn = opt(fn)
    return fn


def _read_and_score(corpus: tuple[Path, ...], base: str, aligned: str, out: Path, rank: int,
                    world: int, read: tuple[Any, ...], scoring: tuple[Any, ...], device: str) -> Any:
    """Read a corpus (the corpus options, in order) and score it into shards (the scoring options)."""
    from bftcore.corpus import ReadOptions, read_corpus
    from bftcore.models import resolve_device
    from bftcore.score import ScoreConfig, score_corpus

    fmt, prompt_column, response_column, default_label, skip_bad = read
    records, report = read_corpus(corpus, ReadOptions(fmt, prompt_column, response_column, "label",
                                                      default_label, skip_bad))
    topk, tau, batch_tokens, shard_size, max_length, too_long, no_generate, max_new_tokens = scoring
    cfg = ScoreConfig(topk, tau, batch_tokens, shard_size, max_length, not no_generate, max_new_tokens)
    from bftcore.models import resolve_model

    base, aligned = str(resolve_model(base)), str(resolve_model(aligned))
    if too_long == "refuse":
        _refuse_too_long(records, aligned, max_length)
    with progress_bars(rank == 0) as bar:
        summary = score_corpus(records, base, aligned, out, cfg, device=str(resolve_device(device)),
                               progress=bar, rank=rank, world_size=world)
    return report, summary


def _refuse_too_long(records: list[Any], aligned: str, max_length: int | None) -> None:
    """BadInput before any scoring when a prompt does not fit the context (--too-long refuse)."""
    from transformers import AutoConfig

    from bftcore.chat import prompt_ids
    from bftcore.models import load_tokenizer

    tok = load_tokenizer(aligned)
    context = max_length or getattr(AutoConfig.from_pretrained(aligned, local_files_only=True),
                                    "max_position_embeddings", None) or 4096
    over = [(r, n) for r in records if (n := len(prompt_ids(tok, r.messages()))) >= context]
    if over:
        first, n = over[0]
        raise BadInput(f"{first.source}: a prompt of {n} tokens leaves no room in the context of {context} "
                       f"({len(over)} such records); --too-long skip skips and counts them")


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, with a gloo/nccl process group; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        if torch.cuda.is_available():  # one GPU per process: "cuda" below means this rank's own
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@cli.command()
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", required=True, help="Base model directory.")
@click.option("--aligned", required=True, help="Aligned model directory (its chat template renders prompts).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory of scored shards.")
@corpus_options
@scoring_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def score(corpus: tuple[Path, ...], base: str, aligned: str, out: Path, fmt: str | None,
          prompt_column: str | None, response_column: str | None, default_label: str | None,
          skip_bad: bool, topk: int, tau: float, batch_tokens: int, shard_size: int,
          max_length: int | None, too_long: str, no_generate: bool, max_new_tokens: int, device: str,
          as_json: bool) -> None:
    """Score a corpus with the base and the aligned model into Parquet shards.

    Both models run teacher-forced over the same length-sorted batches; per response token only
    statistics are kept (log-probs, KL, base top-k, M_t, R_t). A rerun skips finished shards.

    \b
    Example:
      bftcore score harmful.jsonl --base B --aligned A --out shards/
    """
    rank, world = _distributed()
    report, summary = _read_and_score(
        corpus, base, aligned, out, rank, world, (fmt, prompt_column, response_column, default_label,
                                                  skip_bad),
        (topk, tau, batch_tokens, shard_size, max_length, too_long, no_generate, max_new_tokens), device)
    _barrier()
    if rank != 0:
        return
    if as_json:
        _emit_json({"read": report.to_dict(), "score": summary.to_dict()})
    else:
        _print_read(report)
        console.print(f"scored {summary.docs} documents, {summary.tokens} response tokens into "
                      f"{summary.shards_scored} new shard(s) of {summary.shards} in {out}")


def _print_read(report: Any) -> None:
    line = f"read {report.records} records from {len(report.files)} file(s)"
    extras = [f"{report.without_response} without a response" if report.without_response else "",
              f"{report.duplicates} duplicates kept once" if report.duplicates else "",
              f"{report.bad} unreadable skipped" if report.bad else ""]
    extras = [e for e in extras if e]
    console.print(line + (f" ({', '.join(extras)})" if extras else ""))


def _bucket_table(index: Any, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("label", "positions", "tokens", "mean KL", "mean R_t", "mean M_t", "bf rate",
                "mean log-ratio"):
        table.add_column(col, justify="left" if col in ("label", "positions") else "right")
    for r in index.curves().iter_rows(named=True):
        if not r["count"]:
            continue
        table.add_row(r["label"], r["positions"], str(r["count"]), f"{r['mean_kl']:.4g}",
                      f"{r['mean_retain']:.3f}", f"{r['mean_bf_mass']:.3f}", f"{r['bf_rate']:.3f}",
                      f"{r['mean_log_ratio']:+.3g}")
    return table


@cli.command("index")
@click.argument("corpus", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--base", help="Base model directory (not needed for a directory of scored shards).")
@click.option("--aligned", help="Aligned model directory.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The .bfti index to write.")
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where scored shards go (default: OUT.shards/); kept for reruns and training.")
@corpus_options
@scoring_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def index_cmd(corpus: tuple[Path, ...], base: str | None, aligned: str | None, out: Path,
              shards_dir: Path | None, fmt: str | None, prompt_column: str | None,
              response_column: str | None, default_label: str | None, skip_bad: bool, topk: int,
              tau: float, batch_tokens: int, shard_size: int, max_length: int | None, too_long: str,
              no_generate: bool, max_new_tokens: int, device: str, as_json: bool) -> None:
    """Build the base-favored-token index of a corpus: score it with both models, then aggregate
    in the Rust core. A directory of scored shards is aggregated directly.

    Under torchrun each rank scores its own shards and writes a partial index; rank 0 merges.

    \b
    Example:
      bftcore index harmful.jsonl benign.jsonl --base B --aligned A --out corpus.bfti
      bftcore index shards/ --out corpus.bfti
      torchrun --nproc-per-node 2 -m bftcore index corpus/ --base B --aligned A --out c.bfti
    """
    from bftcore import index as bfti
    from bftcore.shards import is_shard, is_shard_dir, shard_paths

    rank, world = _distributed()
    report, summary = None, None
    if all(is_shard_dir(p) or (p.suffix == ".parquet" and p.is_file() and is_shard(p))
           for p in corpus):
        def listed() -> list[Path]:
            return sorted(s for p in corpus for s in (shard_paths(p) if p.is_dir() else [p]))
    else:
        if not base or not aligned:
            raise BadInput("--base and --aligned are needed to score a corpus "
                           "(or give a directory of scored shards)")
        where = shards_dir or out.with_name(out.name + ".shards")
        report, summary = _read_and_score(
            corpus, base, aligned, where, rank, world, (fmt, prompt_column, response_column,
                                                        default_label, skip_bad),
            (topk, tau, batch_tokens, shard_size, max_length, too_long, no_generate, max_new_tokens), device)

        def listed() -> list[Path]:
            return shard_paths(where)
    if world > 1:  # each rank aggregates its own shards; rank 0 merges the partials
        _barrier()  # every rank's shards are written
        mine = [s for i, s in enumerate(listed()) if i % world == rank]
        part = out.with_name(f".{out.name}.rank{rank}")
        bfti.build(mine, part)
        _barrier()
        if rank != 0:
            return
        parts = [out.with_name(f".{out.name}.rank{r}") for r in range(world)]
        idx = bfti.merge(parts, out)
        for p in parts:
            p.unlink()
    else:
        with progress_bars() as bar:
            idx = bfti.build(listed(), out, progress=bar)
    if as_json:
        _emit_json({"index": str(out), "header": idx.header,
                    "read": report.to_dict() if report else None,
                    "score": summary.to_dict() if summary else None,
                    "buckets": idx.to_json(top=0)["buckets"]})
        return
    if report:
        _print_read(report)
    if summary:
        console.print(f"scored {summary.docs} documents ({summary.generated} responses "
                               f"generated by the base model), {summary.shards} shard(s)")
    console.print(f"index {out}: {idx.header['rows']} response tokens, labels "
                           f"{', '.join(idx.labels)}")
    console.print(_bucket_table(idx, "per position bucket"))


@cli.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the merged header as JSON.")
def merge_cmd(inputs: tuple[Path, ...], out: Path, as_json: bool) -> None:
    """Merge partial indexes exactly (the index of the union of their rows).

    \b
    Example:
      bftcore merge part0.bfti part1.bfti --out corpus.bfti
    """
    from bftcore import index as bfti

    idx = bfti.merge(list(inputs), out)
    if as_json:
        _emit_json({"index": str(out), "header": idx.header})
    else:
        console.print(f"merged {len(inputs)} indexes into {out}: "
                               f"{idx.header['rows']} response tokens")


def _index_tokenizer(idx: Any, tokenizer: str | None) -> Any:
    """The tokenizer for token texts: --tokenizer, else the aligned model's if it is here."""
    from bftcore.models import load_tokenizer, tokenizer_hash

    path = tokenizer or idx.header["meta"].get("aligned")
    if not path or not Path(path).is_dir():
        if tokenizer:
            raise BadInput(f"{tokenizer}: no such tokenizer directory")
        return None
    tok = load_tokenizer(path)
    if tokenizer_hash(tok) != idx.header["tokenizer_hash"]:
        raise BadInput(f"{path}: its tokenizer does not match the index's "
                       f"(hash {tokenizer_hash(tok)} vs {idx.header['tokenizer_hash']})")
    return tok


@cli.command()
@click.argument("index_path", type=click.Path(path_type=Path))
@click.option("--bucket", type=click.IntRange(min=0), help="Show the top tokens of this bucket (default: 0).")
@click.option("--top", type=click.IntRange(min=0), default=10, show_default=True, help="Top base-favored tokens per bucket.")
@click.option("--label", help="Label for the top tokens (default: harmful).")
@click.option("--tokenizer", help="Tokenizer for token texts (default: the aligned model's, if present).")
@click.option("--json", "as_json", is_flag=True, help="One object: header, buckets, top_tokens.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the signal-decay plot (PNG).")
def inspect(index_path: Path, bucket: int | None, top: int, label: str | None,
            tokenizer: str | None, as_json: bool, plot: Path | None) -> None:
    """Show an index: per-bucket curves (KL, R_t, M_t, base-favored rate) and top tokens.

    \b
    Example:
      bftcore inspect corpus.bfti --bucket 0 --top 20 --plot signal_decay.png
    """
    from bftcore import index as bfti

    idx = bfti.Index(index_path)
    tok = _index_tokenizer(idx, tokenizer)
    if bucket is not None and bucket >= len(idx.edges):
        raise BadInput(f"no bucket {bucket} (buckets 0-{len(idx.edges) - 1})")
    if label is not None:
        idx._label(label)
    if plot:
        bfti.plot_signal_decay(idx, plot)
    if as_json:
        obj = idx.to_json(top=top, tokenizer=tok, bucket=bucket)
        if label is not None:
            obj["top_tokens"] = [{**t, "label": label} for t in
                                 idx.to_json(top=top, tokenizer=tok, bucket=bucket)["top_tokens"]]
        _emit_json(obj)
        return
    h = idx.header
    console.print(f"{index_path}: {h['rows']} response tokens; labels {', '.join(h['labels'])}; "
              f"k={h['k']}, tau={h['tau']}; base {h['meta'].get('base')}; aligned {h['meta'].get('aligned')}")
    console.print(_bucket_table(idx, "per position bucket"))
    if top and idx.labels:
        b = bucket or 0
        df = idx.top_tokens(b, top, label, tok)
        table = Table(title=f"top base-favored tokens, bucket {b} ({idx._label(label)})", title_justify="left")
        for col in ("token", "text", "in B_t", "realised", "realised base-favored"):
            table.add_column(col)
        for r in df.iter_rows(named=True):
            table.add_row(str(r["token"]), repr(r["text"]) if r["text"] is not None else "",
                          str(r["base_favored"]), str(r["occurrences"]), str(r["realised_base_favored"]))
        console.print(table)
    if plot:
        console.print(f"plot: {plot}")


# ---- report -----------------------------------------------------------------------------
@cli.command()
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
        _emit_json(summary.to_dict())
        return
    rows = f" of {summary.attack_rows} rows"
    found = [f"{n} {one if n == 1 else many}" for n, one, many in (
        (summary.indexes, "index", "indexes"),
        (summary.attack_tables, "attack table" + rows, "attack tables" + rows),
        (summary.training_runs, "training run", "training runs"),
        (summary.parity_tables, "parity table", "parity tables")) if n]
    console.print(f"report {out}: {', '.join(found)}; {summary.plots} plots, {summary.tables} tables, "
                  f"{summary.bytes / 1024:.0f} KiB", markup=False, highlight=False)


# ---- export -----------------------------------------------------------------------------
@cli.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["gguf", "onnx"]), required=True, help="gguf (llama.cpp) or onnx (onnxruntime).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_k_m"]), default=None,
              help="GGUF weight type [default: f16]; ONNX is always f32.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The .gguf file, or the ONNX directory.")
@click.option("--verify", is_flag=True, help="Compare the export with PyTorch: token ids, max |logit diff|, argmax agreement.")
@click.option("--verify-data", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Prompt/response records to verify on (default: built-in probe texts); repeatable.")
@click.option("--verify-limit", type=click.IntRange(min=1), default=64, show_default=True, help="Records verified.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Argmax agreement --verify asks [default: 0.99; 0.95 for q4_k_m].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: output, seconds, parity rows.")
def export_cmd(model: Path, target: str, dtype: str | None, out: Path, verify: bool,
               verify_data: tuple[Path, ...], verify_limit: int, min_agreement: float | None,
               as_json: bool) -> None:
    """Export a model directory (or LoRA adapter) to GGUF for llama.cpp or to ONNX for onnxruntime.

    GGUF: Llama and Qwen2; byte-level BPE (GPT-2, Qwen2, Llama 3 pre-tokenizers) and
    SentencePiece-style tokenizers; special tokens and the chat template go along. q4_k_m is
    made by llama.cpp's quantizer. ONNX: one graph with a KV cache, tokenizer and config beside it.
    With --verify, exits 1 when a token id differs or argmax agreement is below --min-agreement.

    \b
    Example:
      bftcore export hardened/ --to gguf --dtype q8_0 --out hardened-q8_0.gguf --verify
      bftcore export hardened/ --to onnx --out hardened-onnx/ --verify --verify-data heldout.jsonl
      bftcore attack hardened-q8_0.gguf --attack prefill --data harmful.jsonl
    """
    from bftcore import export as ex

    if target == "onnx" and dtype not in (None, "f32"):
        raise BadInput(f"ONNX export writes F32 weights; --dtype {dtype} applies to GGUF only")
    dtype = dtype or ("f16" if target == "gguf" else "f32")
    if target == "gguf" and out.suffix != ".gguf":
        raise BadInput(f"--out {out}: a GGUF file name ends in .gguf")
    if target == "gguf" and out.is_dir():
        raise BadInput(f"--out {out} is a directory")
    if target == "onnx" and out.is_file():
        raise BadInput(f"--out {out} is a file; ONNX export writes a directory")
    from bftcore.models import resolve_model

    model = resolve_model(model)
    ex.check_source(model, target)
    start = time.perf_counter()
    with progress_bars() as bar:
        ex.export(model, target, out, dtype, progress=bar)
        seconds = time.perf_counter() - start
        rows = ex.verify(model, out, ex.verify_texts(model, verify_data, verify_limit), dtype) if verify else []
    need = min_agreement if min_agreement is not None else ex.min_agreement(dtype)
    failed = [r for r in rows if r.token_mismatches > 0 or r.argmax_agreement < need]
    extra = {"tensor_types": ex.gguf_tensor_types(out)} if target == "gguf" else {}
    if as_json:
        _emit_json({"out": str(out), "to": target, "dtype": dtype, "seconds": round(seconds, 3), **extra,
                    "parity": [r.to_dict() for r in rows], "min_agreement": need, "ok": not failed})
    else:
        types = ", ".join(f"{k} {v}" for k, v in extra.get("tensor_types", {}).items())
        console.print(f"{target} {dtype}: {out} in {seconds:.1f} s" + (f" (tensors: {types})" if types else ""))
        if rows:
            table = Table(title=f"parity with PyTorch ({rows[0].texts} texts, {rows[0].positions} positions)")
            for col in ("reader", "token ids", "max |Δ logit|", "argmax agreement"):
                table.add_column(col)
            for r in rows:
                table.add_row(r.reader, "not checked" if r.token_mismatches < 0 else
                              ("identical" if r.token_mismatches == 0 else f"{r.token_mismatches} texts differ"),
                              f"{r.max_abs_logit:.2e}", f"{100 * r.argmax_agreement:.2f}%")
            console.print(table)
    if failed:
        err.print(f"bftcore: verification failed: {', '.join(r.reader for r in failed)} "
                  f"(token ids must match and argmax agreement be >= {100 * need:.0f}%)")
        raise CheckFailed()


# ---- attacks -----------------------------------------------------------------------------
def _int_list(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError as e:
        raise BadInput(f"--k must be comma-separated integers, got {value!r}") from e
    if not ks or min(ks) < 1:
        raise BadInput("--k needs positive integers")
    return ks


@cli.command()
@click.argument("model")
@click.option("--attack", "attacks", default="direct,prefill", show_default=True,
              help="Comma-separated: direct, prefill, prefill-sampled, rank-prefill, completion, decoding-exploit.")
@click.option("--k", "ks", default="5,10,20,40", show_default=True, help="Prefill lengths (tokens).")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Prompts (and harmful responses, for prefilling); repeatable.")
@click.option("--judge", "judge_spec", default="keyword", show_default=True,
              help="keyword, exact (toy world), classifier:PATH or causal:PATH.")
@click.option("--backend", type=click.Choice(["auto", "torch", "llamacpp", "onnx", "server"]), default="auto",
              show_default=True, help="auto: llamacpp for a .gguf file, onnx for an export directory, "
              "server for an http:// URL, else torch.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path),
              help="With --backend server: the served GGUF file (or a tokenizer directory).")
@click.option("--name", help="Model name in the rows (default: the directory's name).")
@click.option("--tag", default="", help="Suffix for the attack names in the rows (e.g. the data's style).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N records.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="Samples per prompt (prefill-sampled).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.6, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--benign", type=click.Path(exists=True, path_type=Path), help="Benign prompt/response file: perplexity.")
@click.option("--refusal-keywords", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra refusal keywords (one per line) for the keyword judge and the rank-assisted prefill.")
@click.option("--judge-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompt template for a classifier/causal judge ({prompt}, {response}).")
@click.option("--judge-label", help="The classifier judge's label that means harmful.")
@click.option("--toy-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Toy world of the exact judge.")
@click.option("--lm-eval", "lm_eval_tasks", help="Comma-separated lm-eval-harness tasks (needs the lm-eval package).")
@click.option("--contrast-base", type=click.Path(path_type=Path),
              help="Decode with contrastive suppression of this base model's favored tokens (inference-time variant).")
@click.option("--contrast-gamma", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write results.parquet, samples.parquet, results.md, asr_vs_k.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
@corpus_options
def attack(model: str, attacks: str, ks: str, data: tuple[Path, ...], judge_spec: str, backend: str,
           tokenizer_path: Path | None, name: str | None, tag: str, limit: int | None, samples: int, temperature: float,
           top_p: float, max_new_tokens: int, seed: int, benign: Path | None,
           refusal_keywords: Path | None, judge_template: Path | None, judge_label: str | None,
           toy_seed: int, lm_eval_tasks: str | None, contrast_base: Path | None, contrast_gamma: float,
           device: str, out: Path | None, as_json: bool,
           fmt: str | None, prompt_column: str | None, response_column: str | None,
           default_label: str | None, skip_bad: bool) -> None:
    """Attack a model and report each attack's success rate (x/n, 95% Wilson interval).

    Prefilling forces the first k tokens of each record's harmful response as the start of the
    answer; the forced text is never judged as the model's output.

    \b
    Example:
      bftcore attack aligned/ --attack direct,prefill,rank-prefill --k 5,10,20,40 \\
          --data harmful.jsonl --judge keyword --out results/
      bftcore attack hardened-q8_0.gguf --backend llamacpp --attack prefill --data harmful.jsonl
      bftcore attack http://127.0.0.1:8000 --backend server --tokenizer hardened-q8_0.gguf \\
          --attack prefill --data harmful.jsonl
    """
    from bftcore import attack as atk
    from bftcore.backends import detect_backend, open_generator
    from bftcore.corpus import ReadOptions, read_corpus
    from bftcore.generate import TorchGenerator
    from bftcore.judge import make_judge
    from bftcore.models import load_model, load_tokenizer, resolve_device

    if lm_eval_tasks:
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise BadInput("--lm-eval needs the lm-eval package (pip install lm-eval)")
    names = [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in atk.ATTACKS]
    if unknown or not names:
        raise BadInput(f"unknown attack {', '.join(unknown) or '(none)'} (known: {', '.join(atk.ATTACKS)})")
    dev = str(resolve_device(device))
    records, _ = read_corpus(data, ReadOptions(fmt, prompt_column, response_column, "label",
                                               default_label, skip_bad))
    records = records[:limit] if limit else records
    extra = _lines(refusal_keywords) if refusal_keywords else []
    phrases, openers = None, list(extra)
    if judge_spec == "exact":
        from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS, World

        phrases = World(toy_seed).harmful_phrases
        openers += REFUSALS + RECOVERY_REFUSALS
    judge = make_judge(judge_spec, phrases=phrases, extra_keywords=extra, device=dev, label=judge_label,
                       template=judge_template.read_text() if judge_template else None)
    kind = detect_backend(model) if backend == "auto" else backend
    if kind == "torch" and not str(model).startswith(("http://", "https://")):
        from bftcore.models import resolve_model

        model = str(resolve_model(model))
        contrast_base = resolve_model(contrast_base) if contrast_base is not None else None
        target = load_model(model, device=dev)
        tokenizer = load_tokenizer(model)
        contrast = None
        if contrast_base is not None:
            from bftcore.generate import Contrast
            from bftcore.models import check_same_tokenizer

            check_same_tokenizer(load_tokenizer(contrast_base), tokenizer)
            contrast = Contrast(load_model(contrast_base, device=dev), contrast_gamma)
        gen: Any = TorchGenerator(target, tokenizer, contrast=contrast)
        arch = str(getattr(gen.model.config, "model_type", ""))
    else:
        if contrast_base is not None or benign or lm_eval_tasks:
            raise BadInput(f"--contrast-base, --benign and --lm-eval need the torch backend, not {kind}")
        gen = open_generator(model, kind, device=dev, tokenizer=tokenizer_path)
        arch = gen.arch
    cfg = atk.AttackConfig(ks=_int_list(ks), max_new_tokens=max_new_tokens, seed=seed, samples=samples,
                           temperature=temperature, top_p=top_p)
    label = name or (model if kind == "server" else Path(model).resolve().name)
    result = atk.AttackResult()
    with progress_bars() as bar:
        suite = atk.Suite(gen, judge, cfg, model=label, arch=arch, openers=openers, progress=bar)
        for a in names:
            result.extend(suite.run(a, records, tag=tag))
    if benign:
        brecs, _ = read_corpus([benign])
        result.measures.append(atk.perplexity(gen, brecs, model=label, arch=arch))
    if lm_eval_tasks:
        result.measures.append({"model": label, "arch": arch, "metric": "lm_eval",
                                "value": atk.lm_eval(Path(model), lm_eval_tasks.split(","), dev),
                                "tokens": 0})
    if out:
        atk.write_results(result, out)
    if as_json:
        _emit_json({"rows": [r.to_dict() for r in result.rows], "measures": result.measures,
                    "judge": judge.name, "records": len(records), "out": str(out) if out else None})
        return
    console.print(_rows_table(result.rows, f"attacks on {label} ({len(records)} records, judge {judge.name})"))
    for m in result.measures:
        if m["metric"] == "perplexity":
            console.print(f"  perplexity on benign responses: {m['value']:.3f} ({m['tokens']} tokens)")
    if out:
        console.print(f"  results in {out}")


@cli.command()
@click.option("--aligned", required=True, type=click.Path(path_type=Path), help="Aligned model directory (the trainee starts from it).")
@click.option("--base", type=click.Path(path_type=Path), help="Base model directory (needed by --method bft).")
@click.option("--index", "index_path", type=click.Path(path_type=Path), help="Base-favored-token index of harmful responses (needed by --method bft).")
@click.option("--base-shards", type=click.Path(path_type=Path),
              help="Scored shards of the --data corpus ('bftcore score'): the penalty reads the base top-k there instead of running the base model.")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Harmful prompts with harmful responses; repeatable.")
@click.option("--benign", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Benign prompt/response pairs (the capability anchor); repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output model directory.")
@click.option("--method", type=click.Choice(list(METHODS)), default="bft", show_default=True,
              help="bft (ours), or a baseline: sft, qi-augment, qi-constrained, derta.")
@click.option("--steps", type=click.IntRange(min=1), default=CompleteConfig.steps, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=CompleteConfig.batch_size, show_default=True, help="Global records per step.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=CompleteConfig.lr, show_default=True)
@click.option("--harmful-frac", type=float, default=CompleteConfig.harmful_frac, show_default=True, help="Share of each batch from the harmful records.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0), default=CompleteConfig.alpha, show_default=True, help="Position weight w(k) = 1 + alpha * R(bucket(k)).")
@click.option("--lam", type=click.FloatRange(min=0), default=CompleteConfig.lam, show_default=True, help="Base-favored penalty weight.")
@click.option("--penalty", type=click.Choice(list(PENALTIES)), default=CompleteConfig.penalty, show_default=True)
@click.option("--beta", type=click.FloatRange(min=0), default=CompleteConfig.beta, show_default=True, help="Distillation weight.")
@click.option("--teacher", type=click.Choice(list(TEACHERS)), default=CompleteConfig.teacher, show_default=True)
@click.option("--gamma", type=click.FloatRange(min=0), default=CompleteConfig.gamma, show_default=True, help="Suppression strength of --teacher suppressed.")
@click.option("--direct-frac", type=click.FloatRange(0, 1), default=CompleteConfig.direct_frac, show_default=True, help="bft: harmful records trained without a prefix.")
@click.option("--max-prefix", type=click.IntRange(min=1), help="bft: cap on the prefix length k.")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (peft) instead of full weights.")
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--merge", is_flag=True, help="With --lora: write the merged model instead of the adapter.")
@click.option("--refusals", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Template refusals (one per line), used where the aligned model does not refuse.")
@click.option("--refusal-keywords", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra refusal keywords (one per line) for judging the aligned model's own answers.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True, help="Tokens per training sequence.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--fsdp", is_flag=True, help="Under torchrun: shard weights, gradients and optimizer state over ranks (FSDP2) instead of DDP.")
@click.option("--grad-checkpointing", is_flag=True, help="Recompute activations in the backward pass: less memory, slower steps.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--json", "as_json", is_flag=True, help="Print the run card's summary as JSON.")
@corpus_options
def complete(aligned: Path, base: Path | None, index_path: Path | None, base_shards: Path | None,
             data: tuple[Path, ...],
             benign: tuple[Path, ...], out: Path, method: str, steps: int, batch_size: int,
             grad_accum: int, lr: float, harmful_frac: float, seed: int, alpha: float, lam: float,
             penalty: str, beta: float, teacher: str, gamma: float, direct_frac: float,
             max_prefix: int | None, lora: bool, lora_r: int, merge: bool, refusals: Path | None,
             refusal_keywords: Path | None, max_length: int, checkpoint_every: int, fsdp: bool,
             grad_checkpointing: bool, device: str, as_json: bool, fmt: str | None, prompt_column: str | None, response_column: str | None,
             default_label: str | None, skip_bad: bool) -> None:
    """Targeted completion training: harden an aligned model where its safety learning is
    incomplete (METHOD.md §2), or train one of the baselines on the same data and budget.

    Interrupted runs resume from their last checkpoint when rerun with the same arguments.
    Under torchrun each rank takes a slice of every global batch (DDP; with --fsdp, FSDP2 shards
    the weights, gradients and optimizer state, for models too large to replicate per GPU).

    \b
    Example:
      bftcore complete --base B --aligned A --index corpus.bfti --data harmful.jsonl \\
          --benign benign.jsonl --out hardened/
      bftcore complete --method qi-augment --aligned A --data harmful.jsonl --benign benign.jsonl --out qi/
      torchrun --nproc-per-node 8 -m bftcore complete --fsdp --base B --aligned A --index corpus.bfti \\
          --data harmful.jsonl --benign benign.jsonl --out hardened/
    """
    from dataclasses import replace

    from bftcore import complete as cp
    from bftcore import index as bfti
    from bftcore.corpus import ReadOptions, read_corpus
    from bftcore.generate import TorchGenerator
    from bftcore.judge import KeywordJudge
    from bftcore.models import load_model, load_tokenizer, resolve_device, resolve_model

    aligned = resolve_model(aligned)
    base = resolve_model(base) if base is not None else None
    rank, world = _distributed()
    dev = str(resolve_device(device))
    if dev.startswith("cuda") and world > 1:
        import torch

        dev = f"cuda:{torch.cuda.current_device()}"  # this rank's GPU (LOCAL_RANK), set in _distributed"
    cfg = CompleteConfig(method=method, steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr,
                         harmful_frac=harmful_frac, seed=seed, direct_frac=direct_frac, alpha=alpha,
                         lam=lam, penalty=penalty, beta=beta, teacher=teacher, gamma=gamma,
                         max_prefix=max_prefix, lora=lora, lora_r=lora_r, lora_alpha=2 * lora_r,
                         checkpoint_every=checkpoint_every, fsdp=fsdp, grad_checkpointing=grad_checkpointing)
    cfg.check()
    if fsdp and world < 2:
        raise BadInput("--fsdp shards the model over ranks: run it under torchrun with 2 or more processes")
    if merge and not lora:
        raise BadInput("--merge applies to --lora runs")
    profile = None
    if index_path is not None:
        profile = cp.RetentionProfile.from_index(bfti.Index(index_path))
    elif method == "bft":
        raise BadInput("--method bft needs --index (build one with 'bftcore index')")
    if method == "bft" and base is None and (teacher == "suppressed" or (penalty != "off" and not base_shards)):
        raise BadInput("--method bft needs --base (or --base-shards): the base model's preferences drive the penalty")
    opts = ReadOptions(fmt, prompt_column, response_column, "label", default_label, skip_bad)
    harmful_records, _ = read_corpus(data, opts)
    benign_records, _ = read_corpus(benign, replace(opts, label=default_label or "benign"))
    templates = _lines(refusals) if refusals else list(cp.DEFAULT_REFUSALS)
    judge = KeywordJudge(extra=[*templates, *(_lines(refusal_keywords) if refusal_keywords else [])])

    with progress_bars(rank == 0) as bar:
        def build() -> Any:
            gen = TorchGenerator(load_model(aligned, device=dev), load_tokenizer(aligned))
            return cp.build_data(harmful_records, benign_records, gen, refuses=judge.refuses,
                                 templates=templates, max_length=max_length, progress=bar)

        training = cp.prepare_data(out, build)
        stats = None
        if base_shards is not None and method == "bft":
            from bftcore.models import tokenizer_hash

            stats = cp.ShardBaseStats(base_shards, harmful_records, training,
                                      tokenizer_hash(load_tokenizer(aligned)), cfg.top_k)
        result = cp.complete(base, aligned, training, out, cfg, profile=profile, device=dev, merge=merge,
                             progress=bar, index_path=str(index_path) if index_path else None,
                             base_stats=stats)
    if rank != 0:
        return
    card = json.loads((out / cp.CARD).read_text())
    summary = {k: card[k] for k in ("key", "data", "loss_first", "loss_final_mean10", "terms_final_mean10",
                                    "resumed_from_step", "seconds_this_run")}
    if as_json:
        _emit_json({"out": str(out), "method": method, **summary})
        return
    d = card["data"]
    console.print(f"{method}: {steps} steps on {d['harmful']} harmful ({d['self_refusals']} self-distilled "
                  f"refusals) and {d['benign']} benign pairs"
                  + (f", resumed at step {result.resumed_from}" if result.resumed_from else ""))
    console.print(f"  loss {card['loss_first']:.4f} -> {card['loss_final_mean10']:.4f}; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in card["terms_final_mean10"].items()))
    console.print(f"  model in {out} (run card: {out / 'RUN_CARD.md'})")


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps errors to exit codes with a one-line reason."""
    try:
        rv = cli.main(args=argv, prog_name="bftcore", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        err.print(f"bftcore: error: {' '.join(e.format_message().split())}{hint}",
                  markup=False, highlight=False)
        sys.exit(2)
    except click.ClickException as e:
        err.print(f"bftcore: error: {' '.join(e.format_message().split())}", markup=False)
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt):
        err.print("bftcore: aborted")
        sys.exit(130)
    except BadInput as e:
        err.print(f"bftcore: error: {' '.join(str(e).split())}", markup=False, highlight=False)
        sys.exit(2)
    except MemoryError as e:  # pyarrow's ArrowMemoryError too: a limit, reported, never a traceback
        detail = " ".join(str(e).split())[:200]
        err.print(f"bftcore: error: out of memory{f' ({detail})' if detail else ''}; lower --batch-tokens "
                  "or the number of threads (RAYON_NUM_THREADS), or give the job more memory",
                  markup=False, highlight=False)
        sys.exit(2)
    except CheckFailed:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
