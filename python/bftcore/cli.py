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
from bftcore.errors import BadInput, CheckFailed

ARCH_CHOICE = click.Choice(["llama", "qwen2"])
# Off a terminal rich would wrap at 80 columns; tables get room and messages never wrap.
out = Console(width=None if sys.stdout.isatty() else 120, soft_wrap=True)
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


def _print_checks(checks: list[Any]) -> None:
    for c in checks:
        mark = "[green]holds[/]" if c.holds else "[red]FAILS[/]"
        out.print(f"  {mark}  {c.name}  ({c.detail})")


def _emit_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2))


# ---- the command tree ---------------------------------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", "-V", prog_name="bftcore")
def cli() -> None:
    """Find where an aligned LLM's safety is only shallow, repair it, ship it, re-attack it.

    \b
    Example:
      bftcore demo                  # the whole pipeline on the embedded toy world (CPU)
    """
    _quiet_libraries()


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
    out.print(_world_line(tw))
    for a in _archs(arch):
        for role in ("base", "aligned"):
            out.print(f"  {a} {role}: {tw.model_dir(a, role)}")
    out.print(f"  data: {tw.data_dir}")


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
        out.print(_world_line(tw))
        out.print(_rows_table(rows, title))
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
def demo(arch: str, seed: int, device: str, as_json: bool) -> None:
    """The whole pipeline on the embedded toy world: builds (or reuses) it and prints the table.

    Exits 1 if a row of TOYWORLD.md's table fails.

    \b
    Example:
      bftcore demo --arch qwen2
    """
    _run_check(arch, seed, None, device, as_json, "bftcore demo: toy world (held-out tasks, greedy)")


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
    except CheckFailed:
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
