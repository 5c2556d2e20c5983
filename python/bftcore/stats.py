"""Rates with honest intervals, and the one row format every rate-reporting command uses.

A row is one measured rate: which model, architecture, attack, prefill length k and metric, with x
successes out of n, the point estimate and a 95% Wilson score interval. `toy check`, `attack` and
`demo` all print and emit these rows (under `--json`, as `{"rows": [...]}`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for x successes in n trials; (0, 1) when n == 0."""
    if n < 0 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= x <= n, got x={x}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = x / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends (floating point would leave 1e-17 crumbs)
    low = 0.0 if x == 0 else max(0.0, centre - half)
    high = 1.0 if x == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class RateRow:
    model: str  # base | aligned | completed | sft | ...
    arch: str  # llama | qwen2 | ... ("" when not known)
    attack: str  # direct | prefill | ... ; "benign" for capability rows
    k: int | None  # prefill length in tokens, None when the attack has none
    metric: str  # asr | exact_match
    x: int
    n: int

    @property
    def rate(self) -> float:
        return self.x / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.x, self.n)

    def to_dict(self) -> dict[str, Any]:
        low, high = self.ci
        return {**asdict(self), "rate": self.rate, "ci_low": low, "ci_high": high}

    def fraction(self) -> str:
        return f"{self.x}/{self.n}"

    def interval(self) -> str:
        low, high = self.ci
        return f"{100 * self.rate:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"
