"""The docs stay true to the code: docs/cli.md is what `--help` says, every relative link resolves,
and every `bftcore ...` command line in a fenced block of docs/*.md or README.md names a real
command with options it has. Fast: no model is loaded, nothing runs but `--help` texts."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from bftcore.cli import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


# ---- markdown helpers ---------------------------------------------------------------------
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
# fenced blocks whose lines are not shell commands
NOT_SHELL = {"python", "py", "json", "toml", "yaml", "text", "jinja", "html", "jsonl", "csv", "diff"}


@dataclass(frozen=True)
class Line:
    path: Path
    number: int  # 1-based line of the (first physical line of the) logical line
    text: str
    lang: str  # the fence's info string ("" if none)


def fenced_lines(path: Path) -> list[Line]:
    """Logical lines inside fenced code blocks (a trailing backslash joins the next line)."""
    out: list[Line] = []
    fence: str | None = None
    lang = ""
    pending: tuple[int, str] | None = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(raw)
        if fence is None:
            if m:
                fence, lang = m.group(1), m.group(2).lower()
            continue
        if m and m.group(1).startswith(fence) and not m.group(2):
            fence = None
            continue
        start, text = pending if pending else (n, "")
        text += raw
        if text.endswith("\\"):
            pending = (start, text[:-1] + " ")
            continue
        pending = None
        out.append(Line(path, start, text, lang))
    return out


def prose(path: Path, *, keep_code: bool = False) -> str:
    """The file without fenced blocks and, unless `keep_code`, inline code (links there are not
    links; headings keep theirs for the anchor)."""
    kept, fence = [], None
    for raw in path.read_text(encoding="utf-8").splitlines():
        m = FENCE.match(raw)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1).startswith(fence) and not m.group(2):
                fence = None
            continue
        kept.append(raw if keep_code else re.sub(r"`[^`]*`", "", raw))
    return "\n".join(kept)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path, keep_code=True).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(1))
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|!\[[^\]]*\]\(\s*([^)\s]+)")


def link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """Every relative link of a markdown file (outside code) that does not resolve: the file, its
    heading anchor, and that it stays inside the repository."""
    problems = []
    for m in LINK.finditer(prose(path)):
        target = m.group(1) or m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}: link ({target})"
        if root not in dest.parents and dest != root:
            problems.append(f"{where} leaves the repository")
        elif not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading #{anchor} in {dest.relative_to(root)}")
    return problems


# ---- command lines ------------------------------------------------------------------------
PREFIX_WORDS = {"time", "nohup", "env", "exec", "sudo", "command"}
SEPARATORS = {"|", "||", "&&", ";", "&"}


def invocations(text: str) -> list[list[str]]:
    """The argument lists of every `bftcore` invocation in one shell line: `bftcore ...`,
    `python -m bftcore ...`, `torchrun ... -m bftcore ...`, `X=$(bftcore ...)`."""
    text = re.sub(r"^\s*\$\s+", "", text)  # a console prompt
    try:
        tokens = shlex.split(text, posix=True)
    except ValueError:
        tokens = text.split()
    cut = next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))
    tokens = tokens[:cut]
    segments: list[list[str]] = [[]]
    for t in tokens:
        if t in SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(t)
    out = []
    for seg in segments:
        for i, t in enumerate(seg):
            if " " in t and "bftcore" in t:  # a quoted command: `sh -c '... python -m bftcore ...'`
                out += invocations(t)
                break
            before = seg[:i]
            if re.fullmatch(r"(?:\w+=)?[$`]?\(?bftcore", t) and all(
                    re.fullmatch(r"\w+=\S*", b) or b in PREFIX_WORDS for b in before):
                out.append(seg[i + 1:])
                break
            if t == "bftcore" and i > 0 and seg[i - 1] == "-m":
                out.append(seg[i + 1:])
                break
    return out


def placeholder(token: str) -> bool:
    return token in ("...", "…") or bool(re.fullmatch(r"<[^>]+>|[A-Z][A-Z_]*|\.\.\.\w*", token))


def option_names(cmd: click.Command) -> set[str]:
    names = {"-h", "--help"}
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def takes_value(cmd: click.Command, name: str) -> bool:
    for p in cmd.params:
        if isinstance(p, click.Option) and name in (*p.opts, *p.secondary_opts):
            return not p.is_flag and not p.count
    return False


def command_problems(args: list[str], where: str) -> list[str]:
    """Why `bftcore ARGS` would not parse: an unknown command, or an option the command lacks."""
    cmd: click.Command = cli
    path = "bftcore"
    ctx = click.Context(cli, info_name="bftcore")
    i = 0
    problems = []
    while isinstance(cmd, click.Group):  # group-level options, then the subcommand
        if i >= len(args):
            return problems
        tok = args[i].strip("[]()")
        if tok.startswith("-"):
            name = tok.split("=", 1)[0]
            if name not in option_names(cmd):
                problems.append(f"{where}: `{path}` has no option {name}")
            i += 2 if takes_value(cmd, name) and "=" not in tok else 1
            continue
        if placeholder(tok) or tok.endswith(":"):  # `bftcore COMMAND`, or program output
            return problems
        sub = cmd.get_command(ctx, tok)
        if sub is None:
            return [*problems, f"{where}: `{path}` has no command {tok!r}"]
        ctx = click.Context(sub, info_name=tok, parent=ctx)
        cmd, path, i = sub, f"{path} {tok}", i + 1
    known = option_names(cmd)
    for raw in args[i:]:
        if raw == "--":
            break
        tok = raw.lstrip("[(").rstrip("])")
        if not re.match(r"^--?[A-Za-z]", tok):
            continue
        name = tok.split("=", 1)[0]
        if name not in known:
            problems.append(f"{where}: `{path}` has no option {name}")
    return problems


def checked_lines() -> list[tuple[Line, list[str]]]:
    return [(line, args) for f in doc_files() for line in fenced_lines(f) if line.lang not in NOT_SHELL
            for args in invocations(line.text)]


# ---- the tests ----------------------------------------------------------------------------
def test_cli_reference_is_current() -> None:
    r = subprocess.run([sys.executable, str(DOCS / "gen_cli.py"), "--check"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, f"{r.stderr}{r.stdout[-3000:]}"


def test_demo_output_in_the_docs_is_drawn_from_a_current_recorded_run(tmp_path: Path) -> None:
    """docs/demo.md's transcript and README.md's summary are what the demo's renderer draws from
    docs/demo-run.json, and that run was recorded with the settings the code has now."""
    r = subprocess.run([sys.executable, str(DOCS / "gen_demo.py"), "--check"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout[-2000:]
    # and the check can fail: a run recorded under another version number is stale
    run = json.loads((DOCS / "demo-run.json").read_text())
    run["settings"]["versions"]["completion"] += 1
    stale = tmp_path / "run.json"
    stale.write_text(json.dumps(run))
    r = subprocess.run([sys.executable, str(DOCS / "gen_demo.py"), "--check", "--run", str(stale)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1 and "versions" in r.stderr, r.stderr


def test_docs_pages_exist_and_are_listed() -> None:
    pages = {p.name for p in DOCS.glob("*.md")}
    assert {"quickstart.md", "real-models.md", "multi-gpu.md", "method.md", "cli.md", "index.md"} <= pages
    index, readme = (DOCS / "index.md").read_text(), (ROOT / "README.md").read_text()
    for page in sorted(pages - {"index.md"}):
        assert f"({page})" in index, f"docs/index.md does not link {page}"
        assert f"(docs/{page})" in readme, f"README.md does not link docs/{page}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert link_problems(path) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_command_lines_name_real_commands_and_options(path: Path) -> None:
    problems = []
    for line in fenced_lines(path):
        if line.lang in NOT_SHELL:
            continue
        for args in invocations(line.text):
            problems += command_problems(args, f"{path.relative_to(ROOT)}:{line.number}")
    assert problems == []


def test_enough_command_lines_are_checked() -> None:
    """The checker sees the pages' commands (a parser that finds none would pass everything)."""
    seen = checked_lines()
    commands = {tuple(a[:1]) for _, a in seen}
    assert len(seen) >= 60, len(seen)
    assert {("index",), ("inspect",), ("complete",), ("attack",), ("export",), ("demo",), ("toy",)} <= commands


