"""The six methods and two fine-tuning attacks, one entry each in `REGISTRY`: how a method turns a harmful record into an
example, how many positions each of its loss terms averages over, and its loss.

    bft             direct x -> s(x) with probability direct_frac, else recovery x, h_<=k -> s(x)
                    with k from the retention profile, weighted w(k) = 1 + α·R̄(bucket(k));
                    CE + λ·R̄-scaled base-favored penalty on the prefix + β·distillation
    sft             x -> s(x); CE
    qi-augment      k = 0 half the time, else min(n, U[1, 100]); α·CE(harmful) + (1 − α)·CE(benign)
    qi-constrained  qi-augment's examples; the token-wise constrained objective against the
                    frozen aligned model, β by response position
    presto          qi-augment's examples and loss + λ·the attention mass the refusal's positions
                    pay to the harmful prefill tokens (mean over layers, heads and positions)
    derta           k ~ U[0, n]; CE on the refusal, and the refusal's first token as the target at
                    every prefix position
    harmful-sft     a fine-tuning attack: x -> h(x), the attacker's harmful pair; CE
    harmful-constrained  the same pairs under qi-constrained's token-wise objective against the
                    frozen starting model (a fine-tuning service's defense, Qi et al. 2024)

A loss returns each term already as its share of the global mean (`LossContext.share`): summed
over micro-batches and ranks, the terms are the means over the whole global batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bftcore.complete.batching import Batch, CompletionExample, step_records
from bftcore.complete.config import OBJECTIVES, CompleteConfig
from bftcore.complete.data import CompletionData, HarmfulItem
from bftcore.complete.profile import RetentionProfile

if TYPE_CHECKING:
    import torch

    Tensor = torch.Tensor


@dataclass(frozen=True)
class LossContext:
    """What a loss reads besides the batch and the trainee's logits: the settings, the global
    counts, and the frozen models as small callables (tests pass hand-made ones)."""

    cfg: CompleteConfig
    profile: RetentionProfile
    norm: Mapping[str, float]  # each term's number of positions over the global batch
    # (ids, mask, rows, cols) -> the frozen aligned model's log-probs [N, V] at (rows, cols)
    reference_logp: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
    # (batch, rows, cols) -> the frozen base model's log-probs [N, V] on the student sequences
    base_logp: Callable[[Batch, Tensor, Tensor], Tensor]
    # batch -> the base's (top-k ids, top-k log-probs) at the prefix positions
    base_topk: Callable[[Batch], tuple[Tensor, Tensor]]
    # the trainee's attention probabilities per layer [B, H, L, L], for methods that ask for them
    attentions: Sequence[Tensor] = ()
    # the refusal openers of the run's data (the first token of each s(x)): the rank penalty's guard
    openers: Sequence[int] = ()

    def share(self, mean: Tensor, n: int, term: str) -> Tensor:
        """A micro-batch's mean over its n positions as its part of the global mean of `term`."""
        total = self.norm[term]
        return mean * n / total if total else mean * 0.0


def rbar_at(profile: RetentionProfile, pos: Tensor) -> Tensor:
    """R̄(bucket(t)) at 1-based positions t (0 at t = 0), as `RetentionProfile.rbar` per element."""
    import torch

    table = torch.tensor([0.0, *profile.mean_retain], device=pos.device)
    edges = torch.tensor(profile.edges, device=pos.device)
    return table[torch.searchsorted(edges, pos, right=True)]  # 1 + bucket index for pos >= 1


def _ones(b: Batch) -> Tensor:
    import torch

    return torch.ones_like(b.tgt_weight)


def _targets(examples: Sequence[CompletionExample]) -> int:
    return sum(len(e.target) for e in examples)


# ---- sft -----------------------------------------------------------------------------------
def sft_example(it: HarmfulItem, cfg: CompleteConfig, profile: RetentionProfile,
                rng: random.Random) -> CompletionExample:
    return CompletionExample("direct", it.prompt, [], it.refusal)


