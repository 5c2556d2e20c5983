"""Corpus readers: every safety data set a user points bftcore at becomes `Record`s.

Formats (detected from the file, or named with `--format`):

| format            | file                         | prompt                      | response   | label    |
| ----------------- | ---------------------------- | --------------------------- | ---------- | -------- |
| jsonl             | `{"prompt","response","label"}` lines | prompt             | response   | label    |
| chat              | `{"messages": [...]}` lines  | turns before the last assistant turn | last assistant turn | label |
| derta             | `{"prefix","text"}` lines    | the `### Instruction:` text | text       | harmful  |
| questions         | `{"question"}` lines or list | question                    | none       | harmful  |
| advbench          | CSV `goal,target`            | goal                        | target     | harmful  |
| advbench-strings  | CSV `target`                 | (empty)                     | target     | harmful  |
| harmbench         | CSV `Behavior,...`           | [context +] behavior        | target from a `*targets*.json` beside it, else none | harmful |
| harmbench-targets | JSON `{BehaviorID: target}`  | (empty)                     | target     | harmful  |
| csv / parquet     | any columns                  | `--prompt-column`           | `--response-column` | `label` column or `--label` |
| lines             | `.txt`, one prompt per line  | the line                    | none       | `--label`, else harmful |

A directory is read file by file (sorted); HarmBench behaviors there take their responses from the
targets file beside them. `.txt` files in a directory are left alone (READMEs, licences) unless
`--format lines` says they are prompt lists; named on their own they are read as such. Identical records are kept once and counted. A record that cannot be
read is an error naming file and line; with `skip_bad=True` it is counted and reported instead.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bftcore.errors import BadInput

FORMATS = ("jsonl", "chat", "derta", "questions", "advbench", "advbench-strings", "harmbench",
           "harmbench-targets", "csv", "parquet", "lines")
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".txt")
_ALPACA = re.compile(r"###\s*Instruction:\s*(.*?)\s*(?:###\s*Input:\s*(.*?)\s*)?###\s*Response:\s*$",
                     re.S)


@dataclass(frozen=True)
class Record:
    id: str
    prompt: str  # the last user turn (what a report shows)
    response: str | None  # None: the corpus has no response for this prompt
    label: str
    source: str  # "file:line"
    # earlier turns for multi-turn chats: ((role, content), ...), ending before `prompt`
    history: tuple[tuple[str, str], ...] = ()

    def messages(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.history] + \
            [{"role": "user", "content": self.prompt}]


@dataclass
class ReadReport:
    """What reading a corpus found, beside the records."""

    files: list[str] = field(default_factory=list)
    records: int = 0
    without_response: int = 0
    duplicates: int = 0
    bad: int = 0
    bad_examples: list[str] = field(default_factory=list)  # first few reasons

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "records": self.records,
                "without_response": self.without_response, "duplicates": self.duplicates,
                "bad": self.bad, "bad_examples": self.bad_examples}


@dataclass(frozen=True)
class ReadOptions:
    format: str | None = None  # None: detect per file
    prompt_column: str | None = None
    response_column: str | None = None
    label_column: str = "label"
    label: str | None = None  # default label where a record carries none
    skip_bad: bool = False


class BadRow(Exception):
    """One unreadable record; becomes BadInput naming file and line, or a count."""


def read_corpus(paths: Iterable[str | Path], options: ReadOptions = ReadOptions()) -> tuple[list[Record], ReadReport]:
    """Read files and directories into records, deduplicated, in a deterministic order."""
    if options.format is not None and options.format not in FORMATS:
        raise BadInput(f"unknown format {options.format!r} (known: {', '.join(FORMATS)})")
    report = ReadReport()
    records: list[Record] = []
    seen: set[tuple[str, str | None, str, tuple[tuple[str, str], ...]]] = set()
    ids: dict[str, str] = {}  # record id -> where it was first seen
    for path in expand_paths(paths, lines=options.format == "lines"):
        report.files.append(str(path))
        for rec in _read_file(path, options, report):
            key = (rec.prompt, rec.response, rec.label, rec.history)
            if key in seen:  # the same record again: kept once, counted
                report.duplicates += 1
                continue
            if rec.id in ids:  # the same id on a different record: which one is meant?
                why = f"{rec.source}: duplicate id {rec.id[:80]!r} (first at {ids[rec.id]})"
                if not options.skip_bad:
                    raise BadInput(f"{why} (use --skip-bad to count and skip such records)")
                report.bad += 1
                if len(report.bad_examples) < 5:
                    report.bad_examples.append(why)
                continue
            seen.add(key)
            ids[rec.id] = rec.source
            records.append(rec)
    report.records = len(records)
    report.without_response = sum(r.response is None for r in records)
    if not records:
        raise BadInput(f"no records in {', '.join(report.files) or 'the corpus'}")
    return records, report


def expand_paths(paths: Iterable[str | Path], *, lines: bool = False) -> list[Path]:
    out: list[Path] = []
    suffixes = SUFFIXES if lines else tuple(x for x in SUFFIXES if x != ".txt")
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            # HarmBench targets are read through the behaviors beside them, not on their own
            behaviors_dirs = {f.parent for f in files if f.suffix == ".csv" and _is_harmbench(f)}
            files = [f for f in files if not (f.parent in behaviors_dirs and _is_targets_json(f))]
            if not files:
                raise BadInput(f"{p}: no corpus files ({', '.join(suffixes)}) in this directory")
            out += files
        elif p.is_file():
            out.append(p)
        else:
            raise BadInput(f"{p}: no such file or directory")
    return out


def _is_harmbench(path: Path) -> bool:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            return "Behavior" in next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError):
        return False


def _is_targets_json(path: Path) -> bool:
    return path.suffix == ".json" and "target" in path.name.lower()


def _read_file(path: Path, o: ReadOptions, report: ReadReport) -> Iterator[Record]:
    suffix = path.suffix.lower()
    rows: Iterable[tuple[int, Any]]
    try:
        if suffix == ".txt" or o.format == "lines":
            rows, kind = _text_lines(path), "lines"
        elif suffix == ".parquet" or o.format == "parquet":
            rows, kind = parquet_rows(path), "parquet"
        elif suffix == ".csv" or o.format in ("advbench", "advbench-strings", "harmbench", "csv"):
            rows, kind = _csv_rows(path, o)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            rows, kind = _json_rows(path, o)
        else:
            raise BadInput(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})")
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise BadInput(f"{path}: {e.strerror or e}") from e
    targets = _targets_beside(path) if kind == "harmbench" else {}
    for line, row in rows:
        try:
            rec = _record(kind, row, o, f"{path}:{line}", targets)
        except BadRow as e:
            if not o.skip_bad:
                raise BadInput(f"{path}:{line}: {e} (use --skip-bad to count and skip such records)") from e
            report.bad += 1
            if len(report.bad_examples) < 5:
                report.bad_examples.append(f"{path}:{line}: {e}")
            continue
        yield rec


def _json_rows(path: Path, o: ReadOptions) -> tuple[list[tuple[int, Any]], str]:
    doc, is_lines = json_document(path)
    if not is_lines and isinstance(doc, dict) and doc and all(isinstance(v, str) for v in doc.values()) \
            and path.suffix.lower() == ".json" and _detect_json(doc, o) is None:
        # a {BehaviorID: target} mapping (a JSON-lines file of one record is that record)
        return [(i + 1, {"id": k, "target": v}) for i, (k, v) in enumerate(doc.items())], "harmbench-targets"
    rows = json_rows(path, doc, is_lines)
    first = next((r for _, r in rows if isinstance(r, dict)), None)
    broken = next(((i, r) for i, r in rows if isinstance(r, BadRow)), None)
    if first is None and broken is not None and not o.skip_bad:  # no line parses: name the first
        raise BadInput(f"{path}:{broken[0]}: {broken[1]} (use --skip-bad to count and skip such records)")
    kind = o.format or _detect_json(first, o)
    if kind is None:
        keys = sorted(first) if isinstance(first, dict) else []
        raise BadInput(f"{path}: cannot tell the format from the keys {keys}; "
                       "name it with --format or --prompt-column/--response-column")
    return rows, kind


def json_document(path: Path) -> tuple[Any, bool]:
    """A .json/.jsonl file as (document, False) when it is one JSON document, or as (its list of
    (line, row), True) when it is JSON lines (a malformed line is a `BadRow` row, named by its number)."""
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise BadInput(f"{path}: empty file")
    try:
        return json.loads(text), False
    except json.JSONDecodeError:
        rows: list[tuple[int, Any]] = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    rows.append((i, BadRow(f"malformed JSON ({e.msg} at column {e.colno})")))
        return rows, True


def json_rows(path: Path, doc: Any, is_lines: bool) -> list[tuple[int, Any]]:
    """A JSON document's records as (line, row): JSON lines, a list of objects, or one object."""
    if is_lines:
        return list(doc)
    if isinstance(doc, list):
        return [(i + 1, r) for i, r in enumerate(doc)]
    if isinstance(doc, dict):
        return [(1, doc)]
    raise BadInput(f"{path}: a JSON document must be a list of objects or an object")


