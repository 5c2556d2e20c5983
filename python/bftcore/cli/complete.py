"""`bftcore complete`: targeted completion training, a thin call of `bftcore.complete.harden`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bftcore import dist
from bftcore.cli.common import (
    console,
    corpus_options,
    dtype_option,
    emit_json,
    options_to,
    progress_bars,
    thinking_option,
)
from bftcore.complete import K_DRAWS, OBJECTIVES, PENALTIES, TEACHERS, CompleteConfig, HardenInputs, harden

# the options that are CompleteConfig's fields (the adapter's alpha follows its rank: 2 r)
CONFIG_OPTIONS = ("method", "steps", "batch_size", "grad_accum", "lr", "harmful_frac", "seed", "alpha", "lam",
                  "penalty", "guard", "beta", "teacher", "gamma", "direct_frac", "max_prefix", "k_draw", "presto_lambda", "lora", "lora_r",
                  "checkpoint_every", "fsdp", "grad_checkpointing", "dtype", "thinking")
# the options that are HardenInputs' fields: what to train on, where from and where to
INPUT_OPTIONS = ("aligned", "data", "benign", "out", "base", "index", "base_shards", "read", "refusals",
                 "refusal_keywords", "max_length", "merge", "device")
CARD_SUMMARY = ("key", "data", "loss_first", "loss_final_mean10", "terms_final_mean10", "resumed_from_step",
                "seconds_this_run")


def _complete_config(**options: Any) -> CompleteConfig:
    return CompleteConfig(**options, lora_alpha=2 * options["lora_r"])


def _harden_inputs(**options: Any) -> HardenInputs:
    return HardenInputs(**options)


@click.command()
@click.option("--aligned", required=True, type=click.Path(path_type=Path), help="Aligned model directory (the trainee starts from it).")
@click.option("--base", type=click.Path(path_type=Path), help="Base model directory (needed by --method bft).")
@click.option("--index", "index", type=click.Path(path_type=Path), help="Base-favored-token index of harmful responses (needed by --method bft).")
@click.option("--base-shards", type=click.Path(path_type=Path),
              help="Scored shards of the --data corpus ('bftcore score'): the penalty reads the base top-k there instead of running the base model.")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Harmful prompts with harmful responses; repeatable.")
@click.option("--benign", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Benign prompt/response pairs (the capability anchor; every defense needs them); repeatable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output model directory.")
@click.option("--method", type=click.Choice(list(OBJECTIVES)), default="bft", show_default=True,
              help="bft (ours), or a baseline: sft, qi-augment, qi-constrained, derta, presto; or a fine-tuning attack "
                   "on --aligned: harmful-sft, harmful-constrained (trains on the --data pairs alone).")
@click.option("--steps", type=click.IntRange(min=1), default=CompleteConfig.steps, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=CompleteConfig.batch_size, show_default=True, help="Global records per step.")
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=CompleteConfig.lr, show_default=True)
@click.option("--harmful-frac", type=float, default=CompleteConfig.harmful_frac, show_default=True, help="Share of each batch from the harmful records.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--alpha", type=click.FloatRange(min=0), default=CompleteConfig.alpha, show_default=True, help="Position weight w(k) = 1 + alpha * R(bucket(k)).")
@click.option("--lam", type=click.FloatRange(min=0), default=CompleteConfig.lam, show_default=True, help="Base-favored penalty weight.")
@click.option("--penalty", type=click.Choice(list(PENALTIES)), default=CompleteConfig.penalty, show_default=True,
              help="bft: the base-favored penalty in its rank form (rank: the refusal's opening token above "
                   "the base's favoured tokens) or on the retained base mass (linear, l2; linear at --lam 1 "
                   "is the earlier default).")
@click.option("--guard", type=click.FloatRange(min=0), default=CompleteConfig.guard, show_default=True,
              help="bft --penalty rank: weight of its guard (benign answer tokens above the refusal openers).")
@click.option("--beta", type=click.FloatRange(min=0), default=CompleteConfig.beta, show_default=True, help="Distillation weight.")
@click.option("--teacher", type=click.Choice(list(TEACHERS)), default=CompleteConfig.teacher, show_default=True)
@click.option("--gamma", type=click.FloatRange(min=0), default=CompleteConfig.gamma, show_default=True, help="Suppression strength of --teacher suppressed.")
@click.option("--presto-lambda", type=click.FloatRange(min=0), default=CompleteConfig.presto_lambda, show_default=True,
              help="presto: weight of the attention the refusal pays to the harmful prefill.")
@click.option("--direct-frac", type=click.FloatRange(0, 1), default=CompleteConfig.direct_frac, show_default=True, help="bft: harmful records trained without a prefix.")
@click.option("--max-prefix", type=click.IntRange(min=1), help="bft: cap on the prefix length k.")
@click.option("--k-draw", type=click.Choice(list(K_DRAWS)), default=CompleteConfig.k_draw, show_default=True,
              help="bft: k from the index's profile by bucket (each bucket ∝ R̄) or by position (each position ∝ R̄).")
@click.option("--lora", is_flag=True, help="Train a LoRA adapter (peft) instead of full weights.")
@click.option("--lora-r", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--merge", is_flag=True, help="With --lora: write the merged model instead of the adapter.")
@click.option("--refusals", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Template refusals (one per line), used where the aligned model does not refuse.")
@click.option("--refusal-keywords", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Extra refusal keywords (one per line) for judging the aligned model's own answers.")
@click.option("--max-length", type=click.IntRange(min=8), default=512, show_default=True, help="Tokens per training sequence.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--fsdp", is_flag=True, help="Under torchrun: shard weights, gradients and optimizer state over ranks (FSDP2) instead of DDP.")
@click.option("--grad-checkpointing", is_flag=True, help="Recompute activations in the backward pass: less memory, slower steps.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@dtype_option("The forward autocasts to it; trained weights and AdamW state stay float32 (a LoRA run's frozen "
              "weights are kept in it). float16 is refused: it needs loss scaling.")
@thinking_option
@click.option("--json", "as_json", is_flag=True, help="Print the run card's summary as JSON.")
@corpus_options
@options_to("cfg", _complete_config, *CONFIG_OPTIONS)
@options_to("inputs", _harden_inputs, *INPUT_OPTIONS)
def complete(cfg: CompleteConfig, inputs: HardenInputs, as_json: bool) -> None:
    """Targeted completion training: harden an aligned model where its safety learning is
    incomplete (docs/method.md §2), or train one of the baselines on the same data and budget.

    Interrupted runs resume from their last checkpoint when rerun with the same arguments.
    Under torchrun each rank takes a slice of every global batch (DDP; with --fsdp, FSDP2 shards
    the weights, gradients and optimizer state, for models too large to replicate per GPU).

    \b
    Example:
      bftcore complete --base B --aligned A --index corpus.bfti --data harmful.jsonl \\
          --benign benign.jsonl --out hardened/
      bftcore complete --method qi-augment --aligned A --data harmful.jsonl --benign benign.jsonl --out qi/
      torchrun --nproc-per-node 8 -m bftcore complete --fsdp --base B --aligned A --index corpus.bfti \\
          --data harmful.jsonl --benign benign.jsonl --out hardened/
    """
    dist.init()
    with progress_bars() as bar:
        card = harden(inputs, cfg, progress=bar)
    if card is None:  # a rank other than 0: rank 0 reports
        return
    out = inputs.out
    if as_json:
        emit_json({"out": str(out), "method": cfg.method, **{k: card[k] for k in CARD_SUMMARY}})
        return
    d, resumed = card["data"], card["resumed_from_step"]
    console.print(f"{cfg.method}: {cfg.steps} steps on {d['harmful']} harmful ({d['self_refusals']} self-distilled "
                  f"refusals) and {d['benign']} benign pairs" + (f", resumed at step {resumed}" if resumed else ""))
    console.print(f"  loss {card['loss_first']:.4f} -> {card['loss_final_mean10']:.4f}; "
                  + ", ".join(f"{k} {v:.4f}" for k, v in card["terms_final_mean10"].items()))
    console.print(f"  model in {out} (run card: {out / 'RUN_CARD.md'})")