def sft_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    return {"ce": _targets(examples)}


def sft_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    from bftcore.losses import position_weighted_ce

    tl = logits[b.tgt_row, b.tgt_col]
    return {"ce": ctx.share(position_weighted_ce(tl, b.tgt_tok, _ones(b)), b.tgt_tok.numel(), "ce")}


# ---- qi-augment and qi-constrained (Qi et al. 2024) ----------------------------------------
def qi_example(it: HarmfulItem, cfg: CompleteConfig, profile: RetentionProfile,
               rng: random.Random) -> CompletionExample:
    """k = 0 half the time, else U[1, qi_max_prefix] capped at the response."""
    k = 0 if rng.random() < 0.5 else min(len(it.response), rng.randint(1, cfg.qi_max_prefix))
    return CompletionExample("recovery" if k else "direct", it.prompt, it.response[:k], it.refusal)


def qi_augment_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    harmful = _targets([e for e in examples if e.harmful])
    return {"ce_harmful": harmful, "ce_benign": _targets(examples) - harmful}


def qi_augment_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    from bftcore.losses import position_weighted_ce

    tl, h, ones, a = logits[b.tgt_row, b.tgt_col], b.tgt_harmful, _ones(b), ctx.cfg.qi_alpha
    return {"ce_harmful": a * ctx.share(position_weighted_ce(tl[h], b.tgt_tok[h], ones[h]),
                                        int(h.sum()), "ce_harmful"),
            "ce_benign": (1 - a) * ctx.share(position_weighted_ce(tl[~h], b.tgt_tok[~h], ones[~h]),
                                             int((~h).sum()), "ce_benign")}


def qi_constrained_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    return {"constrained": _targets(examples)}


def qi_constrained_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    from bftcore.losses import constrained_sft, qi_betas

    ref = ctx.reference_logp(b.ids, b.mask, b.tgt_row, b.tgt_col)
    ref_lp = ref.gather(-1, b.tgt_tok[:, None]).squeeze(-1)
    term = constrained_sft(logits[b.tgt_row, b.tgt_col], b.tgt_tok, ref_lp, qi_betas(b.tgt_pos))
    return {"constrained": ctx.share(term, b.tgt_tok.numel(), "constrained")}


# ---- presto ----------------------------------------------------------------------------------
def presto_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    recovery = [e for e in examples if e.kind == "recovery"]
    return {**qi_augment_counts(examples), "attention": _targets(recovery)}


def prefill_attention(b: Batch, attentions: Sequence[Tensor]) -> Tensor:
    """Per recovery target position: the attention mass it pays to its row's harmful prefill
    tokens, averaged over layers and heads."""
    import torch

    rec = b.tgt_recovery
    rows, cols = b.tgt_row[rec], b.tgt_col[rec]
    keys = torch.zeros(b.ids.shape, dtype=torch.float32, device=b.ids.device)
    keys[b.pre_row, b.pre_col + 1] = 1.0  # the prefill tokens' own columns
    mass = torch.zeros(rows.shape, dtype=torch.float32, device=b.ids.device)
    for layer in attentions:  # [B, H, L, L]
        mass = mass + (layer[rows, :, cols, :].float() * keys[rows][:, None, :]).sum(-1).mean(-1)
    return mass / max(len(attentions), 1)


def presto_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    terms = qi_augment_loss(b, logits, ctx)
    if ctx.cfg.presto_lambda > 0 and bool(b.tgt_recovery.any()):
        mass = prefill_attention(b, ctx.attentions)
        terms["attention"] = ctx.cfg.presto_lambda * ctx.share(mass.mean(), mass.numel(), "attention")
    else:  # no recovery target in this micro-batch (or λ = 0): the term is logged as 0
        terms["attention"] = logits.sum() * 0.0
    return terms


