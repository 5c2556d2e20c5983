"""The whole job: `complete` (models and data in, a model directory out) and `harden` (what the
`bftcore complete` command does beyond reading its options: files in, a model directory out)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bftcore import dist
from bftcore.cache import stage_key
from bftcore.complete.base_stats import ShardBaseStats
from bftcore.complete.card import CARD, card_markdown, run_card
from bftcore.complete.checkpoints import exclusive
from bftcore.complete.config import FINETUNE_ATTACKS, CompleteConfig, check_run, needs_base_model
from bftcore.complete.data import DEFAULT_REFUSALS, CompletionData, build_data, prepare_data, work_dir
from bftcore.complete.loop import RunResult, Trainer, train_loop
from bftcore.complete.methods import reads_attention
from bftcore.complete.profile import RetentionProfile
from bftcore.complete.scaling import distribute, enable_grad_checkpointing, trainee_dtype, unsharded, with_lora
from bftcore.corpus import ReadOptions
from bftcore.errors import BadInput
from bftcore.files import atomic_dir
from bftcore.progress import Progress

# the files of the aligned model's tokenizer that a completed model directory carries
_TOKENIZER_FILES = ("tokenizer", "special_tokens", "vocab", "merges", "chat_template")


def complete(base: str | Path | None, aligned: str | Path, data: CompletionData, out: Path,
             cfg: CompleteConfig, *, profile: RetentionProfile | None = None, device: str = "cpu",
             merge: bool = False, progress: Progress | None = None, stop_after: int | None = None,
             index_path: str | None = None, base_stats: ShardBaseStats | None = None) -> RunResult:
    """Train and write `out` (an ordinary model directory with a run card). Resumes from
    `out/../.<name>.work/checkpoint.pt` when interrupted; the work directory goes when done."""
    import torch

    from bftcore.models import load_model, load_tokenizer, tokenizer_hash
    from bftcore.precision import resolve_dtype, torch_dtype

    rank, world = dist.rank_world()
    check_run(cfg, world=world, index=profile is not None, base=base is not None,
              base_stats=base_stats is not None, merge=merge)
    cfg = replace(cfg, dtype=resolve_dtype(cfg.dtype, device))  # keyed and carded as it ran
    profile = profile or RetentionProfile.uniform()
    torch.manual_seed(cfg.seed)
    aligned = Path(aligned)
    tok = load_tokenizer(aligned)
    model = load_model(aligned, device=device, dtype=trainee_dtype(cfg))
    if reads_attention(cfg):  # the attention probabilities themselves: eager attention
        model.set_attn_implementation("eager")
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    reference = None
    frozen = torch_dtype(cfg.dtype)  # models that never train are kept in the compute type
    if cfg.lora:  # the frozen aligned model is the trainee with its adapter disabled
        model = with_lora(model, cfg)
    elif cfg.method in ("bft", "qi-constrained", "harmful-constrained"):
        reference = load_model(aligned, device=device, dtype=frozen).requires_grad_(False)
    base_model = None
    if needs_base_model(cfg, base_stats=base_stats is not None):
        assert base is not None  # check_run
        if tokenizer_hash(load_tokenizer(Path(base))) != tokenizer_hash(tok):
            raise BadInput("the base and aligned models do not share a tokenizer")
        base_model = load_model(Path(base), device=device, dtype=frozen).requires_grad_(False)
    ddp = distribute(model, [m for m in (reference, base_model) if m is not None], cfg, world)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    trainer = Trainer(model, reference, base_model, cfg, profile, pad, ddp=ddp, base_stats=base_stats,
                      openers=data.refusal_openers())
    # a checkpoint resumes only the same run: settings, data, profile, ranks and code version
    key = stage_key("completion", {"config": cfg.key(), "data": data.digest(), "profile": profile.to_dict(),
                                   "world": world, "base_statistics": base_stats is not None})
    work = work_dir(out)
    with exclusive(work, rank):
        result = train_loop(trainer, data, work, key, progress=progress, stop_after=stop_after)
    if cfg.fsdp and len(result.log) >= cfg.steps:
        model = unsharded(model, aligned, cfg, rank)
    if len(result.log) < cfg.steps or rank != 0:
        return result
    card = run_card(cfg, data, profile, result, base=base, aligned=aligned, index_path=index_path,
                    device=device, world=world,
                    base_statistics="scored shards" if base_stats is not None else "online")
    with atomic_dir(out) as tmp:
        if cfg.lora and merge:
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(aligned.iterdir()):
            if f.is_file() and f.name.startswith(_TOKENIZER_FILES):
                shutil.copyfile(f, tmp / f.name)
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in result.log))
        (tmp / "RUN_CARD.md").write_text(card_markdown(card))
    shutil.rmtree(work)
    return result


@dataclass(frozen=True)
class HardenInputs:
    """The files a hardening run reads and writes (`bftcore complete`'s options, less the settings)."""

    aligned: Path
    data: tuple[Path, ...]  # harmful prompts with harmful responses
    benign: tuple[Path, ...]  # benign pairs
    out: Path
    base: Path | None = None
    index: Path | None = None  # .bfti of harmful responses (bft needs it)
    base_shards: Path | None = None
    read: ReadOptions = field(default_factory=ReadOptions)  # for --data; --benign reads with the label "benign" unless read.label is set
    refusals: Path | None = None  # template refusals, one per line
    refusal_keywords: Path | None = None  # extra refusal keywords, one per line
    max_length: int = 512
    merge: bool = False
    device: str = "auto"


def harden(inputs: HardenInputs, cfg: CompleteConfig, *, progress: Progress | None = None) -> dict[str, Any] | None:
    """Train; returns the run card (rank 0) or None on other ranks.

    Reads the two corpora, builds the training data once (the aligned model's own refusals where
    the keyword judge, over the template refusals and the extra keywords, calls its answer one),
    reads the base statistics from scored shards when given, and runs `complete`. The caller
    starts the process group (`dist.init()`) under torchrun.
    """
    from bftcore import index as bfti
    from bftcore.corpus import read_corpus
    from bftcore.generate import TorchGenerator
    from bftcore.judge import KeywordJudge
    from bftcore.models import load_model, load_tokenizer, resolve_device, resolve_model, tokenizer_hash
    from bftcore.precision import torch_dtype

    rank, world = dist.rank_world()
    check_run(cfg, world=world, index=inputs.index is not None, base=inputs.base is not None,
              base_stats=inputs.base_shards is not None, merge=inputs.merge)
    aligned = resolve_model(inputs.aligned)
    base = resolve_model(inputs.base) if inputs.base is not None else None
    device = dist.local_device(str(resolve_device(inputs.device)))
    profile = RetentionProfile.from_index(bfti.Index(inputs.index)) if inputs.index is not None else None
    harmful, _ = read_corpus(inputs.data, inputs.read)
    attack = cfg.method in FINETUNE_ATTACKS  # the attacker's harmful pairs alone
    if not inputs.benign and not attack:
        raise BadInput(f"--method {cfg.method} needs --benign (benign prompt/response pairs, the capability anchor)")
    benign = read_corpus(inputs.benign, replace(inputs.read, label=inputs.read.label or "benign"))[0] \
        if inputs.benign else []
    templates = _lines(inputs.refusals) if inputs.refusals else list(DEFAULT_REFUSALS)
    judge = KeywordJudge(extra=[*templates, *(_lines(inputs.refusal_keywords) if inputs.refusal_keywords else [])])

    def build() -> CompletionData:
        weights = torch_dtype(cfg.dtype, device)
        gen = TorchGenerator(load_model(aligned, device=device, dtype=weights), load_tokenizer(aligned))
        return build_data(harmful, benign, gen, refuses=judge.refuses, templates=templates,
                          max_length=inputs.max_length, progress=progress, thinking=cfg.thinking,
                          need_benign=not attack)

    data = prepare_data(inputs.out, build)
    stats = None
    if inputs.base_shards is not None and cfg.method == "bft":
        stats = ShardBaseStats(inputs.base_shards, harmful, data, tokenizer_hash(load_tokenizer(aligned)), cfg.top_k)
    complete(base, aligned, data, inputs.out, cfg, profile=profile, device=device, merge=inputs.merge,
             progress=progress, index_path=str(inputs.index) if inputs.index is not None else None,
             base_stats=stats)
    if rank != 0:
        return None
    card: dict[str, Any] = json.loads((inputs.out / CARD).read_text())
    return card


def _lines(path: Path) -> list[str]:
    """A text file's non-empty lines, stripped."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
