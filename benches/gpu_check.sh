#!/usr/bin/env bash
# One prepared run for a machine with an NVIDIA GPU, under 10 minutes on one H100/H200:
#   1. installs the wheel (the path given, or dist/bftcore-*-abi3-*.whl; `make wheel` if none) into a
#      fresh virtual environment that sees the machine's torch (never installed twice)
#   2. runs `bftcore demo --device cuda` on the toy world (a cache of its own: a cold run)
#   3. the GPU's own peaks (matmul FLOP/s measured, memory bandwidth) and scoring, completion training
#      and generation on the toy models, a ~90M-parameter and a ~1.2B-parameter random Llama in bf16
#      (benches/efficiency.py): tokens/s and the fraction of the measured and the data-sheet bf16 peak
# Usage: benches/gpu_check.sh [WHEEL]      Everything it writes goes to $OUT (default /tmp/bftcore-gpu-check).
# Without an NVIDIA GPU it says "not run" and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_check: not run: no NVIDIA GPU on this machine (nvidia-smi finds none)" >&2
    exit 2
fi
PY=${PY:-python3}
WORK=${OUT:-/tmp/bftcore-gpu-check}
mkdir -p "$WORK"
WHEEL=${1:-$(ls dist/bftcore-*-abi3-*.whl 2>/dev/null | head -n 1 || true)}
if [ -z "$WHEEL" ]; then
    make wheel PY="$PY"
    WHEEL=$(ls dist/bftcore-*-abi3-*.whl | head -n 1)
fi
rm -rf "$WORK/venv"
"$PY" -m venv --system-site-packages --without-pip "$WORK/venv"
# offline first: every dependency already on the machine; else from the package index
"$PY" -m pip --python "$WORK/venv/bin/python" install --quiet --no-index "$WHEEL" 2>/dev/null \
    || "$PY" -m pip --python "$WORK/venv/bin/python" install --quiet "$WHEEL"
export PATH="$WORK/venv/bin:$PATH" BFTCORE_CACHE="$WORK/cache"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$WORK/gpu.txt"
bftcore --version | tee "$WORK/version.txt"
python -c "import bftcore, torch; print('bftcore from', bftcore.__file__); print('torch', torch.__version__, 'cuda', torch.version.cuda)"

start=$SECONDS
demo_rc=0
bftcore demo --device cuda --json > "$WORK/demo.json" || demo_rc=$?
demo_s=$((SECONDS - start))
python - "$WORK/demo.json" "$demo_s" "$demo_rc" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
checks = d["checks"]
failed = [c for c in checks if not c["holds"]]
print(f"demo --device cuda: exit {sys.argv[3]}, {sys.argv[2]} s, {len(checks) - len(failed)}/{len(checks)} checks hold")
for c in failed:
    print("  does not hold:", c["name"], c["detail"])
PY

start=$SECONDS
python benches/efficiency.py --device cuda --presets toy mid 1b --json-out "$WORK/efficiency.json" | tee "$WORK/efficiency.md"
echo "efficiency: $((SECONDS - start)) s; results in $WORK"