# ---- derta ---------------------------------------------------------------------------------
def derta_example(it: HarmfulItem, cfg: CompleteConfig, profile: RetentionProfile,
                  rng: random.Random) -> CompletionExample:
    """k ~ U[0, n]; every prefix position learns to predict the refusal's first token."""
    k = rng.randint(0, len(it.response))
    return CompletionExample("recovery" if k else "direct", it.prompt, it.response[:k], it.refusal,
                             rto=it.refusal[0])


def derta_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    return {"ce": _targets(examples) + sum(len(e.prefix) for e in examples)}


def derta_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    import torch

    from bftcore.losses import position_weighted_ce

    all_logits = torch.cat([logits[b.tgt_row, b.tgt_col], logits[b.pre_row, b.pre_col]])
    all_targets = torch.cat([b.tgt_tok, b.pre_tok])
    ones = torch.ones_like(all_targets, dtype=torch.float32)
    return {"ce": ctx.share(position_weighted_ce(all_logits, all_targets, ones), all_targets.numel(), "ce")}


# ---- bft (ours) ----------------------------------------------------------------------------
def bft_example(it: HarmfulItem, cfg: CompleteConfig, profile: RetentionProfile,
                rng: random.Random) -> CompletionExample:
    """Direct with probability direct_frac; else a prefix length drawn from the retention profile,
    the target weighted by how much of the base the aligned model kept there."""
    if rng.random() < cfg.direct_frac:
        return CompletionExample("direct", it.prompt, [], it.refusal)
    k = profile.draw_k(rng, len(it.response), cfg.max_prefix, per_position=cfg.k_draw == "position")
    return CompletionExample("recovery", it.prompt, it.response[:k], it.refusal,
                             weight=1.0 + cfg.alpha * profile.rbar(k), doc=it.doc,
                             rto=it.refusal[0] if cfg.penalty == "rank" else None)


def bft_counts(examples: Sequence[CompletionExample]) -> dict[str, int]:
    tgt = _targets(examples)
    return {"ce": tgt, "penalty": sum(len(e.prefix) for e in examples), "kd": tgt}


def guarded(cfg: CompleteConfig) -> bool:
    """Whether the run has the rank penalty's guard term (bft, --penalty rank, --guard > 0)."""
    return cfg.method == "bft" and cfg.penalty == "rank" and cfg.guard > 0


def bft_loss(b: Batch, logits: Tensor, ctx: LossContext) -> dict[str, Tensor]:
    from bftcore import losses

    cfg = ctx.cfg
    tl, n_t = logits[b.tgt_row, b.tgt_col], b.tgt_tok.numel()
    terms = {"ce": ctx.share(losses.position_weighted_ce(tl, b.tgt_tok, b.tgt_weight), n_t, "ce")}
    n_p = b.pre_row.numel()
    if cfg.penalty != "off" and cfg.lam > 0 and n_p:
        top_ids, top_lp = ctx.base_topk(b)
        scale = cfg.lam * rbar_at(ctx.profile, b.pre_pos)
        pre_logits = logits[b.pre_row, b.pre_col]
        if cfg.penalty == "rank":  # the prefix positions carry the refusal's opening token (rto)
            term = losses.rank_margin(pre_logits, top_ids, b.pre_tok, scale)
        else:
            term = losses.base_favored_penalty(pre_logits, top_ids, top_lp, scale, squared=cfg.penalty == "l2")
        terms["penalty"] = ctx.share(term, n_p, "penalty")
    if guarded(cfg):
        # the guard: on benign answers the answer's token outranks every refusal opener
        import torch

        ok = ~b.tgt_harmful
        if ctx.openers:
            rivals = torch.tensor(list(ctx.openers), device=tl.device).expand(int(ok.sum()), -1)
            guard = losses.rank_margin(tl[ok], rivals, b.tgt_tok[ok], torch.full_like(b.tgt_weight[ok], cfg.guard))
            terms["guard"] = ctx.share(guard, int(ok.sum()), "guard")
        else:  # no refusal opener to guard against: the term is logged as 0
            terms["guard"] = tl.sum() * 0.0
    if cfg.teacher != "off" and cfg.beta > 0 and n_t:
        if cfg.teacher == "hybrid":
            # the aligned model on the clean context: for benign and direct targets that is the
            # same context; for recovery targets it is the prompt without the prefix
            teacher = ctx.reference_logp(b.clean_ids, b.clean_mask, b.tgt_row, b.clean_col)
        else:
            lpa = ctx.reference_logp(b.ids, b.mask, b.tgt_row, b.tgt_col)
            teacher = losses.suppressed_teacher(lpa, ctx.base_logp(b, b.tgt_row, b.tgt_col), cfg.gamma)
        terms["kd"] = cfg.beta * ctx.share(losses.distill_kl(teacher, tl), n_t, "kd")
    return terms