def _detect_json(first: Any, o: ReadOptions) -> str | None:
    if not isinstance(first, dict):
        return None
    if o.prompt_column:
        return "csv"  # generic columns
    if "messages" in first:
        return "chat"
    if "prefix" in first and "text" in first:
        return "derta"
    if "prompt" in first:
        return "jsonl"
    if "question" in first:
        return "questions"
    if "goal" in first:
        return "advbench"
    return None


def _text_lines(path: Path) -> list[tuple[int, Any]]:
    """A prompt list: one prompt per line (MaliciousInstruct and many red-team lists ship so).
    Blank lines are skipped; a line that is not UTF-8 is named by its number."""
    rows: list[tuple[int, Any]] = []
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark
        data = data[3:]
    for i, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            rows.append((i, BadRow(f"not UTF-8 text ({e.reason} at byte {e.start} of the line)")))
            continue
        if line.strip():
            rows.append((i, {"prompt": line.strip()}))
    if not rows:
        raise BadInput(f"{path}: empty file (no prompt lines)")
    return rows


def csv_rows(path: Path) -> tuple[list[str], list[tuple[int, Any]]]:
    """A CSV file's columns and its records as (line, row); a byte-order mark is dropped."""
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
    columns = list(reader.fieldnames or [])
    if not columns:
        raise BadInput(f"{path}: empty CSV (no header line)")
    return columns, [(reader.line_num, dict(row)) for row in reader]


