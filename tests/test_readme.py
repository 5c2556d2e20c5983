"""The README stays short, and nothing in the repository points outside it.

tests/test_docs.py checks the inline links and heading anchors of README.md and docs/*.md. This
file adds what it does not check: the README's length; the links of every other Markdown file
(export/README.md, benches/RESULTS.md, ...); reference-style link definitions and HTML `href`/`src`
targets in every Markdown file; and that no file of the repository mentions the project's
specifications, which live outside it (their content is in docs/). Fast: reads files, runs `git
ls-files` once, imports nothing of bftcore.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150
# the workspace's specification files and their directory: their content now lives in docs/
SPEC = re.compile(r"shared/spec|\b(?:METHOD|TOYWORLD|DESIGN|EXPORT_NOTES)\.md\b")
ALLOWED_SPEC_MENTIONS = {"tests/test_readme.py"}

FENCE = re.compile(r"^\s*(```+|~~~+)")
INLINE_LINK = re.compile(r"(?<!\\)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[(?!\^)[^\]]+\]:\s*<?(\S+?)>?(?:\s+[\"'(].*)?$", re.M)
HTML_TARGET = re.compile(r"""<(?:a|img|source|link)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


# ---- helpers (each takes the root, so the self-test can run them on a made-up repository) -------
def repo_files(root: Path = ROOT) -> list[Path]:
    """Tracked files and untracked files git does not ignore, that exist in the working tree."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError):
        # not a git checkout (an unpacked sdist, a copy): every file but what .gitignore leaves out
        return sorted(p for p in root.rglob("*") if p.is_file() and not _ignored(p.relative_to(root)))
    names = sorted({n for n in out.decode("utf-8", "surrogateescape").split("\0") if n})
    return [root / n for n in names if (root / n).is_file()]  # a deleted tracked file is listed too


IGNORED_DIRS = {".git", "target", "dist", "build", "__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache",
                ".ruff_cache"}


def _ignored(rel: Path) -> bool:
    """What this repository's .gitignore leaves out, for a tree without git."""
    return bool(IGNORED_DIRS & set(rel.parts[:-1])) or rel.suffix in (".so", ".pyd") or any(
        part.endswith(".egg-info") for part in rel.parts)


def text_of(path: Path) -> str | None:
    """A file's text, or None for a binary file (a NUL byte in it)."""
    data = path.read_bytes()
    return None if b"\0" in data else data.decode("utf-8", "replace")


def without_code(text: str) -> str:
    """Markdown without fenced blocks and inline code: links there are not links."""
    kept, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1).startswith(fence) and not line.strip()[len(m.group(1)):].strip():
                fence = None
            continue
        kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def link_targets(text: str, *, inline: bool = True) -> list[str]:
    """Relative link targets of a Markdown text: inline links (unless `inline` is False: test_docs
    checks those in README.md and docs/), reference definitions and HTML href/src."""
    prose = without_code(text)
    found = [*REFERENCE_DEF.findall(prose), *HTML_TARGET.findall(prose)]
    if inline:
        found += INLINE_LINK.findall(prose)
    return [t for t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I) and not t.startswith("#")]


def link_problems(path: Path, root: Path = ROOT, *, inline: bool = True) -> list[str]:
    """Each relative link of `path` that leaves the repository or names no file there."""
    problems = []
    for target in link_targets(path.read_text(encoding="utf-8"), inline=inline):
        file_part = target.partition("#")[0].partition("?")[0]
        dest = (path.parent / file_part).resolve()
        where = f"{path.relative_to(root)}: link ({target})"
        if dest != root.resolve() and root.resolve() not in dest.parents:
            problems.append(f"{where} leaves the repository")
        elif not dest.exists():
            problems.append(f"{where}: no such file")
    return problems


def covered_by_test_docs(path: Path, root: Path = ROOT) -> bool:
    rel = path.relative_to(root)
    return rel == Path("README.md") or (rel.parent == Path("docs") and rel.suffix == ".md")


