"""Shared fixtures. No test touches the network: outbound sockets are refused and the hub is offline."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# every subprocess (the CLI, the demo, the llama.cpp server) loads tests/offline/sitecustomize.py,
# which refuses outbound sockets as the fixture below does in this process
OFFLINE = Path(__file__).resolve().parent / "offline"
os.environ["PYTHONPATH"] = os.pathsep.join([str(OFFLINE), *filter(None, [os.environ.get("PYTHONPATH")])])

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = str(address[0]) if isinstance(address, tuple) else ""
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise OSError(f"network access in a test: connect to {address!r} refused")
    _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def no_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def toy():  # type: ignore[no-untyped-def]
    """The default toy world (seed 0), both architectures, built once into the cache."""
    from bftcore.toy import toy_world

    return toy_world(0).build(["llama", "qwen2"])


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 1800) -> subprocess.CompletedProcess[str]:
    """Run the real `bftcore` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "bftcore", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def shared_data() -> Path:
    """The public data sets beside the checkout (../shared/data), or $BFTCORE_SHARED_DATA."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("BFTCORE_SHARED_DATA"), here.parent / "shared" / "data",
                      Path("/work/shared/data")):
        if candidate and Path(candidate, "README.md").is_file():
            return Path(candidate)
    raise FileNotFoundError("../shared/data not found; set BFTCORE_SHARED_DATA")


# The real families, tiny: (vocabulary GGUF, chat template) in ../shared/data/llama-cpp-vocab
FAMILY_FILES = {
    "llama-3.1": ("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama-3.2": ("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "qwen2.5": ("ggml-vocab-qwen2.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("ggml-vocab-qwen2.gguf", "Qwen-Qwen3-0.6B.jinja"),
    "llama-2": ("ggml-vocab-llama-spm.gguf", None),  # its template is embedded
}


def vocab_dir() -> Path:
    return shared_data() / "llama-cpp-vocab"


@functools.cache
def family_pair(family: str) -> tuple[Path, Path]:
    """(base, aligned) tiny model directories of a real family, built once under the cache."""
    from bftcore.families import cached_pair

    vocab, template = FAMILY_FILES[family]
    return cached_pair(family, vocab_dir() / vocab,
                       template=vocab_dir() / "templates" / template if template else None)


def vocab_vectors(vocab: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's tokenizer test vectors of a vocabulary: (text, expected ids)."""
    name = vocab_dir() / f"ggml-vocab-{vocab}.gguf"
    texts = Path(f"{name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    ids = Path(f"{name}.out").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(texts) == len(ids) > 0
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids, strict=True)]
