"""Each loss term against a hand computation on tiny tensors (METHOD.md §2)."""

import math

import torch

from bftcore import losses


def _logits(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_position_weighted_ce_by_hand() -> None:
    logits = _logits([0.0, 0.0], [math.log(3.0), 0.0])  # p = (.5, .5) and (.75, .25)
    targets = torch.tensor([0, 1])
    weights = torch.tensor([1.0, 2.0])
    want = (1.0 * -math.log(0.5) + 2.0 * -math.log(0.25)) / 2  # normalised by positions, not by Σw
    assert abs(float(losses.position_weighted_ce(logits, targets, weights)) - want) < 1e-6


def test_retention_and_penalty_by_hand() -> None:
    logits = _logits([math.log(0.5), math.log(0.3), math.log(0.2)])  # π_θ = (.5, .3, .2)
    top = torch.tensor([[1, 0]])  # the base's top-2: token 1 (p .6), token 0 (p .1)
    top_lp = torch.log(torch.tensor([[0.6, 0.1]]))
    r = 0.3 + 0.1  # min(.3, .6) + min(.5, .1)
    assert abs(float(losses.retention(logits, top, top_lp)[0]) - r) < 1e-6
    scale = torch.tensor([0.9])  # λ · R̄(bucket)
    assert abs(float(losses.base_favored_penalty(logits, top, top_lp, scale)) - 0.9 * r) < 1e-6
    assert abs(float(losses.base_favored_penalty(logits, top, top_lp, scale, squared=True)) - 0.9 * r * r) < 1e-6


def test_penalty_fades_as_the_model_lets_go() -> None:
    """The gradient on the logits shrinks as the trainee's mass on the base's tokens vanishes."""
    top = torch.tensor([[0]])
    top_lp = torch.log(torch.tensor([[0.9]]))
    grads = []
    for held in (0.5, 0.05, 0.001):
        logits = torch.log(torch.tensor([[held, 1 - held]])).requires_grad_(True)
        losses.base_favored_penalty(logits, top, top_lp, torch.ones(1)).backward()
        grads.append(float(logits.grad.abs().sum()))
    assert grads[0] > grads[1] > grads[2] and grads[2] < 0.01


def test_distill_kl_by_hand() -> None:
    teacher = torch.log(torch.tensor([[0.5, 0.5]]))
    logits = _logits([math.log(0.25), math.log(0.75)])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert abs(float(losses.distill_kl(teacher, logits)) - want) < 1e-6
    assert abs(float(losses.distill_kl(teacher, teacher.clone()))) < 1e-7


def test_suppressed_teacher_by_hand() -> None:
    lpa = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    lpb = torch.log(torch.tensor([[0.25, 0.5, 0.25]]))  # the base favours token 1 by log 2
    got = losses.suppressed_teacher(lpa, lpb, gamma=2.0).exp()[0]
    raw = torch.tensor([0.5, 0.25 * math.exp(-2 * math.log(2.0)), 0.25])
    assert torch.allclose(got, raw / raw.sum(), atol=1e-6)
    # where the two agree, the teacher is the aligned model itself
    assert torch.allclose(losses.suppressed_teacher(lpa, lpa, 2.0), lpa, atol=1e-6)


def test_constrained_sft_by_hand() -> None:
    logits = _logits([0.0, 0.0])  # log π_θ(y) = log .5
    ref_lp = torch.tensor([math.log(0.25)])  # Δ = log 2
    beta = 2.0
    want = (2 / beta) * -math.log(1 / (1 + math.exp(-beta * math.log(2.0))))
    got = losses.constrained_sft(logits, torch.tensor([0]), ref_lp, torch.tensor([beta]))
    assert abs(float(got) - want) < 1e-6


def test_qi_betas() -> None:
    b = losses.qi_betas(torch.tensor([1, 2, 5, 6, 100]))
    assert torch.allclose(b, torch.tensor([0.5, 2.0, 2.0, 0.1, 0.1]))


def test_empty_terms_are_zero_with_a_graph() -> None:
    logits = torch.zeros((0, 4), requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    assert float(losses.position_weighted_ce(logits, empty, torch.zeros(0))) == 0.0
    assert float(losses.base_favored_penalty(logits, torch.zeros((0, 2), dtype=torch.long),
                                             torch.zeros((0, 2)), torch.zeros(0))) == 0.0
