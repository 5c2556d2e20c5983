"""The floating-point type a model runs in (`--dtype` of score, complete and attack).

    auto      bfloat16 on a CUDA GPU that supports it, else float32 (a CPU's bf16 matmuls are slow,
              and float32 keeps CPU runs bit-reproducible)
    bfloat16, float16, float32

Scoring and generation load the models in this type; statistics and log-probs are computed in
float32 from its logits. Training keeps float32 weights and optimizer state and autocasts the
forward to it (`bftcore.complete`). Names, not torch dtypes, travel through configs and cache keys:
importing this module does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bftcore.errors import BadInput

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_dtype(name: str, device: torch.device | str) -> str:
    """The type `name` stands for on `device`: itself, or what "auto" picks there."""
    if name not in DTYPES:
        raise BadInput(f"unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    if name != "auto":
        return name
    import torch

    if torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def torch_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """The torch dtype of `name`; "auto" (or any name) resolved on `device` first when given."""
    import torch

    if device is not None:
        name = resolve_dtype(name, device)
    types = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if name not in types:
        raise BadInput(f"dtype {name!r} is not a floating-point type to load a model in")
    return types[name]
