"""bftcore: find where an aligned LLM's safety is only shallow, repair it, ship it, re-attack it.

Stages (one module each): `toy` (the embedded toy world), `corpus`, `score`, `index`, `complete`
(targeted completion training and its baselines, over `losses` and the `train` loop), `attack`, and
`export` when it lands; `cli` is the `bftcore` command.
"""

from bftcore._core import __version__

__all__ = ["__version__"]
