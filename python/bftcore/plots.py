"""Figures: matplotlib without a display, written atomically (a reader never sees half a PNG)."""

from __future__ import annotations

import hashlib
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


# The demo's models (and the method names they are trained with) in fixed colours of tab10
_MODEL_COLOURS = ("base", "aligned", "completed", "sft", "qi-augment", "derta", "presto", "contrastive",
                  "any-depth", "qi-constrained")
_METHOD_ROWS = {"bft": "completed"}


def model_colour(model: str) -> Any:
    """One colour per model name in every figure bftcore draws (ASR panels, the continuous views,
    training curves): the demo's models and methods from a fixed table, any other name from a
    stable hash of it, so a model keeps its colour whatever else a figure shows."""
    plt = pyplot()
    name = _METHOD_ROWS.get(model, model)
    if name in _MODEL_COLOURS:
        return plt.get_cmap("tab10")(_MODEL_COLOURS.index(name))
    return plt.get_cmap("tab20b")(int(hashlib.sha256(name.encode()).hexdigest(), 16) % 20)


def series_colours(models: dict[str, str]) -> dict[str, Any]:
    """Colours of a figure's series, label -> model name: the model's colour, or the label's own
    where one model has several series (two architectures, two runs of one method)."""
    count: dict[str, int] = {}
    for model in models.values():
        count[model] = count.get(model, 0) + 1
    return {label: model_colour(model if count[model] == 1 else label) for label, model in models.items()}
