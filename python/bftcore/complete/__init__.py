"""Targeted completion training (docs/method.md §2) and the baselines it is measured against.

    data     harmful prompts x with harmful responses h and a refusal s(x) (the aligned model's own
             refusal when the judge calls it one, else a template), plus benign pairs (x', y')
    methods  bft             ours: direct x -> s(x); recovery x, h_<=k -> s(x) with k drawn from the
                             buckets in proportion to the index's mean retention R̄ and weighted
                             w(k) = 1 + α·R̄(bucket(k)); the adaptive base-favored penalty inside the
                             prefix; hybrid-teacher distillation
             sft             refusal SFT: x -> s(x)
             qi-augment      Qi et al. recovery augmentation: k = 0 half the time, else U[1, 100]
                             (capped at the response); α·CE(harmful) + (1 − α)·CE(benign), α = 0.2
             qi-constrained  Qi et al. token-wise constrained objective on the same examples
             derta           DeRTa: x, h_<k -> s(x) with k uniform over the response, and the
                             refusal's first token as the target at every harmful position
    loop     AdamW, warmup, cosine decay, accumulation, clipping, autocast to --dtype (bf16 on a
             GPU by default) over float32 weights and optimizer state (the pieces of
             `bftcore.train`); the batch of a step is a pure function of (seed, step), so a
             checkpoint (weights, optimizer, step) resumes exactly; DDP (or FSDP2) under torchrun,
             each rank taking a slice of the global batch with losses normalised by the global
             counts (the same curve as one process).

Every method sees the same records in the same order, the same number of steps and the same batch.

Modules: config (settings and every check of them), data (records to tokens), profile (the index's
retention profile), batching (a step's records, examples, padded batch), methods (each method's
examples, term counts and loss), loop (the trainer and the loop), checkpoints (exact resume),
scaling (LoRA, DDP, FSDP2, activation recomputation), base_stats (the base top-k from scored
shards), card (the run card), job (`complete` and `harden`, the whole job).
"""

from bftcore.complete.base_stats import ShardBaseStats
from bftcore.complete.batching import Batch, CompletionExample, collate, step_records
from bftcore.complete.card import CARD
from bftcore.complete.config import (
    FINETUNE_ATTACKS,
    K_DRAWS,
    METHODS,
    OBJECTIVES,
    PENALTIES,
    TEACHERS,
    CompleteConfig,
    check_run,
)
from bftcore.complete.data import (
    DEFAULT_REFUSALS,
    BenignItem,
    CompletionData,
    HarmfulItem,
    build_data,
    prepare_data,
    work_dir,
)
from bftcore.complete.job import HardenInputs, complete, harden
from bftcore.complete.loop import RunResult, Trainer, train_loop
from bftcore.complete.methods import make_examples, term_counts
from bftcore.complete.profile import RetentionProfile

__all__ = [
    "CARD", "DEFAULT_REFUSALS", "FINETUNE_ATTACKS", "K_DRAWS", "METHODS", "OBJECTIVES", "PENALTIES", "TEACHERS", "Batch", "BenignItem", "CompleteConfig",
    "CompletionData", "CompletionExample", "HardenInputs", "HarmfulItem", "RetentionProfile", "RunResult",
    "ShardBaseStats", "Trainer", "build_data", "check_run", "collate", "complete", "harden", "make_examples",
    "prepare_data", "step_records", "term_counts", "train_loop", "work_dir",
]
