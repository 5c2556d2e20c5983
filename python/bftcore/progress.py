"""Progress reporting shared by the stages: a callback (description, done, total) that the CLI
turns into rich bars on a terminal or plain lines elsewhere, and that library callers may leave out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from bftcore.errors import BadInput

Progress = Callable[[str, int, int], None]

EVERY_VAR = "BFTCORE_PROGRESS_EVERY"  # seconds between two plain lines of one task
EVERY_DEFAULT = 15.0


def counter(progress: Progress | None, desc: str, total: int) -> Callable[[int], None]:
    """A callback that adds n to a running count and reports it under `desc`."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(desc, done, total)

    return tick


def progress_every() -> float:
    """Seconds between two plain progress lines of one task: $BFTCORE_PROGRESS_EVERY, else 15."""
    raw = os.environ.get(EVERY_VAR, "").strip()
    if not raw:
        return EVERY_DEFAULT
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:  # negative, or NaN
        raise BadInput(f"{EVERY_VAR}={raw!r}: give a number of seconds (0 prints every update)")
    return every


def plain_lines(write: Callable[[str], None], every: float,
                clock: Callable[[], float] = time.monotonic) -> Progress:
    """A progress callback for logs and pipes, where bars do not show: one line per task when it
    starts, at most one per `every` seconds while it runs, and one when it completes, each with
    the time since the first, e.g. `[00:03:12] training llama base 120/400`."""
    start = clock()
    last: dict[str, float] = {}  # task -> when its last line was written
    completed: set[str] = set()

    def report(desc: str, done: int, total: int) -> None:
        now = clock()
        complete = done >= total
        if desc in completed and not complete:  # the same task again (another file, another pass)
            completed.discard(desc)
            last.pop(desc, None)
        due = desc not in last or now - last[desc] >= every
        if (complete and desc not in completed) or (not complete and due):
            last[desc] = now
            if complete:
                completed.add(desc)
            s = int(now - start)
            write(f"[{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}] {desc} {done}/{total}")

    return report
