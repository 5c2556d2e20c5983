"""Loading and saving models and tokenizers, safely: safetensors only, no remote code, atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from bftcore.cache import cache_root, stage_key
from bftcore.errors import BadInput
from bftcore.files import atomic_dir, json_digest, tree_digest

# Set by `bftcore --allow-pickle`: pickle-only model directories are converted to safetensors once
# (torch's weights-only unpickler), and the copy is what every stage loads.
ALLOW_PICKLE = False


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise BadInput(f"unknown device {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda was asked for, but no CUDA GPU is available")
    return device


def _check_model_dir(path: Path) -> None:
    if not path.is_dir():
        raise BadInput(f"{path}: no such model directory")
    if not (path / "config.json").is_file():
        raise BadInput(f"{path}: not a model directory (no config.json)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{path}/config.json: unreadable ({e})") from e
    if not isinstance(config, dict):
        raise BadInput(f"{path}/config.json: not a JSON object")
    if config.get("auto_map"):  # custom modeling code shipped with the weights: never run
        raise BadInput(f"{path}: this model needs its own Python code (auto_map in config.json); "
                       "bftcore never runs code from a model directory")
    if not any(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        why = (f" (found pickle weights {', '.join(pickles)}; they are not loaded: pass --allow-pickle "
               "to convert them once with torch's weights-only unpickler)") if pickles else ""
        raise BadInput(f"{path}: no safetensors weights{why}")


def load_model(path: str | Path, *, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> Any:
    """A causal LM from a local directory: safetensors only, never remote code."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        return _load_adapter(path, device=device, dtype=dtype)
    _check_model_dir(path)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, use_safetensors=True, trust_remote_code=False, local_files_only=True
    )
    return model.to(device).eval()


def _load_adapter(path: Path, *, device: torch.device | str, dtype: torch.dtype) -> Any:
    """A LoRA adapter directory (what `bftcore complete --lora` writes): the model it was trained
    on, named in adapter_config.json, with the adapter merged in for inference."""
    from peft import PeftModel

    if not (path / "adapter_model.safetensors").is_file():
        raise BadInput(f"{path}: no adapter_model.safetensors (pickle adapters are not loaded)")
    try:
        base_path = Path(json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(f"{path}: unreadable adapter_config.json") from e
    if not base_path.is_absolute():
        base_path = (path / base_path).resolve()
    base = load_model(base_path, device="cpu", dtype=dtype)
    model = PeftModel.from_pretrained(base, path, is_trainable=False)
    return model.merge_and_unload().to(device).eval()


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise BadInput(f"{path}: no tokenizer files")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=True)
    if (path / "tokenizer.json").is_file() and _rebuilt_pipeline(tok, path / "tokenizer.json"):
        # transformers 5's LlamaTokenizer rebuilds its normalizer and pre-tokenizer from flags, and
        # then tokenizes unlike SentencePiece at the start of a text and after special tokens;
        # tokenizer.json (what llama.cpp and SentencePiece agree with) is read as written instead
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    return tok


def _rebuilt_pipeline(tok: Any, tokenizer_json: Path) -> bool:
    """Whether the tokenizer class replaced tokenizer.json's normalizer or pre-tokenizer. The
    generic fast class reads the file as written; a family's class is compared with the file
    (its two components only: parsing the whole 128k-row vocabulary as JSON cost seconds)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or type(tok) is PreTrainedTokenizerFast:
        return False
    written = Tokenizer.from_file(str(tokenizer_json))
    return any(_component(getattr(backend, k)) != _component(getattr(written, k))
               for k in ("normalizer", "pre_tokenizer"))


def _component(part: Any) -> Any:
    return None if part is None else json.loads(part.__getstate__())


def tokenizer_hash(tokenizer: Any) -> str:
    """Identity of a tokenizer's ids: vocabulary, merges, added tokens, normalizer, pre-tokenizer.

    The chat template and decoder are left out: a base model and its chat model share ids even
    when only the chat model has a template.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        keep = {k: spec.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer")}
    else:  # a slow (Python) tokenizer: its vocabulary is what it has
        keep = {"vocab": sorted(tokenizer.get_vocab().items())}
    return json_digest(keep)[:16]


def check_same_tokenizer(base: Any, aligned: Any) -> str:
    """The shared tokenizer hash, or BadInput when the two models do not share a tokenizer."""
    hb, ha = tokenizer_hash(base), tokenizer_hash(aligned)
    if hb != ha:
        raise BadInput(f"the base and aligned models do not share a tokenizer (hash {hb} vs {ha}); "
                       "their token statistics cannot be compared")
    return ha


def save_model(model: Any, tokenizer_dir: Path, dest: Path, extra: dict[str, str] | None = None) -> None:
    """Write an ordinary model directory (safetensors, config, tokenizer files) atomically."""
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(tokenizer_dir.iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)


def resolve_model(path: str | Path) -> Path:
    """The directory to load for `path`: itself, or for a directory with pickle weights only and
    --allow-pickle given, a safetensors copy made once in the cache (keyed by the files' bytes)."""
    path = Path(path)
    if not path.is_dir() or (path / "adapter_config.json").is_file() or any(path.glob("*.safetensors")):
        return path
    pickles = sorted([*path.glob("*.bin"), *path.glob("*.pt")])
    if not pickles or not ALLOW_PICKLE or not (path / "config.json").is_file():
        return path  # load_model says why it will not load it
    files = sorted(f for f in path.iterdir() if f.is_file())
    dest = cache_root() / "converted" / f"{path.name}-{stage_key('converted', tree_digest(files))}"
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM

    try:  # transformers reads .bin with torch.load(weights_only=True): tensors, never objects
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=False, trust_remote_code=False,
                                                     local_files_only=True)
    except Exception as e:
        raise BadInput(f"{path}: the pickle weights do not load as plain tensors "
                       f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from e
    save_model(model, path, dest)
    for f in dest.iterdir():
        if f.suffix in (".bin", ".pt"):
            f.unlink()
    return dest
