"""A completion run's settings, and every check of them in one place (`check_run`)."""

from __future__ import annotations

from dataclasses import dataclass

from bftcore.cache import settings
from bftcore.errors import BadInput
from bftcore.files import json_digest
from bftcore.precision import DTYPES

METHODS = ("bft", "sft", "qi-augment", "qi-constrained", "derta", "presto")  # the defenses
# fine-tuning attacks, not defenses: the attacker's harmful pairs as targets, every batch harmful
# (Qi et al. 2024's threat model; harmful-constrained runs their token-wise constrained objective on
# the attacker's data, as a fine-tuning service would apply it)
FINETUNE_ATTACKS = ("harmful-sft", "harmful-constrained")
OBJECTIVES = METHODS + FINETUNE_ATTACKS  # what `complete --method` trains
TEACHERS = ("hybrid", "suppressed", "off")
PENALTIES = ("linear", "l2", "rank", "off")
K_DRAWS = ("bucket", "position")  # how bft draws k from the retention profile (RetentionProfile.draw_k)


@dataclass(frozen=True)
class CompleteConfig:
    method: str = "bft"
    steps: int = 200
    batch_size: int = 32  # global: records per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    harmful_frac: float = 0.5  # share of each batch drawn from the harmful records
    lr: float = 3e-4
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    # bft
    direct_frac: float = 0.2  # harmful records trained as direct x -> s(x) (k = 0)
    alpha: float = 1.0  # position weight w(k) = 1 + alpha * R̄(bucket(k))
    # the base-favored penalty: its form and weight (rank at 0.3 chosen on the deep toy world's tuning
    # seed, benches/tune.py; the linear form was the default before it, at lam 1)
    lam: float = 0.3
    penalty: str = "rank"
    guard: float = 1.0  # penalty rank: weight of its guard (benign answers above the refusal openers)
    beta: float = 0.5  # distillation weight
    teacher: str = "hybrid"
    gamma: float = 2.0  # suppressed teacher
    top_k: int = 20  # base top-k of the penalty
    max_prefix: int | None = None  # cap on k (default: the response length)
    k_draw: str = "bucket"
    # baselines
    qi_alpha: float = 0.2
    qi_max_prefix: int = 100
    presto_lambda: float = 1.0  # PRESTO: weight of the attention paid to the harmful prefill
    # model
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    checkpoint_every: int = 50
    # precision (bftcore.precision): the forward autocasts to it over float32 weights and optimizer
    # state; "auto" is resolved for the device before a run is keyed
    dtype: str = "auto"
    thinking: bool = False  # prompts rendered with the template's thinking block on (Qwen3)
    # how, not what: neither changes the weights a run converges to, so neither is in the key
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard per decoder layer) instead of DDP
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower

    def check(self) -> None:
        """The settings on their own (`check_run` adds what depends on the run's inputs)."""
        if self.method not in OBJECTIVES:
            raise BadInput(f"unknown method {self.method!r} (choose from {', '.join(OBJECTIVES)})")
        if self.teacher not in TEACHERS:
            raise BadInput(f"unknown teacher {self.teacher!r} (choose from {', '.join(TEACHERS)})")
        if self.k_draw not in K_DRAWS:
            raise BadInput(f"unknown k draw {self.k_draw!r} (choose from {', '.join(K_DRAWS)})")
        if self.penalty not in PENALTIES:
            raise BadInput(f"unknown penalty {self.penalty!r} (choose from {', '.join(PENALTIES)})")
        if self.steps < 1 or self.batch_size < 2 or self.grad_accum < 1:
            raise BadInput("--steps must be >= 1, --batch-size >= 2, --grad-accum >= 1")
        if not 0.0 < self.harmful_frac < 1.0 and self.method not in FINETUNE_ATTACKS:
            raise BadInput("--harmful-frac must lie strictly between 0 and 1")
        if self.dtype not in DTYPES:
            raise BadInput(f"unknown dtype {self.dtype!r} (choose from {', '.join(DTYPES)})")
        if self.dtype == "float16":  # float16 gradients underflow without loss scaling, which the loop has not
            raise BadInput("--dtype float16 is for inference (score, attack); train in bfloat16 or float32")

    def key(self) -> str:
        """Hash of everything that decides the final weights (not checkpoint_every, fsdp or
        grad_checkpointing)."""
        d = settings(self)  # dtype and thinking enter only where they change what runs
        for how in ("checkpoint_every", "fsdp", "grad_checkpointing"):
            d.pop(how)
        return json_digest(d)[:16]


def needs_base_model(cfg: CompleteConfig, *, base_stats: bool) -> bool:
    """bft runs the base model online for its penalty (unless scored shards stand in for it) and
    for the suppressed teacher."""
    return cfg.method == "bft" and ((cfg.penalty != "off" and not base_stats) or cfg.teacher == "suppressed")


def check_run(cfg: CompleteConfig, *, world: int = 1, index: bool, base: bool, base_stats: bool = False,
              merge: bool = False) -> None:
    """Every check of a run before any work: the settings, then what they need of the inputs
    (an index, a base model or its scored shards) and of the launch (ranks). `harden`, `complete`
    and the CLI all call this; a failure is BadInput (exit code 2)."""
    cfg.check()
    if merge and not cfg.lora:
        raise BadInput("--merge applies to --lora runs")
    if cfg.method == "bft" and not index:
        raise BadInput("--method bft needs --index (the base-favored-token index of harmful responses; "
                       "build one with 'bftcore index')")
    if needs_base_model(cfg, base_stats=base_stats) and not base:
        raise BadInput("--method bft needs --base (or --base-shards): the base model's preferences "
                       "drive the penalty")
    if cfg.fsdp and world < 2:
        raise BadInput("--fsdp shards the model over ranks: run it under torchrun with 2 or more processes")
    if cfg.batch_size < world * cfg.grad_accum:
        raise BadInput(f"--batch-size {cfg.batch_size} is smaller than ranks x --grad-accum "
                       f"({world} x {cfg.grad_accum}): some micro-batches would be empty")
