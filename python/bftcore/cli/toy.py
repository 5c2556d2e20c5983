"""`bftcore toy build` and `bftcore toy check`: the embedded toy world."""

from __future__ import annotations

import time
from pathlib import Path

import click

from bftcore.cli.common import ARCH_CHOICE, console, emit_json, print_checks, progress_bars, rows_table, strict_option
from bftcore.errors import BadInput, CheckFailed


@click.group()
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
@click.option("--rebuild", is_flag=True, help="Build every stage again, even where one is there.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def toy_build(arch: str | None, seed: int, out: Path | None, device: str, rebuild: bool, as_json: bool) -> None:
    """Build the toy world (or reuse the cached one) and print where it is.

    Deterministic: the same seed on the same machine gives identical tokenizer files and weights.
    A world in the cache is keyed by the seed, the settings, the versions of torch, transformers
    and tokenizers, and the toy world's version number (never by source text).

    \b
    Example:
      bftcore toy build --arch qwen2 --seed 1 --out /tmp/toy1
    """
    from bftcore.models import resolve_device
    from bftcore.toy import toy_world

    t0 = time.perf_counter()
    with progress_bars() as bar:
        tw = toy_world(seed, out).build(_archs(arch), device=str(resolve_device(device)), progress=bar,
                                        rebuild=rebuild)
    summary = {**tw.summary(_archs(arch)), "seconds": round(time.perf_counter() - t0, 2)}
    if as_json:
        emit_json(summary)
        return
    console.print(summary["line"])
    for a, roles in summary["models"].items():
        for role, path in roles.items():
            console.print(f"  {a} {role}: {path}")
    console.print(f"  data: {tw.data_dir}")


@toy.command("check")
@click.option("--arch", type=ARCH_CHOICE, help="One architecture (default: both).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--dir", "world_dir", type=click.Path(file_okay=False, path_type=Path),
              help="A world built with `toy build --out DIR` (default: the cache).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@strict_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
def toy_check(arch: str | None, seed: int, world_dir: Path | None, device: str, strict: bool, as_json: bool) -> None:
    """Measure the toy world on held-out tasks (greedy): base and aligned direct ASR, aligned
    prefilling ASR at k = 5 and 10, benign exact-match; the first rows of the toy world's
    expectations (docs/toy-world.md), each decided by its 95% interval.

    Exits 0 when the measurement ran, whatever the verdicts; 3 with --strict when one fails.

    \b
    Example:
      bftcore toy check --arch llama --json
    """
    from bftcore.models import resolve_device
    from bftcore.toy import check_world, toy_world

    tw = toy_world(seed, world_dir)
    if world_dir is not None and not all(tw.is_built(a) for a in _archs(arch)):
        raise BadInput(f"{world_dir}: no toy world for {', '.join(_archs(arch))} "
                       f"(build one with 'bftcore toy build --out {world_dir}')")
    t0 = time.perf_counter()
    with progress_bars() as bar:
        rows, checks = check_world(tw, _archs(arch), device=str(resolve_device(device)), progress=bar)
    failed = [c for c in checks if c.failed]
    if as_json:
        emit_json({"rows": [r.to_dict() for r in rows], "checks": [c.to_dict() for c in checks],
                   "ok": not failed, "world": tw.summary(_archs(arch)),
                   "seconds": round(time.perf_counter() - t0, 2)})
    else:
        console.print(tw.describe())
        console.print(rows_table(rows, "toy world check (held-out tasks, greedy)"))
        print_checks(checks)
    if strict and failed:
        raise CheckFailed(f"{len(failed)} expectation(s) of the toy world failed")
