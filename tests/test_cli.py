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
     ["demo", "--method", "rlhf"], ["nonsense"], ["toy", "check", "--device", "tpu"], ["toy", "build", "--device", "cuda:99"]],
)
def test_bad_input_exits_2_with_one_line(args: list[str]) -> None:
    r = run_cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bftcore: error: "), r.stderr
    assert "Traceback" not in r.stderr


def test_demo_method_choices_are_the_demos_methods() -> None:
    from bftcore.cli.demo import METHOD_CHOICES
    from bftcore.demo import METHODS

    assert METHOD_CHOICES == METHODS


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


def test_plain_progress_lines_are_rate_limited_per_task() -> None:
    """Off a terminal: a line when a task starts, at most one per interval while it runs, one when
    it completes; the time is counted from the first report."""
    from bftcore.progress import plain_lines

    now = [100.0]
    out: list[str] = []
    report = plain_lines(out.append, 10.0, clock=lambda: now[0])
    for t, desc, done, total in [(0, "training", 0, 400), (1, "training", 10, 400), (5, "scoring", 1, 3),
                                 (12, "training", 120, 400), (13, "training", 130, 400),
                                 (14, "scoring", 3, 3), (14, "scoring", 3, 3), (3725, "training", 400, 400)]:
        now[0] = 100.0 + t
        report(desc, done, total)
    assert out == ["[00:00:00] training 0/400", "[00:00:05] scoring 1/3", "[00:00:12] training 120/400",
                   "[00:00:14] scoring 3/3", "[01:02:05] training 400/400"]


def test_a_failed_expectation_is_reported_and_exits_3_only_under_strict(toy, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Exit codes tell a broken pipeline (1), bad input (2) and a failed expectation (3, only with
    --strict) apart: the measurement is replaced here by one whose verdict fails."""
    import json

    import bftcore.toy
    from bftcore.cli import main
    from bftcore.stats import Check, RateRow

    row = RateRow("base", "llama", "direct", None, "asr", 20, 180)
    failed = Check("llama: base direct ASR >= 90%", "fails", row.interval())
    monkeypatch.setattr(bftcore.toy, "check_world", lambda tw, archs, **kw: ([row], [failed]))
    for extra, code in (([], 0), (["--strict"], 3)):
        with pytest.raises(SystemExit) as exit_:
            main(["toy", "check", "--arch", "llama", "--json", *extra])
        assert exit_.value.code == code
        out = json.loads(capsys.readouterr().out)
        assert out["ok"] is False and out["checks"][0]["status"] == "fails"
    with pytest.raises(SystemExit) as exit_:
        main(["toy", "check", "--arch", "llama", "--strict"])
    captured = capsys.readouterr()
    assert exit_.value.code == 3 and "FAILS" in captured.out and "1 expectation(s)" in captured.err
