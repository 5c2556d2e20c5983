"""Write the demo's printed output into the docs from one recorded run.

    python docs/gen_demo.py --record    run `bftcore demo --full --json` and keep it as docs/demo-run.json
    python docs/gen_demo.py             redraw docs/demo.md's transcript and README.md's summary table
    python docs/gen_demo.py --check     exit 1 when either is not what the recorded run draws, or
                                        when the run was recorded with other settings than the code's

The transcript is drawn by the demo command's own renderer (`bftcore.cli.demo.print_demo`) from the
recorded summary, so the docs show exactly what the code prints for that run; the summary table
picks rows of the same run. `--check` (in `make test`) also compares the settings the run recorded
(the stages' version numbers, the toy world's, completion's, the attacks' and scoring's settings)
with the code's: a run made before a change of behaviour is stale. Library versions are not
compared: a run records them, and a newer torch does not make the docs wrong.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "docs" / "demo-run.json"
TRANSCRIPT = (ROOT / "docs" / "demo.md", "demo-transcript")
SUMMARY = (ROOT / "README.md", "demo-summary")
WIDTH = 220

if any((ROOT / "python" / "bftcore").glob("_core*")):
    sys.path.insert(0, str(ROOT / "python"))


def current_settings() -> dict[str, Any]:
    """What the code would record now (`DemoResult.summary()["settings"]`)."""
    from bftcore import demo
    from bftcore.cache import VERSIONS, settings
    from bftcore.score import ScoreConfig
    from bftcore.toy import ToySettings

    return {"versions": dict(VERSIONS), "toy": settings(ToySettings()), "complete": settings(demo.DEMO_COMPLETE),
            "attack": json.loads(json.dumps(settings(demo.DEMO_ATTACK))), "score": settings(ScoreConfig())}


def transcript(run: dict[str, Any]) -> str:
    from rich.console import Console

    from bftcore.cli.demo import print_demo

    buf = io.StringIO()
    print_demo(run, Console(file=buf, width=WIDTH, color_system=None, soft_wrap=True, highlight=False))
    home = str(Path.home())
    return "```\n" + buf.getvalue().replace(home, "~").rstrip() + "\n```"


# (row label, model, attack, k, metric) of the README's table; columns are the models below
SUMMARY_ROWS = [("direct request", "direct", None, "asr"), ("prefill, k = 5", "prefill", 5, "asr"),
                ("prefill, k = 10", "prefill", 10, "asr"), ("prefill, k = 20", "prefill", 20, "asr"),
                ("prefill, k = 40", "prefill", 40, "asr"), ("adaptive prefill (rank-prefill), k = 40", "rank-prefill", 40, "asr"),
                ("unseen style, k = 10", "prefill:unseen", 10, "asr"),
                ("sampled after 10 tokens (x 8)", "prefill-sampled", 10, "asr"),
                ("RAP after 10 tokens", "rap", 10, "asr"), ("restart after 10 tokens", "restart", 10, "asr"),
                ("prefill of all but the last 16 tokens", "prefill-all-but-16", None, "asr"),
                ("fine-tuned on 10 harmful pairs (20 steps), direct", "ft-harmful-sft", None, "asr"),
                ("benign exact-match", "benign", None, "exact_match")]
SUMMARY_MODELS = ["aligned", "completed", "sft", "qi-augment", "derta", "presto", "contrastive", "any-depth",
                  "completed gguf-q8_0"]


def summary_table(run: dict[str, Any]) -> str:
    rows = {(r["model"], r["attack"], r["k"], r["metric"]): r for r in run["rows"]}
    models = [m for m in SUMMARY_MODELS if any(key[0] == m for key in rows)]
    lines = ["| held-out rows, x/n | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
    for label, attack, k, metric in SUMMARY_ROWS:
        cells = [rows.get((m, attack, k, metric)) for m in models]
        lines.append(f"| {label} | " + " | ".join(f"{c['x']}/{c['n']}" if c else "" for c in cells) + " |")
    counts = {s: sum(c["status"] == s for c in run["checks"]) for s in ("holds", "not shown", "fails")}
    base = rows[("base", "direct", None, "asr")]
    lines += ["", (f"Base model, direct request: {base['x']}/{base['n']}. Expectations: {counts['holds']} hold, "
                   f"{counts['not shown']} not shown, {counts['fails']} fail (toy world {run['world']['key']}, "
                   "Llama, seed 0).")]
    return "\n".join(lines)


def _replace(text: str, marker: str, body: str) -> str:
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    if not rest or end not in rest:
        raise SystemExit(f"markers {begin} ... {end} not found")
    return f"{head}{begin}\n{body}\n{end}{tail}"


def drawn(run: dict[str, Any]) -> dict[Path, str]:
    out = {}
    for (path, marker), body in ((TRANSCRIPT, transcript(run)), (SUMMARY, summary_table(run))):
        out[path] = _replace(path.read_text(encoding="utf-8"), marker, body)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--record", action="store_true", help="run the demo and keep its summary")
    mode.add_argument("--check", action="store_true", help="exit 1 when the docs or the recorded run are stale")
    ap.add_argument("--run", type=Path, default=RUN, help="the recorded run (default: docs/demo-run.json)")
    args = ap.parse_args(argv)
    if args.record:
        r = subprocess.run([sys.executable, "-m", "bftcore", "demo", "--full", "--json"], capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stderr[-3000:])
            return r.returncode
        args.run.write_text(json.dumps(json.loads(r.stdout), indent=1) + "\n", encoding="utf-8")
    run = json.loads(args.run.read_text(encoding="utf-8"))
    if args.check:
        stale = [k for k, v in current_settings().items() if run["settings"].get(k) != v]
        if stale:
            sys.stderr.write(f"docs/demo-run.json was recorded with other {', '.join(stale)} than the code's: "
                             "run `python docs/gen_demo.py --record`\n")
            return 1
        bad = [str(p.relative_to(ROOT)) for p, text in drawn(run).items() if p.read_text(encoding="utf-8") != text]
        if bad:
            sys.stderr.write(f"{', '.join(bad)} differ from the recorded run: run `python docs/gen_demo.py`\n")
            return 1
        return 0
    for path, text in drawn(run).items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