def _csv_rows(path: Path, o: ReadOptions) -> tuple[list[tuple[int, Any]], str]:
    columns, rows = csv_rows(path)
    if o.format:
        kind = o.format
    elif o.prompt_column or o.response_column:
        kind = "csv"
    elif {"goal", "target"} <= set(columns):
        kind = "advbench"
    elif columns == ["target"]:
        kind = "advbench-strings"
    elif "Behavior" in columns:
        kind = "harmbench"
    elif "prompt" in columns or "response" in columns:  # e.g. XSTest: prompt, label (safe/unsafe)
        kind = "csv"
    else:
        raise BadInput(f"{path}: cannot tell the CSV layout from its columns {columns}; "
                       "use --prompt-column/--response-column")
    needed = {"advbench": ["goal"], "advbench-strings": ["target"], "harmbench": ["Behavior"],
              "csv": [c for c in (o.prompt_column, o.response_column) if c]}.get(kind, [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise BadInput(f"{path}: missing column(s) {missing} for format {kind} (columns: {columns})")
    return rows, kind


def parquet_rows(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise BadInput(f"{path}: unreadable Parquet ({e})") from e
    return [(i + 1, row) for i, row in enumerate(table.to_pylist())]


def _targets_beside(path: Path) -> dict[str, str]:
    for f in sorted(path.parent.glob("*.json")):
        if _is_targets_json(f):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BadInput(f"{f}: unreadable targets file ({e})") from e
            if isinstance(doc, dict):
                return {str(k): str(v) for k, v in doc.items()}
    return {}


def _text(row: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRow(f"missing or empty {key!r}")
        return None
    if not isinstance(value, str):
        raise BadRow(f"{key!r} is not a string")
    return value


def _record(kind: str, row: Any, o: ReadOptions, source: str, targets: dict[str, str]) -> Record:
    if isinstance(row, BadRow):
        raise row
    if not isinstance(row, dict):
        raise BadRow("a record must be a JSON object")
    harmful = o.label or "harmful"
    rid = str(row.get("id") or source)
    if kind == "jsonl":
        label = row.get(o.label_column) or o.label or "unlabeled"
        return Record(rid, _text(row, "prompt") or "", _text(row, "response", False), str(label), source)
    if kind == "chat":
        msgs = row.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRow("'messages' must be a non-empty list")
        turns = []
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
                raise BadRow("each message needs a 'role' and a string 'content'")
            turns.append((str(m["role"]), m["content"]))
        response = turns.pop()[1] if turns[-1][0] == "assistant" else None
        if not turns or turns[-1][0] != "user":
            raise BadRow("the turn before the response must be the user's")
        label = row.get(o.label_column) or o.label or "unlabeled"
        return Record(rid, turns[-1][1], response, str(label), source, tuple(turns[:-1]))
    if kind == "derta":
        prefix = _text(row, "prefix") or ""
        m = _ALPACA.search(prefix)
        prompt = prefix.strip() if m is None else "\n\n".join(x for x in m.groups() if x)
        return Record(rid, prompt, _text(row, "text", False), harmful, source)
    if kind == "questions":
        return Record(rid, _text(row, "question") or "", None, harmful, source)
    if kind == "lines":
        return Record(rid, row["prompt"], None, harmful, source)
    if kind == "advbench":
        return Record(rid, _text(row, "goal") or "", _text(row, "target", False), harmful, source)
    if kind == "advbench-strings":
        return Record(rid, "", _text(row, "target"), harmful, source)
    if kind == "harmbench":
        behavior = _text(row, "Behavior") or ""
        context = (row.get("ContextString") or "").strip()
        prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
        bid = str(row.get("BehaviorID") or rid)
        return Record(bid, prompt, targets.get(bid), harmful, source)
    if kind == "harmbench-targets":
        return Record(rid, "", _text(row, "target"), harmful, source)
    if kind in ("csv", "parquet"):
        pcol = o.prompt_column or "prompt"
        rcol = o.response_column or "response"
        if pcol not in row and rcol not in row:
            raise BadRow(f"neither {pcol!r} nor {rcol!r} in the record (keys: {sorted(row)})")
        prompt = _text(row, pcol, required=rcol not in row) or ""
        label = row.get(o.label_column) or o.label or "unlabeled"
        return Record(rid, prompt, _text(row, rcol, False), str(label), source)
    raise BadInput(f"unknown format {kind!r}")
