"""CLI conventions: exit codes, one-line reasons, help with examples, version."""

from __future__ import annotations

from pathlib import Path

import pytest

from bftcore import __version__
from conftest import run_cli

COMMANDS = [[], ["toy"], ["toy", "build"], ["toy", "check"], ["demo"], ["complete"], ["attack"], ["index"], ["export"]]


@pytest.mark.parametrize(
    "args",
    [["toy", "check", "--arch", "gpt5"], ["toy", "build", "--seed", "-3"], ["demo", "--bogus"],
     ["nonsense"], ["toy", "check", "--device", "tpu"], ["toy", "build", "--device", "cuda:99"]],
)
def test_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bftcore: error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_check_of_a_missing_world_dir_is_bad_input(tmp_path: Path) -> None:
    r = run_cli("toy", "check", "--arch", "llama", "--dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no toy world" in r.stderr and len(r.stderr.splitlines()) == 1


def test_out_that_is_a_file_is_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = run_cli("toy", "build", "--out", str(f))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", COMMANDS)
def test_every_command_has_help_with_an_example(args: list[str]) -> None:
    r = run_cli(*args, "--help")
    assert r.returncode == 0
    assert "Example" in r.stdout


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and __version__ in r.stdout