def spec_mentions(files: list[Path], root: Path = ROOT) -> list[str]:
    """`file:line: text` for every mention of the specifications outside the allowed files."""
    hits = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        if rel in ALLOWED_SPEC_MENTIONS:
            continue
        text = text_of(f)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if SPEC.search(line):
                hits.append(f"{rel}:{n}: {line.strip()[:120]}")
    return hits


# ---- the tests ----------------------------------------------------------------------------------
def readme_problem(path: Path) -> str | None:
    n = len(path.read_text(encoding="utf-8").splitlines())
    return None if n <= README_MAX_LINES else f"{path.name} has {n} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_has_at_most_150_lines() -> None:
    assert readme_problem(ROOT / "README.md") is None


def test_every_markdown_link_resolves_inside_the_repository() -> None:
    markdown = [f for f in repo_files() if f.suffix.lower() in (".md", ".markdown")]
    assert any(f.name == "RESULTS.md" for f in markdown), "the Markdown files were not found"
    problems = []
    for f in markdown:
        problems += link_problems(f, inline=not covered_by_test_docs(f))
    assert problems == []


def test_no_file_mentions_the_specifications_outside_the_repository() -> None:
    """The specifications (METHOD.md, TOYWORLD.md, DESIGN.md, EXPORT_NOTES.md in ../shared/spec)
    are not part of the repository: cite the docs page that holds their content instead."""
    hits = spec_mentions(repo_files())
    assert hits == [], "cite docs/ instead:\n  " + "\n  ".join(hits)


def test_the_checks_catch_what_they_should(tmp_path: Path) -> None:
    """Each check fails on a made-up repository that breaks it, and passes on one that does not."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "export").mkdir()
    (root / "docs" / "page.md").write_text("# Page\n")
    good = root / "export" / "README.md"
    good.write_text("[ok](../docs/page.md#page) [web](https://example.org) [self](#x)\n"
                    "`[code](../../x.md)`\n\n```\n[fenced](../../y.md)\n```\n")
    assert link_problems(good, root) == []
    bad = root / "export" / "bad.md"
    bad.write_text("[spec](../../shared/spec/TOYWORLD.md) [gone](missing.md)\n"
                   "[ref]: ../../outside.md\n<a href=\"../nowhere.md\">x</a>\n")
    problems = link_problems(bad, root)
    assert len(problems) == 4, problems
    assert sum("leaves the repository" in p for p in problems) == 2, problems
    assert sum("no such file" in p for p in problems) == 2, problems
    # README.md and docs/*.md: inline links are test_docs's; the other kinds are checked here
    readme = root / "README.md"
    readme.write_text("[spec](../shared/spec/METHOD.md)\n[ref]: ../shared/spec/DESIGN.md\n")
    assert covered_by_test_docs(readme, root)
    assert link_problems(readme, root, inline=False) == [
        "README.md: link (../shared/spec/DESIGN.md) leaves the repository"]
    mentions = root / "python.py"
    mentions.write_text('"""See TOYWORLD.md rows 1-3."""\nx = "../shared/spec"\nMETHODS = 1  # METHOD.mdx? no\n')
    assert [h.split(":")[1] for h in spec_mentions([mentions], root)] == ["1", "2"]
    (root / "blob.bin").write_bytes(b"\0METHOD.md")
    assert spec_mentions([root / "blob.bin"], root) == []
    long = root / "LONG.md"
    long.write_text("x\n" * README_MAX_LINES)
    assert readme_problem(long) is None
    long.write_text("x\n" * (README_MAX_LINES + 1))
    assert readme_problem(long) is not None


def test_a_tree_without_git_is_walked_with_the_ignores(tmp_path: Path) -> None:
    for name in ("README.md", "docs/a.md", "target/debug/x.md", "python/m.egg-info/PKG-INFO", "core.so"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in repo_files(tmp_path)] == ["README.md", "docs/a.md"]
