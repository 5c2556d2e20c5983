# bftcore: two commands on a fresh machine.
#   make demo   installs what is missing, then runs the demo on the embedded toy world
#   make test   installs what is missing, then runs the linters (ruff, mypy, stubtest, clippy),
#               cargo test (no Python needed) and pytest
#   make wheel  builds the abi3 wheel and the sdist into dist/ (maturin)
#   make golden rewrites tests/golden.json after a stage's version in python/bftcore/cache.py was bumped
#   make docs   regenerates docs/cli.md, records a demo run and redraws the docs' demo output from it
#   make llama-server  builds llama.cpp's own server (parallel slots) for benches/attack_throughput.py
# Heavy dependencies go into the machine's Python and are reused: torch is never reinstalled
# when it imports (pip keeps every requirement that is already satisfied).

PY ?= python3
export PIP_ROOT_USER_ACTION := ignore
export PIP_DISABLE_PIP_VERSION_CHECK := 1
PIP := $(PY) -m pip

DIST ?= dist

.PHONY: install demo test lint test-rust test-python wheel golden docs clean llama-server

install:
	@# headless Chromium renders the HTML report in tests/test_report.py (Debian package; we run as root)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch
	@# maturin >= 1.9: pyo3 0.30's extension-module linking needs it (1.7 fails to link the core)
	@$(PY) -c "import importlib.metadata as m, sys; sys.exit(tuple(int(x) for x in m.version('maturin').split('.')[:2]) < (1, 9))" 2>/dev/null \
		|| $(PIP) install "maturin>=1.9,<2"
	@# zig links the portable wheel of `make wheel` against glibc 2.17 (tested: zig 0.14.1 to 0.17.1)
	@$(PY) -c "import ziglang" 2>/dev/null || $(PIP) install "ziglang>=0.14,<0.18"
	@# llama.cpp compiles from source (~4.5 min on 2 cores), once: portable x86-64 flags, no llava
	@$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) install --quiet "llama-cpp-python==0.3.36"
	@# editable install: builds the Rust core (cargo keeps target/ incremental) and the CLI entry point
	$(PIP) install --quiet --no-build-isolation --editable ".[dev,onnx,llamacpp,eval]"

demo: install
	$(PY) -m bftcore demo

test: install lint test-rust test-python

# the typed surface: _core.pyi against the built module, mypy and ruff on python/, clippy on rust/
lint:
	$(PY) -m ruff check python tests benches docs
	$(PY) -m mypy
	$(PY) -m mypy.stubtest bftcore._core
	cargo clippy --manifest-path rust/Cargo.toml --all-targets --features python --quiet -- -D warnings

# one abi3 wheel (CPython >= 3.11) and the sdist; the Rust core is compiled in, no toolchain needed to install.
# Portable: zig (the ziglang package) links the core against glibc 2.17's symbols, no container needed, so the
# wheel is tagged manylinux2014 (= manylinux_2_17_x86_64) and installs on glibc >= 2.17; maturin checks the claim.
wheel:
	@mkdir -p $(DIST)
	$(PY) -m maturin build --release --quiet --zig --compatibility manylinux2014 --out $(DIST)
	$(PY) -m maturin sdist --out $(DIST)

# the .bfti fuzz properties run 150k cases each here (about a minute); 1e6 once: see RESULTS.md
test-rust:
	BFTCORE_FUZZ_CASES=150000 cargo test --manifest-path rust/Cargo.toml

test-python:
	$(PY) -m pytest

golden:
	$(PY) tests/golden.py --update

llama-server: install
	$(PY) benches/build_llama_server.py

docs:
	$(PY) docs/gen_cli.py
	$(PY) docs/gen_demo.py --record

clean:
	rm -rf target python/bftcore/_core*.so .pytest_cache