def test_the_checkers_catch_what_they_should(tmp_path: Path) -> None:
    """Known-bad lines and links are reported; known-good ones are not."""
    bad = [
        "bftcore attak model/ --data x.jsonl",
        "bftcore attack model/ --data x.jsonl --no-such-option 3",
        "torchrun --nproc-per-node 2 -m bftcore index c/ --base B --aligned A --out c.bfti --bogus",
        "python -m bftcore --allow-pickles demo",
        "bftcore toy biuld",
        "X=$(bftcore toy build --jsn | python -c 'print(1)')",
        "torchrun --nproc-per-node 8 --no-python sh -c 'CUDA_VISIBLE_DEVICES=$LOCAL_RANK exec python -m bftcore index --nope'",
    ]
    for text in bad:
        (args,) = invocations(text)
        assert command_problems(args, "t"), text
    good = [
        "bftcore toy build [--arch llama|qwen2] [--seed N] [--out DIR] [--json]",
        "bftcore --allow-pickle attack m/ --data d.jsonl --k=5,10   # a comment --not-an-option",
        "TOY=$(bftcore toy build --json | python -c 'import json,sys; print(1)')",
        "python -m bftcore complete ... --lora [--merge]",
        "bftcore COMMAND --help",
        "bftcore demo: attacks on held-out tasks (exact judge)",  # program output
    ]
    for text in good:
        for args in invocations(text):
            assert command_problems(args, "t") == [], text
    assert invocations("pip install bftcore") == []
    md = tmp_path / "docs" / "x.md"
    md.parent.mkdir()
    md.write_text("# A title\n\n[ok](#a-title) [gone](missing.md) [anchor](#nowhere)\n"
                  "`[code](not-a-link.md)`\n\n```\n[also](code.md)\nbftcore index a \\\n  --bogus\n```\n")
    problems = link_problems(md, tmp_path)
    assert len(problems) == 2 and "missing.md" in problems[0] and "#nowhere" in problems[1], problems
    (line,) = [x for x in fenced_lines(md) if "bftcore" in x.text]
    assert line.number == 8 and command_problems(invocations(line.text)[0], "t")
