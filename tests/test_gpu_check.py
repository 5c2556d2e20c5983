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


def test_the_throughput_bench_runs_on_a_cpu_at_a_tiny_size(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "t.json"
    r = subprocess.run([sys.executable, str(ROOT / "benches" / "gpu_throughput.py"), "--device", "cpu", "--preset",
                        "tiny", "--docs", "12", "--steps", "2", "--batch-size", "8", "--json-out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["device"] == "cpu" and got["peak_bf16_flops"] is None and got["scoring"]["mfu"] is None
    assert got["scoring"]["tokens_per_s"] > 0 and got["training"]["tokens_per_s"] > 0
    assert got["training"]["steps"] == 2 and math.isfinite(got["training"]["loss_last"])
    assert "| scoring (2 models, forward) |" in r.stdout and "n/a (peak unknown)" in r.stdout
