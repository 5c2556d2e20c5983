"""Write docs/cli.md from the `bftcore` command tree's own `--help` texts.

    python docs/gen_cli.py            rewrite docs/cli.md
    python docs/gen_cli.py --check    exit 1 (with a diff) when docs/cli.md is not what this writes

Every command and subcommand, depth first in click's order (the root, then each command by name),
gets one section with its help text in a fenced block. The width is fixed (terminal_width and
max_content_width 100), so the output does not depend on the terminal or $COLUMNS.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "cli.md"
WIDTH = 100

# Document the checkout's own package when its native core is built there (an editable install or
# `maturin develop`), not whichever bftcore happens to be installed.
if any((ROOT / "python" / "bftcore").glob("_core*")):
    sys.path.insert(0, str(ROOT / "python"))

import click  # noqa: E402

from bftcore.cli import cli  # noqa: E402


def walk(cmd: click.Command, name: str, parent: click.Context | None = None) -> Iterator[tuple[str, str, int]]:
    """(command path, help text, depth) for `cmd` and everything under it."""
    ctx = cmd.make_context(name, [], parent=parent, resilient_parsing=True,
                           terminal_width=WIDTH, max_content_width=WIDTH)
    with ctx:
        yield ctx.command_path, cmd.get_help(ctx), 0 if parent is None else len(ctx.command_path.split()) - 1
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                child = cmd.get_command(ctx, sub)
                if child is not None and not child.hidden:
                    yield from walk(child, sub, ctx)


def render() -> str:
    sections = list(walk(cli, "bftcore"))
    lines = ["# CLI reference", "",
             ("Generated from each command's `--help` by [gen_cli.py](gen_cli.py); do not edit by hand. "
              "After changing a command, run `python docs/gen_cli.py` (`make test` fails while this page "
              "is stale)."), ""]
    for path, _, depth in sections:
        indent = "  " * max(depth - 1, 0)
        anchor = path.replace(" ", "-")
        lines.append(f"{indent}- [`{path}`](#{anchor})")
    lines.append("")
    for path, text, depth in sections:
        lines += [f"{'#' * min(2 + max(depth - 1, 0), 4)} `{path}`", "", "```text",
                  *(line.rstrip() for line in text.rstrip("\n").splitlines()), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/cli.md is stale; write nothing")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.is_file() else ""
        if current == text:
            return 0
        diff = difflib.unified_diff(current.splitlines(), text.splitlines(), "docs/cli.md (current)",
                                    "docs/cli.md (from --help)", lineterm="", n=1)
        sys.stdout.write("\n".join(list(diff)[:80]) + "\n")
        sys.stderr.write("docs/cli.md is stale: run `python docs/gen_cli.py`\n")
        return 1
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
