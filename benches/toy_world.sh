#!/usr/bin/env bash
# Toy-world timings for benches/RESULTS.md:
#   `make demo` cold (empty toy cache, dependencies installed) and warm, the seconds of each
#   build stage, and the toy check table for both architectures.
# Usage: benches/toy_world.sh   (from the repository root; uses a fresh temporary cache)
set -euo pipefail
cd "$(dirname "$0")/.."
export BFTCORE_CACHE="$(mktemp -d)"
trap 'rm -rf "$BFTCORE_CACHE"' EXIT
make install >/dev/null
secs() { local t0=$(date +%s%N); "$@" >/dev/null; awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN{printf "%.1f", (b-a)/1e9}'; }
echo "machine: $(nproc) cores, $(python3 -c 'import torch; print("torch", torch.__version__, "threads", torch.get_num_threads())')"
echo "make demo cold: $(secs make demo) s"
echo "make demo warm: $(secs make demo) s"
echo "build stages (s): $(cat "$BFTCORE_CACHE"/toy/*/timings.json | tr -d '\n ')"
echo "qwen2 build + both checks: $(secs python3 -m bftcore toy check) s"
echo "build stages (s): $(cat "$BFTCORE_CACHE"/toy/*/timings.json | tr -d '\n ')"
python3 -m bftcore toy check
