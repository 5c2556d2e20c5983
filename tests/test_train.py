"""The training loop's parts against hand computations, and determinism."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bftcore.models import new_model, toy_config
from bftcore.train import Example, TrainConfig, collate, lr_at, train, weighted_ce


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
    batch = collate([Example.prompt_target([5, 6], [7]), Example.prompt_target([1], [2, 3, 4])], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [1, 2, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["weights"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1]]


def _tiny(seed: int):  # type: ignore[no-untyped-def]
    cfg = toy_config("llama", vocab_size=16, hidden=32, layers=1, intermediate=64, heads=2,
                     kv_heads=1, max_positions=32, bos_id=1, eos_id=2, pad_id=0)
    return new_model(cfg, seed)


def _data() -> list[Example]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(64):
        a = torch.randint(3, 16, (1,), generator=g).item()
        out.append(Example.prompt_target([1, int(a)], [int(a), int(a), 2]))  # copy the token
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
