"""Optional dependencies: which extra installs each one, so a missing one is a one-line reason
(`pip install 'bftcore[onnx]'`) rather than an ImportError deep in a run."""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from bftcore.errors import BadInput

# module -> the extra that provides it (`gpu` provides onnxruntime too, built for CUDA)
EXTRA_OF = {"onnxruntime": "onnx", "onnx": "onnx", "onnxscript": "onnx", "llama_cpp": "llamacpp"}

# distributions that all install the same `onnxruntime` module: with two of them, whichever was
# installed last has overwritten files of the other, and which providers work is anyone's guess
ONNXRUNTIME_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino",
                      "onnxruntime-qnn", "onnxruntime-rocm", "onnxruntime-silicon", "onnxruntime-training")


def onnxruntime_builds(path: list[str] | None = None) -> list[str]:
    """The onnxruntime distributions installed on `path` (default: sys.path), sorted."""
    found = set()
    for dist in importlib.metadata.distributions(path=path) if path is not None else importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-").replace(".", "-")
        if name in ONNXRUNTIME_BUILDS:
            found.add(name)
    return sorted(found)


def require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise BadInput naming the extra that installs it."""
    if module == "onnxruntime":
        builds = onnxruntime_builds()
        if len(builds) > 1:
            raise BadInput(f"{' and '.join(builds)} are installed together; they are one module built two ways "
                           "and overwrite each other: keep one (pip uninstall onnxruntime-gpu for bftcore[onnx], "
                           "pip uninstall onnxruntime for bftcore[gpu])")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRA_OF.get(module, "dev")
        hint = f"pip install 'bftcore[{extra}]'" + (" (or 'bftcore[gpu]' for CUDA)" if extra == "onnx" else "")
        raise BadInput(f"{purpose} needs {module}, which is not installed: {hint}") from e
