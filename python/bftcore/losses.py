"""The loss terms of targeted completion training and of its baselines (docs/method.md §2).

Each function takes the rows that matter already gathered: `logits` is [N, V] at the N positions
that carry a term (a position predicts the token after it), never a whole padded batch. Each
returns a scalar mean over those N rows, so terms of different sizes combine with plain weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def position_weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """L_ce = (1/N) Σ_i w_i · (−log p_θ(y_i | ctx_i)).

    Normalised by the number of positions, not by Σ w: a recovery target with weight
    w(k) = 1 + α·R̄(bucket(k)) gets w(k) times the gradient of a plain target.
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    return (weights * nll).sum() / targets.numel()


def retention(logits: torch.Tensor, base_topk: torch.Tensor, base_topk_lp: torch.Tensor) -> torch.Tensor:
    """R_m = Σ_{v ∈ topk(π_b)} min(π_θ(v), π_b(v)) per row: the share of the base's preferred
    continuation the model keeps ([M, V] logits, [M, k] base top-k ids and log-probs -> [M])."""
    p = torch.softmax(logits.float(), dim=-1).gather(-1, base_topk)
    return torch.minimum(p, base_topk_lp.float().exp()).sum(-1)


def base_favored_penalty(logits: torch.Tensor, base_topk: torch.Tensor, base_topk_lp: torch.Tensor,
                         scale: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
    """L_pen = (1/M) Σ_m s_m · R_m  (linear) or (1/M) Σ_m s_m · R_m²  (L2).

    s_m = λ · R̄(bucket(t_m)): the index's mean retention where the aligned model kept most of the
    base. The term fades by itself: as the model lets go of the base's continuation, R_m -> 0 and
    so does its gradient (faster for L2, whose gradient is proportional to R_m).
    """
    if scale.numel() == 0:
        return logits.sum() * 0.0
    r = retention(logits, base_topk, base_topk_lp)
    return (scale * (r * r if squared else r)).sum() / scale.numel()


def rank_margin(logits: torch.Tensor, rivals: torch.Tensor, winner: torch.Tensor,
                scale: torch.Tensor) -> torch.Tensor:
    """L = (1/M) Σ_m s_m · softplus(log Σ_{v ∈ rivals_m, v ≠ w_m} π_θ(v) − log π_θ(w_m)).

    The rank form of the penalty (after the rank-assisted prefill of arXiv 2512.05518, which
    takes the best-ranked token that does not open a refusal): at each row the winner must
    outrank its rivals taken together. After a harmful prefix the winner is the refusal's opening
    token and the rivals the base's favoured continuation; on a benign answer (the guard) the
    winner is the answer's token and the rivals the refusal openers. It fades by itself once the
    winner leads (the softplus's slope is the rivals' share of the two), so it stops pulling the
    model anywhere the ranks already match. [M, V] logits, [M, k] rivals, [M] winner and scale.
    """
    if scale.numel() == 0:
        return logits.sum() * 0.0
    logp = torch.log_softmax(logits.float(), dim=-1)
    rival = logp.gather(-1, rivals).masked_fill(rivals == winner[:, None], float("-inf"))
    win = logp.gather(-1, winner[:, None]).squeeze(-1)
    return (scale * F.softplus(rival.logsumexp(-1) - win)).sum() / scale.numel()


def distill_kl(teacher_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """L_kd = (1/N) Σ_i KL(p^T_i || π_θ(·|ctx_i)) = (1/N) Σ_i Σ_v p^T_i(v) (log p^T_i(v) − log π_θ(v))."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logq = torch.log_softmax(logits.float(), dim=-1)
    tl = teacher_logp.float()
    return (tl.exp() * (tl - logq)).sum() / logits.shape[0]


def suppressed_teacher(logp_aligned: torch.Tensor, logp_base: torch.Tensor, gamma: float) -> torch.Tensor:
    """log p^T ∝ log π_a(v) − γ·[log π_b(v) − log π_a(v)]_+ (renormalised): the aligned
    distribution with the tokens the base favours pushed down (the ablation teacher)."""
    lpa = logp_aligned.float()
    return torch.log_softmax(lpa - gamma * (logp_base.float() - lpa).clamp_min(0.0), dim=-1)


def constrained_sft(logits: torch.Tensor, targets: torch.Tensor, ref_lp: torch.Tensor,
                    betas: torch.Tensor) -> torch.Tensor:
    """Qi et al. (2024) token-wise constrained objective:
    L = (1/N) Σ_i (2/β_i) · −log σ(β_i · (log π_θ(y_i) − log π_ref(y_i))).

    Its gradient on log π_θ(y_i) is 2·σ(−β_i·Δ_i): cross-entropy-like while the model stays near
    the reference, vanishing once it has moved ~1/β_i nats away, so a large β_t pins position t.
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0
    lp = -F.cross_entropy(logits.float(), targets, reduction="none")
    delta = lp - ref_lp.float()
    return (-(2.0 / betas) * F.logsigmoid(betas * delta)).sum() / targets.numel()


def qi_betas(positions: torch.Tensor, first: float = 0.5, early: float = 2.0, late: float = 0.1) -> torch.Tensor:
    """β_t by response position t (1-based): β_1 = 0.5, β_2..5 = 2, β_>5 = 0.1 (Qi et al. 2024)."""
    return torch.where(positions <= 1, first, torch.where(positions <= 5, early, late)).float()
