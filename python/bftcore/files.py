"""Writing files so that a reader never sees half of one, and naming their contents.

Every file or directory bftcore writes goes through here: a temporary sibling named
`.NAME.tmp-PID-RANDOM`, filled, optionally synced, then renamed over `NAME` in one step. A crash
leaves `NAME` as it was (absent or complete); the process id in the name lets `sweep_temps`
remove what dead processes left behind without touching a live writer's file, and the random part
keeps two threads or two processes from ever writing the same temporary.

Digests: `file_digest` reads in chunks (memory flat in the file size), `tree_digest` names a set of
files by their names and bytes, `json_digest` a JSON-able object by its canonical text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMP = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")
CHUNK = 1 << 22


def temp_path(dest: Path) -> Path:
    """The temporary sibling of `dest` that this process (and this call) writes first."""
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(dest: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest` in one rename.

    For writers that want a path (torch.save, pyarrow, matplotlib). `durable` syncs the file and
    its directory before returning (checkpoints, shards: what a resumed run relies on).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
        if durable:
            _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(dest: str | Path, data: bytes | str, *, durable: bool = False) -> None:
    """Write bytes (or UTF-8 text) to `dest` atomically."""
    with atomic_file(dest, durable=durable) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_json(dest: str | Path, obj: Any, *, indent: int | None = 2, durable: bool = False) -> None:
    atomic_write(dest, json.dumps(obj, indent=indent) + "\n", durable=durable)


@contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside `dest`; on success it replaces `dest` in one rename
    (an older `dest` is removed first). A crash leaves `dest` absent or complete."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    tmp.mkdir()
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_temps(root: str | Path) -> int:
    """Remove the temporaries under `root` that processes no longer alive left behind; the
    number removed. A live writer's temporary stays."""
    removed = 0
    for path in Path(root).rglob(".*.tmp-*"):
        m = _TEMP.match(path.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


# ---- digests ------------------------------------------------------------------------------
def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(paths: Iterable[str | Path], *, root: str | Path | None = None) -> str:
    """SHA-256 over files' names (relative to `root`, else their own names) and bytes, in sorted
    order; directories are walked."""
    files: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                name = str(f.relative_to(root)) if root is not None else (
                    str(f.relative_to(p)) if p.is_dir() else f.name)
                files.append((name, f))
    h = hashlib.sha256()
    for name, f in sorted(files):
        h.update(name.encode())
        h.update(file_digest(f).encode())
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON text (sorted keys; paths and tuples as JSON does)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
