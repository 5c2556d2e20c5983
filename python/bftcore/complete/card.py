"""The run card: what a completed model directory says about how it was trained (JSON for tools,
RUN_CARD.md for people)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from bftcore.complete.config import CompleteConfig
from bftcore.complete.data import CompletionData
from bftcore.complete.loop import RunResult
from bftcore.complete.profile import RetentionProfile

CARD = "bftcore_complete.json"


def run_card(cfg: CompleteConfig, data: CompletionData, profile: RetentionProfile, result: RunResult, *,
             base: Path | str | None, aligned: Path | str, index_path: str | None, device: str, world: int,
             base_statistics: str) -> dict[str, Any]:
    """The card of a finished run: settings, data, models, and the loss log with its summary."""
    first, last = result.log[0], result.log[-1]
    tail = result.log[-10:]
    terms = [k for k in last if k not in ("step", "lr", "loss", "grad_norm")]
    return {
        "bftcore_complete": 1,
        "config": asdict(cfg),
        "key": cfg.key(),
        "data": data.summary(),
        "retention_profile": profile.to_dict(),
        "models": {"base": str(base), "aligned": str(aligned)},
        "index": index_path,
        "base_statistics": base_statistics,
        "device": device,
        "world_size": world,
        "seconds_this_run": round(result.seconds, 2),
        "resumed_from_step": result.resumed_from,
        "loss_first": first["loss"],
        "loss_final_mean10": sum(e["loss"] for e in tail) / len(tail),
        "terms_final_mean10": {k: sum(e.get(k, 0.0) for e in tail) / len(tail) for k in terms},
        "log": result.log,
    }


def card_markdown(card: dict[str, Any]) -> str:
    cfg = card["config"]
    lines = [f"# bftcore completion run: method `{cfg['method']}`", "",
             f"- models: base `{card['models'].get('base')}`, aligned `{card['models'].get('aligned')}`",
             f"- index: `{card['index']}`",
             (f"- data: {card['data']['harmful']} harmful ({card['data']['self_refusals']} self-distilled "
              f"refusals, {card['data']['template_refusals']} template), {card['data']['benign']} benign; "
              f"hash `{card['data']['hash']}`"),
             (f"- steps {cfg['steps']}, batch {cfg['batch_size']} (accumulation {cfg['grad_accum']}), "
              f"lr {cfg['lr']}, seed {cfg['seed']}, world size {card['world_size']}, device {card['device']}"),
             (f"- loss: {card['loss_first']:.4f} at step 1, {card['loss_final_mean10']:.4f} "
              "(mean of the last 10 steps)"),
             "", "| term | final (mean of last 10 steps) |", "| --- | --- |"]
    lines += [f"| {k} | {v:.5f} |" for k, v in card["terms_final_mean10"].items()]
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"
