"""bftcore: find where an aligned LLM's safety is only shallow, repair it, ship it, re-attack it.

Stages (one module each): `toy` (the embedded toy world), `train` (the training loop), and, as they
land, `corpus`, `score`, `index`, `attack`, `export`; `cli` is the `bftcore` command.
"""

from bftcore._core import __version__

__all__ = ["__version__"]
