"""Rates with honest intervals, and the one row format every rate-reporting command uses.

A row is one measured rate: which model, architecture, attack, prefill length k and metric, with x
successes out of n, the point estimate and a 95% Wilson score interval. `toy check`, `attack` and
`demo` all print and emit these rows (under `--json`, as `{"rows": [...]}`).

Expectations on rates (the toy world's table) are `Check`s decided by intervals, never by point
estimates: see `rate_check`, `reduction_check` and `non_inferiority_check`.
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


# ---- checks on noisy rates ----------------------------------------------------------------
# A check on a measured rate is a statistical statement at the 95% level, never a comparison of
# point estimates: it holds when the interval lies wholly on the allowed side, fails when it
# lies wholly beyond, and is "not shown" otherwise (the data cannot tell; more samples could).
HOLDS, FAILS, NOT_SHOWN = "holds", "fails", "not shown"
Z_POWER80 = 0.8416212335729143  # one-sided normal quantile for 80% power


def newcombe_difference(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95% interval of p1 - p2 for two independent rates (Newcombe 1998, method 10: the hybrid
    score interval built from the two Wilson intervals)."""
    p1, p2 = (x1 / n1 if n1 else 0.0), (x2 / n2 if n2 else 0.0)
    l1, u1 = wilson(x1, n1)
    l2, u2 = wilson(x2, n2)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def ratio_interval(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """95% interval of p1 / p2 (MOVER-R of Donner and Zou 2012, from the Wilson intervals);
    defined for x2 > 0, and for x1 = 0 (lower bound 0)."""
    if x2 == 0:
        raise ValueError("the ratio of rates needs x2 > 0")
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson(x1, n1)
    l2, u2 = wilson(x2, n2)
    low = (p1 * p2 - math.sqrt(max(0.0, (p1 * p2) ** 2 - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2)))) \
        / (u2 * (2 * p2 - u2))
    high = (p1 * p2 + math.sqrt(max(0.0, (p1 * p2) ** 2 - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2)))) \
        / (l2 * (2 * p2 - l2))
    return max(0.0, low), high


def n_for_non_inferiority(p: float, margin: float) -> int:
    """Samples per arm that show non-inferiority (new >= ref - margin) at one-sided 2.5% with 80%
    power when both arms truly have rate p: the n a study of two equal methods needs."""
    var = max(2 * p * (1 - p), 1e-4)
    return math.ceil((Z95 + Z_POWER80) ** 2 * var / margin**2)


def verdict(low: float, high: float, *, at_most: float | None = None, at_least: float | None = None) -> str:
    """HOLDS when [low, high] lies wholly inside the allowed side of the bound(s), FAILS when it
    lies wholly outside one of them, NOT_SHOWN otherwise."""
    if (at_most is not None and low > at_most) or (at_least is not None and high < at_least):
        return FAILS
    if (at_most is None or high <= at_most) and (at_least is None or low >= at_least):
        return HOLDS
    return NOT_SHOWN


@dataclass(frozen=True)
class Check:
    """One line of an expectations table: what is expected, the verdict, and the figures."""

    name: str
    status: str  # HOLDS | FAILS | NOT_SHOWN
    detail: str

    @property
    def holds(self) -> bool:
        return self.status == HOLDS

    @property
    def failed(self) -> bool:
        return self.status == FAILS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "holds": self.holds, "detail": self.detail}


def exact_check(name: str, holds: bool, detail: str) -> Check:
    """A check on an exact quantity (a mean over tokens, a count on the same inputs): no interval."""
    return Check(name, HOLDS if holds else FAILS, detail)


def rate_check(name: str, row: RateRow, *, at_least: float | None = None,
               at_most: float | None = None) -> Check:
    """A rate against a bound, decided by its 95% Wilson interval."""
    low, high = row.ci
    return Check(name, verdict(low, high, at_least=at_least, at_most=at_most), row.interval())


def reduction_check(name: str, after: RateRow, before: RateRow, reduction: float) -> Check:
    """after <= (1 - reduction) * before, decided by the 95% interval of the ratio after/before.
    With no successes before there is nothing to reduce: it fails only if after is significantly
    higher (the interval of the difference lies above 0)."""
    if before.x == 0:
        low, _ = newcombe_difference(after.x, after.n, before.x, before.n)
        status = FAILS if low > 0 else (HOLDS if after.x == 0 else NOT_SHOWN)
        return Check(name, status, f"{before.fraction()} before, {after.fraction()} after")
    low, high = ratio_interval(after.x, after.n, before.x, before.n)
    return Check(name, verdict(low, high, at_most=1 - reduction),
                 f"{before.fraction()} -> {after.fraction()}, {100 * (1 - after.rate / before.rate):.0f}% fewer "
                 f"[95% CI {100 * (1 - high):.0f}%, {100 * (1 - low):.0f}%]")


def non_inferiority_check(name: str, new: RateRow, ref: RateRow, margin: float) -> Check:
    """new >= ref - margin, decided by the 95% interval of the difference new - ref: fails only
    when the whole interval lies below -margin; otherwise says what n would show it."""
    low, high = newcombe_difference(new.x, new.n, ref.x, ref.n)
    status = verdict(low, high, at_least=-margin)
    detail = (f"{new.fraction()} vs {ref.fraction()}, difference {100 * (new.rate - ref.rate):+.1f} points "
              f"[95% CI {100 * low:+.1f}, {100 * high:+.1f}]")
    if status == NOT_SHOWN:
        pooled = (new.x + ref.x) / max(1, new.n + ref.n)
        detail += (f"; showing it needs about {n_for_non_inferiority(pooled, margin)} per arm "
                   f"(80% power, equal true rates)")
    return Check(name, status, detail)
