"""Figures: matplotlib without a display, written atomically (a reader never sees half a PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bftcore.files import atomic_file


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, *, dpi: int = 110) -> None:
    """Write `fig` as a PNG at `path` (temp file and rename) and close it."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