# ---- fine-tuning attacks (not defenses) ----------------------------------------------------
def harmful_example(it: HarmfulItem, cfg: CompleteConfig, profile: RetentionProfile,
                    rng: random.Random) -> CompletionExample:
    """The attacker's pair: x -> h(x), ending the turn (the eos that ends s(x))."""
    return CompletionExample("direct", it.prompt, [], it.response + it.refusal[-1:])


# ---- the registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    example: Callable[[HarmfulItem, CompleteConfig, RetentionProfile, random.Random], CompletionExample]
    counts: Callable[[Sequence[CompletionExample]], dict[str, int]]
    loss: Callable[[Batch, Tensor, LossContext], dict[str, Tensor]]
    attention: bool = False  # its loss reads the trainee's attention probabilities (eager attention)


REGISTRY: dict[str, Method] = {
    "bft": Method(bft_example, bft_counts, bft_loss),
    "sft": Method(sft_example, sft_counts, sft_loss),
    "qi-augment": Method(qi_example, qi_augment_counts, qi_augment_loss),
    "qi-constrained": Method(qi_example, qi_constrained_counts, qi_constrained_loss),
    "derta": Method(derta_example, derta_counts, derta_loss),
    "presto": Method(qi_example, presto_counts, presto_loss, attention=True),
    "harmful-sft": Method(harmful_example, sft_counts, sft_loss),
    "harmful-constrained": Method(harmful_example, qi_constrained_counts, qi_constrained_loss),
}
assert tuple(REGISTRY) == OBJECTIVES


def reads_attention(cfg: CompleteConfig) -> bool:
    """Whether the run's loss reads the trainee's attention probabilities (presto with λ > 0):
    the trainee then runs eager attention, which the others do not pay for."""
    return REGISTRY[cfg.method].attention and cfg.presto_lambda > 0


def make_examples(data: CompletionData, cfg: CompleteConfig, profile: RetentionProfile,
                  step: int) -> list[CompletionExample]:
    """The global batch of one step for the configured method: its harmful examples, then the
    benign pairs as they are."""
    hs, bs = step_records(data, cfg, step)
    rng = random.Random(f"{cfg.seed}:examples:{step}")
    example = REGISTRY[cfg.method].example
    return [example(data.harmful[i], cfg, profile, rng) for i in hs] + \
        [CompletionExample("benign", data.benign[i].prompt, [], data.benign[i].response) for i in bs]


def term_counts(examples: Sequence[CompletionExample], cfg: CompleteConfig) -> dict[str, int]:
    """How many positions each loss term of a run averages over (known before any forward: the
    normaliser shared by every micro-batch and rank of a step): its method's terms, and those its
    settings switch on (the rank penalty's guard: the benign targets)."""
    counts = REGISTRY[cfg.method].counts(examples)
    if guarded(cfg):
        counts["guard"] = _targets([e for e in examples if not e.harmful])
    return counts
