"""Fitting the trainee on the hardware: LoRA, activation recomputation, DDP and FSDP2.

None of these changes what a run converges to (the run key leaves fsdp and grad_checkpointing
out); they change memory and where the work happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bftcore.complete.config import CompleteConfig
from bftcore.errors import BadInput


def trainee_dtype(cfg: CompleteConfig) -> Any:
    """The type the trainee is loaded in. Full weights: float32, the master copy that AdamW (float32
    state) steps, with the forward autocast to cfg.dtype. LoRA: cfg.dtype for the frozen weights;
    peft keeps the adapter, the only weights that train, in float32."""
    import torch

    from bftcore.precision import torch_dtype

    return torch_dtype(cfg.dtype) if cfg.lora else torch.float32


def with_lora(model: Any, cfg: CompleteConfig) -> Any:
    """The model with a LoRA adapter on every linear layer; only the adapter trains."""
    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                    target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lc, autocast_adapter_dtype=True)  # the adapter in float32 over any base


def enable_grad_checkpointing(model: Any) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant: works with FSDP2)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def distribute(model: Any, frozen: list[Any], cfg: CompleteConfig, world: int) -> Any:
    """Under torchrun: FSDP2 shards the trainee and the frozen models in place (three full copies
    of a large model per GPU would not fit) and returns None; otherwise the DDP-wrapped trainee
    (None in one process)."""
    if cfg.fsdp:
        for m in (model, *frozen):
            fsdp_shard(m)
        return None
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return None


def fsdp_shard(model: Any) -> None:
    """FSDP2: one parameter group per decoder layer (the classes transformers names in
    `_no_split_modules`), then the rest (embeddings, final norm, head) at the root."""
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise BadInput(f"--fsdp: {type(inner).__name__} names no decoder-layer class to shard by")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def unsharded(model: Any, aligned: Path, cfg: CompleteConfig, rank: int) -> Any:
    """FSDP2 after training: the full weights gathered onto rank 0's CPU and loaded into a
    plain copy of the model, which is what gets written (a collective; None on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from bftcore.models import load_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    plain = load_model(aligned, device="cpu", dtype=trainee_dtype(cfg))
    if cfg.lora:
        plain = with_lora(plain, cfg)
    plain.load_state_dict(full)
    return plain
