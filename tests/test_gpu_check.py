"""benches/gpu_check.sh: says "not run" without an NVIDIA GPU; its throughput part runs the same
code path on a CPU at a tiny size (so the prepared GPU run cannot rot unseen)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_without_a_gpu_the_check_says_not_run(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # the tools the script needs, and no nvidia-smi
    bin_dir.mkdir()
    for tool in ("dirname",):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    r = subprocess.run(["/bin/bash", str(ROOT / "benches" / "gpu_check.sh")], capture_output=True, text=True,
                       env={**os.environ, "PATH": str(bin_dir), "OUT": str(tmp_path / "out")}, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == "gpu_check: not run: no NVIDIA GPU on this machine (nvidia-smi finds none)"
    assert not (tmp_path / "out").exists()


def test_the_efficiency_bench_runs_on_a_cpu_at_a_tiny_size(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The GPU run's efficiency part, on the CPU at a tiny size: peaks measured, each workload's
    FLOPs counted and set against the matmul peak (no data-sheet figure without a GPU)."""
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, str(ROOT / "benches" / "efficiency.py"), "--presets", "tiny", "--docs", "6",
                        "--steps", "2", "--prompts", "4", "--json-out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    m = got["machine"]
    assert m["matmul_float32"] > 1e8 and m["read_bytes_per_s"] > 1e8 and "datasheet_bf16" not in m
    scoring, training, generation = got["presets"]["tiny"]["workloads"]
    for w in (scoring, training, generation):
        assert w["flops"] > 0 and w["tokens"] > 0 and math.isfinite(w["fraction_of_matmul_peak"])
    # the counted FLOPs are the run's own: more documents' padding only adds, never removes
    assert 0 < scoring["useful_flops"] <= scoring["flops"]
    assert training["what"] == "training step (bft, batch 8)" and generation["tokens"] <= 4 * 32
    assert "| dense matmul, float32 |" in r.stdout and "| tiny (" in r.stdout
