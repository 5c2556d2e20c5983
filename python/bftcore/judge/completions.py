"""Completions to judge, from any file bftcore reads: JSON lines, a JSON list, HarmBench's
completions file ({behavior_id: [{test_case, generation}, ...]}), chat records, CSV, Parquet.

Every input record is kept, in input order, with all its own fields (nothing is deduplicated: a
verdict file has one line per input record). The answer is the `--response-column`, else the first
of `RESPONSE_COLUMNS` the file has (case aside), else a chat record's last assistant turn; the prompt
likewise; a `prefill` column (bftcore's attack samples) is the attacker's text, never judged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bftcore.corpus import BadRow, csv_rows, expand_paths, json_document, json_rows, parquet_rows
from bftcore.errors import BadInput
from bftcore.judge.base import Judged

RESPONSE_COLUMNS = ("response", "completion", "continuation", "generation", "output", "answer",
                    "model_output", "model_response", "model_completion", "reply", "target", "text")
PROMPT_COLUMNS = ("prompt", "question", "goal", "behavior", "instruction", "input", "query", "request",
                  "test_case", "forbidden_prompt", "user")
PREFILL_COLUMNS = ("prefill",)
# failing an exact name, a text column whose name holds one of these ("model_answer", "llm_output")
RESPONSE_PARTS = ("response", "completion", "continuation", "generation", "generated", "output", "answer", "reply")
PROMPT_PARTS = ("prompt", "question", "instruction", "query", "request", "behavior", "goal")


@dataclass
class Completions:
    rows: list[dict[str, Any]]  # each input record as it was read
    items: list[Judged]


def read_completions(paths: Iterable[str | Path], *, prompt_column: str | None = None,
                     response_column: str | None = None) -> Completions:
    out = Completions([], [])
    for path in expand_paths(paths):
        rows = _rows(path)
        if not rows:
            continue
        columns, first = _columns(rows)
        rcol = _pick(columns, response_column, RESPONSE_COLUMNS, path, "--response-column",
                     chat="messages" in columns, parts=RESPONSE_PARTS, first=first) or ""
        pcol = _pick(columns, prompt_column, PROMPT_COLUMNS, path, "--prompt-column", required=False,
                     parts=PROMPT_PARTS, first=first, taken=rcol)
        fcol = _pick(columns, None, PREFILL_COLUMNS, path, "", required=False)
        for line, row in rows:
            where = f"{path}:{line}"
            if isinstance(row, BadRow):
                raise BadInput(f"{where}: {row}")
            if not isinstance(row, dict):
                raise BadInput(f"{where}: a record must be an object with named fields")
            if rcol == "messages":
                prompt, response = _chat(row, where)
            else:
                if rcol not in row:
                    raise BadInput(f"{where}: no {rcol!r} field (fields: {sorted(row)})")
                prompt, response = _string(row.get(pcol) if pcol else None), _string(row.get(rcol))
            out.rows.append(row)
            out.items.append(Judged(prompt, _string(row.get(fcol)) if fcol else "", response))
    if not out.rows:
        raise BadInput(f"no records in {', '.join(str(p) for p in paths)}")
    return out


def _rows(path: Path) -> list[tuple[int, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return parquet_rows(path)
        if suffix == ".csv":
            return csv_rows(path)[1]
        if suffix in (".jsonl", ".ndjson", ".json"):
            doc, is_lines = json_document(path)
            if not is_lines and isinstance(doc, dict) and doc:
                if all(isinstance(v, list) for v in doc.values()):
                    return _harmbench_completions(doc)
                if all(isinstance(v, str) for v in doc.values()) and suffix == ".json":
                    # {id: text}, e.g. HarmBench's targets
                    return [(i + 1, {"id": k, "response": v}) for i, (k, v) in enumerate(doc.items())]
            return json_rows(path, doc, is_lines)
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror or e}") from e
    raise BadInput(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")


def _harmbench_completions(doc: dict[str, list[Any]]) -> list[tuple[int, Any]]:
    """HarmBench's completions file: each behavior's test cases and generations, flattened, with
    the behavior id as a field."""
    rows: list[tuple[int, Any]] = []
    for behavior, cases in doc.items():
        for case in cases:
            row = {"behavior_id": behavior, **case} if isinstance(case, dict) else case
            rows.append((len(rows) + 1, row))
    return rows


def _columns(rows: Sequence[tuple[int, Any]]) -> tuple[list[str], dict[str, Any]]:
    first = next((r for _, r in rows if isinstance(r, dict)), None)
    return (list(first), first) if first else ([], {})


def _pick(columns: list[str], given: str | None, candidates: Sequence[str], path: Path, option: str, *,
          required: bool = True, chat: bool = False, parts: Sequence[str] = (), first: dict[str, Any] | None = None,
          taken: str | None = None) -> str | None:
    """The column named by the option, else the first known name the file has (case aside), else
    the first text column whose name holds one of `parts`."""
    if given is not None:
        if given not in columns:
            raise BadInput(f"{path}: no column {given!r} (columns: {columns})")
        return given
    lower = {c.lower(): c for c in columns if c != taken}
    found = next((lower[c] for c in candidates if c in lower), None)
    if found is None and parts:
        found = next((c for part in parts for low, c in lower.items()
                      if part in low and isinstance((first or {}).get(c), str)), None)
    if found is None and chat:
        return "messages"
    if found is None and required:
        raise BadInput(f"{path}: cannot tell which column holds the answers (columns: {columns}); "
                       f"name it with {option}")
    return found


def _chat(row: dict[str, Any], where: str) -> tuple[str, str]:
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise BadInput(f"{where}: 'messages' must be a non-empty list of turns")
    answers = [m for m in msgs if m.get("role") == "assistant"]
    if not answers:
        raise BadInput(f"{where}: no assistant turn to judge")
    users = [m for m in msgs[:msgs.index(answers[-1])] if m.get("role") == "user"]
    return _string(users[-1].get("content") if users else None), _string(answers[-1].get("content"))


def _string(value: Any) -> str:
    """A field as text: a missing or null (NaN) value is the empty text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)
