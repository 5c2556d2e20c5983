"""The training loop's parts against hand computations, and determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bftcore.toy.models import new_model, toy_config
from bftcore.train import TrainConfig, TrainingSequence, collate, lr_at, train, weighted_ce


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    total = 100
    assert lr_at(0, total, cfg) == pytest.approx(0.1)
    assert lr_at(9, total, cfg) == pytest.approx(1.0)
    assert lr_at(10, total, cfg) == pytest.approx(1.0)
    assert lr_at(total, total, cfg) == pytest.approx(0.1)
    mid = 10 + 45
    assert lr_at(mid, total, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    values = [lr_at(s, total, cfg) for s in range(10, total)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_weighted_ce_by_hand() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]])
    ids = torch.tensor([[0, 1, 2]])
    weights = torch.tensor([[0.0, 1.0, 3.0]])
    # position 0 predicts ids[1]=1 with weight 1; position 1 predicts ids[2]=2 with weight 3
    nll1 = -math.log(math.exp(0) / (math.exp(2) + 2))
    nll2 = -math.log(1 / (math.exp(1) + 2))
    want = (1 * nll1 + 3 * nll2) / 4
    assert weighted_ce(logits, ids, weights).item() == pytest.approx(want, rel=1e-6)


def test_collate_pads_right_and_masks() -> None:
    batch = collate([TrainingSequence.prompt_target([5, 6], [7]), TrainingSequence.prompt_target([1], [2, 3, 4])], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["weights"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]


def _tiny(seed: int):  # type: ignore[no-untyped-def]
    cfg = toy_config("llama", vocab_size=16, hidden=32, layers=1, intermediate=64, heads=2,
                     kv_heads=1, max_positions=32, bos_id=1, eos_id=2, pad_id=0)
    return new_model(cfg, seed)


def _data() -> list[TrainingSequence]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(64):
        a = torch.randint(3, 16, (1,), generator=g).item()
        out.append(TrainingSequence.prompt_target([1, int(a)], [int(a), int(a), 2]))  # copy the token
    return out


def test_training_learns_and_is_deterministic() -> None:
    cfg = TrainConfig(epochs=6, lr=1e-2, batch_size=8, seed=3)
    m1, m2 = _tiny(0), _tiny(0)
    losses = train(m1, _data(), cfg, pad_id=0)
    train(m2, _data(), cfg, pad_id=0)
    assert len(losses) == 6 * (64 // 8)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    for (n, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), n


def test_gradient_accumulation_covers_the_same_examples() -> None:
    m = _tiny(0)
    seen: list[int] = []
    losses = train(m, _data(), TrainConfig(epochs=1, batch_size=4, grad_accum=2), pad_id=0,
                   on_step=lambda i, n, loss: seen.append(n))
    assert len(losses) == 8 and seen[-1] == 8


def test_gradient_accumulation_equals_one_big_batch() -> None:
    """grad_accum=2 micro-batches of 4 take the same 8 examples per step as one batch of 8 (one
    shuffled order), each weighing 1/2: with equal target tokens per micro-batch (as here) that is
    the big batch's mean, so the gradients, losses and weights match."""
    runs = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = _tiny(0)
        grads: dict[str, torch.Tensor] = {}  # the accumulated gradient of the last step, before clipping
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(
                lambda p, name=name, grads=grads: grads.__setitem__(name, p.grad.detach().clone()))  # type: ignore[union-attr]
        cfg = TrainConfig(epochs=2 / 8, lr=1e-3, batch_size=batch_size, grad_accum=accum, seed=1)
        losses = train(model, _data(), cfg, pad_id=0)
        runs.append((losses, grads, model.state_dict()))
    (l1, g1, w1), (l2, g2, w2) = runs
    assert len(l1) == len(l2) == 2 and l1 == pytest.approx(l2, rel=1e-5)
    assert g1.keys() == g2.keys() and all(torch.allclose(g1[n], g2[n], rtol=1e-4, atol=1e-7) for n in g1)
    assert all(torch.allclose(w1[n], w2[n], rtol=0, atol=5e-5) for n in w1)
    assert not all(torch.equal(w1[n], _tiny(0).state_dict()[n]) for n in w1)  # it trained
