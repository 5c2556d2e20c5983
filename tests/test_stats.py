from __future__ import annotations

import pytest

from bftcore.stats import RateRow, wilson


def test_wilson_known_values() -> None:
    # Reference values from the closed form (e.g. statsmodels proportion_confint method="wilson").
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753, abs=1e-5)
    low, high = wilson(5, 10)
    assert (low, high) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    low, high = wilson(180, 180)
    assert high == 1.0 and low == pytest.approx(0.97910, abs=1e-5)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_is_symmetric_and_contains_the_estimate() -> None:
    for n in (1, 7, 50, 180):
        for x in range(n + 1):
            low, high = wilson(x, n)
            assert 0.0 <= low <= x / n <= high <= 1.0
            l2, h2 = wilson(n - x, n)
            assert low == pytest.approx(1 - h2) and high == pytest.approx(1 - l2)


def test_wilson_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        wilson(-1, 2)


def test_row_format() -> None:
    row = RateRow("aligned", "llama", "prefill", 5, "asr", 9, 10).to_dict()
    assert list(row) == ["model", "arch", "attack", "k", "metric", "x", "n", "rate", "ci_low",
                         "ci_high"]
    assert row["rate"] == 0.9 and row["ci_low"] < 0.9 < row["ci_high"]
