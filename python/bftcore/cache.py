"""The cache: where it is, and what names an entry in it.

An entry's key is a digest of its real inputs (settings, data and weights by their bytes, library
versions that change numerics) and of the version constant of the stage that made it. Source text
is never part of a key: a comment edit rebuilds nothing, and a change of behaviour bumps the stage's
number in `VERSIONS` (the golden tests in tests/test_golden.py fail when behaviour changes and the
number does not). `--rebuild` on the commands that read a cache ignores what is there.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bftcore.files import file_digest, json_digest

# Bump a stage's number when its output changes for the same inputs.
VERSIONS = {
    # toy/language.py (tasks, answers, splits), toy/build.py (tokenizers, model shapes, training
    # data), train.py (the loop): the toy world's files and weights
    "toy-world": 2,
    # complete/ and losses.py: a completed model's weights for given data, models and settings
    "completion": 1,
    # attack/, generate.py, judge.py, backends.py, chat.py, anydepth.py: the rows measured on a model
    "attack-rows": 2,
    # export/: a GGUF or ONNX file for a given model directory
    "export": 3,
    # models.resolve_model: the safetensors copy of a pickle-only model directory
    "converted": 1,
    # families.py: a tiny real-family model directory for a vocabulary, template, seed and size
    "tiny-family": 3,
}

# the libraries whose versions change what a stage computes (numerics, tokenization, file layout)
LIBRARIES = {
    "toy-world": ("torch", "transformers", "tokenizers"),
    "completion": ("torch", "transformers", "peft"),
    "attack-rows": ("torch", "transformers", "tokenizers", "llama_cpp_python", "onnxruntime"),
    "export": ("torch", "transformers", "gguf", "onnx", "onnxscript", "llama_cpp_python"),
    "converted": ("torch", "transformers", "safetensors"),
    "tiny-family": ("torch", "transformers", "tokenizers", "gguf"),
}


# Settings added after entries were keyed, with the values under which a stage computes what it
# did before they existed: there a setting stays out of a key (`settings`), so earlier keys still
# hold. "auto" precision is float32 on a CPU; keys that leave the device out leave it out too.
# The attacks' and methods' own settings join at their defaults: an attack or method that does not
# read them computes what it did.
LATER_SETTINGS: dict[str, tuple[Any, ...]] = {
    "dtype": ("auto", "float32"), "thinking": (False,),
    # issue 16: deep-prefill, restart, many-shot (AttackConfig), presto (CompleteConfig)
    "deep_ks": ((64, 128, 256),), "deep_tail": (16,), "restart_refusal": ("I cannot help with that.",),
    "shots": ((1, 2, 4),), "presto_lambda": (1.0,),
    # issue 18: the deep toy world (ToySettings)
    "task_steps": (0,), "heldout_verbs": (0,), "unseen_in_base": (False,), "lookalike": (False,),
    # issue 18 item 5: how bft draws k (CompleteConfig)
    "k_draw": ("bucket",), "guard": (1.0,),
}


def settings(cfg: Any) -> dict[str, Any]:
    """A settings dataclass as key input: its fields, less the later settings at their earlier values."""
    return {k: v for k, v in asdict(cfg).items() if k not in LATER_SETTINGS or v not in LATER_SETTINGS[k]}


def cache_root() -> Path:
    """$BFTCORE_CACHE, default ~/.cache/bftcore."""
    return Path(os.environ.get("BFTCORE_CACHE", "~/.cache/bftcore")).expanduser()


def library_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def stage_key(stage: str, inputs: Any, *, length: int = 16) -> str:
    """The key of a stage's output: its version, the versions of its libraries and `inputs`
    (any JSON-able object: settings, digests of data and weights)."""
    return json_digest({"stage": stage, "version": VERSIONS[stage],
                        "libraries": library_versions(LIBRARIES[stage]), "inputs": inputs})[:length]


_MODEL_FILES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".gguf", ".onnx", ".data")
# run records written beside the weights (timings, logs): not what the model computes
_NOT_MODEL = ("bftcore_", "train_log", "RUN_CARD", "timings")
_memo: dict[tuple[str, int, int], str] = {}


def model_digest(path: str | Path) -> str:
    """A model's identity by its bytes: a directory's weights, config and tokenizer files, or one
    file (a GGUF). Memoised per process by path, size and modification time."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        f for f in path.iterdir() if f.is_file() and f.suffix in _MODEL_FILES
        and not f.name.startswith(_NOT_MODEL))
    parts = []
    for f in files:
        st = f.stat()
        memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
        if memo not in _memo:
            _memo[memo] = file_digest(f)
        parts.append((f.name, _memo[memo]))
    return json_digest(parts)[:16]
