"""Measures beside the attacks: perplexity and KL divergence on benign responses (PyTorch), and
lm-eval-harness tasks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bftcore.chat import response_ids
from bftcore.corpus import Record
from bftcore.errors import BadInput


def _teacher_forced(gen: Any, records: Sequence[Record], thinking: bool) -> Iterator[tuple[Any, slice, list[int]]]:
    """For each record with a response: (prompt + response ids as a [1, L] tensor, the slice of
    the positions that predict the response's tokens, those tokens ending with eos)."""
    import torch

    from bftcore.chat import prompt_ids

    for r in records:
        if r.response:
            p = prompt_ids(gen.tokenizer, r.messages(), thinking=thinking)
            t = response_ids(gen.tokenizer, r.response, eos=True)
            yield torch.tensor([p + t], device=gen.device), slice(len(p) - 1, len(p) - 1 + len(t)), t


def perplexity(gen: Any, records: Sequence[Record], *, model: str = "model", arch: str = "",
               thinking: bool = False) -> dict[str, Any]:
    """Perplexity of the records' responses given their prompts (teacher-forced, torch backend)."""
    import torch


    nll, count = 0.0, 0
    with torch.no_grad():
        for ids, span, t in _teacher_forced(gen, records, thinking):
            logits = gen.model(input_ids=ids).logits[0, span].float()
            lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t, device=gen.device)[:, None])
            nll -= float(lp.sum())
            count += len(t)
    if not count:
        raise BadInput("no responses to measure perplexity on")
    return {"model": model, "arch": arch, "metric": "perplexity", "value": float(np.exp(nll / count)),
            "tokens": count, "documents": sum(1 for r in records if r.response)}


def kl_to_reference(gen: Any, reference: Any, records: Sequence[Record], *, model: str = "model",
                    arch: str = "", reference_name: str = "reference", thinking: bool = False) -> dict[str, Any]:
    """Mean per-token KL(model ‖ reference) over the records' responses given their prompts
    (teacher-forced on the response tokens, both in float32; torch backend): how far hardening
    moved the model on benign text. The two must share a tokenizer."""
    import torch


    total, count = 0.0, 0
    with torch.no_grad():
        for ids, span, t in _teacher_forced(gen, records, thinking):
            lp = torch.log_softmax(gen.model(input_ids=ids).logits[0, span].float(), -1)
            lq = torch.log_softmax(reference(input_ids=ids.to(next(reference.parameters()).device))
                                   .logits[0, span].float().to(lp.device), -1)
            total += float((lp.exp() * (lp - lq)).sum())
            count += len(t)
    if not count:
        raise BadInput("no responses to measure the KL divergence on")
    return {"model": model, "arch": arch, "metric": f"kl-to-{reference_name}", "value": total / count,
            "tokens": count, "documents": sum(1 for r in records if r.response)}


def lm_eval_tasks(tasks: Sequence[str], include: Path | None = None) -> Any:
    """The harness's task manager, once every name in `tasks` is a task it knows (its own, or a
    local one under `include`): checked before any model loads, so a typo costs no attack run."""
    try:
        from lm_eval.tasks import TaskManager  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as e:
        raise BadInput("--lm-eval needs the lm-eval package (pip install lm-eval)") from e
    manager = TaskManager(include_path=str(include) if include is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BadInput(f"unknown lm-eval task(s) {', '.join(unknown)} (local tasks: --lm-eval-include DIR)")
    return manager


def lm_eval(model: Path, tasks: Sequence[str], device: str = "cpu", *, include: Path | None = None,
            label: str = "model", arch: str = "", batch_size: int = 8) -> list[dict[str, Any]]:
    """lm-eval-harness tasks on a model directory (its `hf` model, offline): one measure per task
    and numeric metric, `lm-eval:TASK:METRIC`. `include`: a directory of local task files (YAML
    with local data) that the harness adds to its own."""
    import lm_eval as harness  # type: ignore[import-not-found,import-untyped,unused-ignore]

    manager = lm_eval_tasks(tasks, include)
    results = harness.simple_evaluate(model="hf", model_args=f"pretrained={model}", tasks=list(tasks),
                                      device=device, batch_size=batch_size, task_manager=manager)
    out = []
    for task, metrics in sorted((results or {}).get("results", {}).items()):
        for name, value in sorted(metrics.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in name:
                stderr = metrics.get(name.replace(",", "_stderr,", 1))
                out.append({"model": label, "arch": arch, "metric": f"lm-eval:{task}:{name}", "value": float(value),
                            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, "tokens": 0})
    return out
