"""Progress reporting shared by the stages: a callback (description, done, total) that the CLI
turns into rich bars, and that library callers may leave out."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def counter(progress: Progress | None, desc: str, total: int) -> Callable[[int], None]:
    """A callback that adds n to a running count and reports it under `desc`."""
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(desc, done, total)

    return tick
