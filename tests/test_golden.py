"""A behaviour change must bump its stage's version (tests/golden.py says why and how)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden import GOLDEN, STAGES, compute, differences


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_figures_match_the_pinned_ones_or_the_version_was_bumped(stage: str, tmp_path: Path) -> None:
    pinned = json.loads(GOLDEN.read_text())[stage]
    now = compute(stage, tmp_path)
    if now["version"] != pinned["version"]:
        pytest.fail(f"VERSIONS[{stage!r}] is {now['version']}, the golden figures are of version "
                    f"{pinned['version']}: regenerate them with `make golden` and commit tests/golden.json")
    diff = differences(pinned["figures"], now["figures"])
    assert not diff, (f"{stage} computes something else than version {pinned['version']} did; bump "
                      f"VERSIONS[{stage!r}] in python/bftcore/cache.py and run `make golden`:\n  "
                      + "\n  ".join(diff[:20]))
