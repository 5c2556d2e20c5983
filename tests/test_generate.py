"""The torch generator: batched greedy decoding equals one prompt at a time; the sampling filters
and contrastive decoding against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bftcore.chat import response_ids
from bftcore.generate import Decoding, TorchGenerator, contrast_logprobs, filter_logits, guided
from bftcore.models import load_model, load_tokenizer


def test_batched_equals_unbatched(toy) -> None:  # type: ignore[no-untyped-def]
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    model = load_model(toy.model_dir("llama", "aligned"))
    examples = toy.world.examples("harmful", "heldout")[:12]
    # prompts with prefills of different lengths, so that rows are padded differently
    inputs = [TorchGenerator(model, tok).prompt_ids(e.prompt)
              + response_ids(tok, e.response, eos=False)[: (3 * i) % 17]
              for i, e in enumerate(examples)]
    d = Decoding(max_new_tokens=60)
    batched = TorchGenerator(model, tok, batch_size=12).generate(inputs, d)
    single = TorchGenerator(model, tok, batch_size=1).generate(inputs, d)
    assert batched == single
    assert all(len(x) > 0 for x in batched)
    assert all(tok.eos_token_id not in x for x in batched)


class _StepWise:
    """The same generator seen through `next_logprobs` only (as a llama.cpp or server backend is)."""

    def __init__(self, gen: TorchGenerator) -> None:
        self.eos_ids, self.next_logprobs = gen.eos_ids, gen.next_logprobs


def test_guided_kv_cached_equals_step_wise_and_follows_the_chooser(toy) -> None:  # type: ignore[no-untyped-def]
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    gen = TorchGenerator(load_model(toy.model_dir("llama", "aligned")), tok, batch_size=5)
    examples = toy.world.examples("harmful", "heldout")[:9]
    inputs = [gen.prompt_ids(e.prompt) + response_ids(tok, e.response, eos=False)[: (2 * i) % 7]
              for i, e in enumerate(examples)]
    stop = set(gen.eos_ids)

    def second_best_by_turns(step: int, rows: list[int], lp: np.ndarray) -> list[int]:
        """The second-best token when step + input index is even (so the rows' indices matter)."""
        order = np.argsort(-lp, axis=1, kind="stable")
        return [int(o[1] if (step + i) % 2 == 0 else o[0]) for i, o in zip(rows, order)]

    cached = guided(gen, inputs, second_best_by_turns, 24, stop)
    stepwise = guided(_StepWise(gen), inputs, second_best_by_turns, 24, stop)
    assert cached == stepwise
    # the chooser steers: greedy decoding gives other continuations
    assert cached != gen.generate(inputs, Decoding(max_new_tokens=24))
    assert all(len(x) > 0 and not set(x) & stop for x in cached)


def test_sampling_is_reproducible_with_a_seed(toy) -> None:  # type: ignore[no-untyped-def]
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    gen = TorchGenerator(load_model(toy.model_dir("llama", "base"), device="cpu"), tok)
    inputs = [gen.prompt_ids(e.prompt) for e in toy.world.examples("benign", "heldout")[:8]]
    d = Decoding(max_new_tokens=40, temperature=0.9, top_p=0.6, seed=11)
    assert gen.generate(inputs, d) == gen.generate(inputs, d)


def _kept_by_hand(row: list[float], top_k: int, top_p: float) -> set[int]:
    """The tokens sampling may draw, written out independently: the top-k by logit (ties at the
    k-th value kept), then, in descending probability, tokens up to and including the one whose
    cumulative mass first reaches top_p."""
    order = sorted(range(len(row)), key=lambda i: -row[i])
    kept = set(order) if not top_k or top_k >= len(row) else {i for i in order if row[i] >= row[order[top_k - 1]]}
    if top_p >= 1.0:
        return kept
    z = max(row[i] for i in kept)
    mass = {i: math.exp(row[i] - z) for i in kept}
    total = sum(mass.values())
    out, cum = set(), 0.0
    for i in sorted(kept, key=lambda i: -row[i]):
        out.add(i)
        cum += mass[i] / total
        if cum >= top_p:
            break
    return out


def test_filter_logits_keeps_exactly_the_top_k_and_the_nucleus() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=gen, dtype=torch.float64) * 3
    logits[0, :5] = 4.0  # ties at the top
    for top_k, top_p in ((0, 1.0), (1, 1.0), (7, 1.0), (0, 0.6), (0, 0.9), (10, 0.5), (3, 0.99), (50, 0.3)):
        out = filter_logits(logits, top_k, top_p)
        for r in range(logits.shape[0]):
            kept = {i for i in range(50) if out[r, i] != float("-inf")}
            assert kept == _kept_by_hand(logits[r].tolist(), top_k, top_p), (top_k, top_p, r)
            assert torch.equal(out[r][list(kept)], logits[r][list(kept)])  # kept logits unchanged


def test_contrast_logprobs_subtract_the_base_excess_on_the_base_top_k() -> None:
    gen = torch.Generator().manual_seed(1)
    lpa = torch.log_softmax(torch.randn(4, 30, generator=gen, dtype=torch.float64), -1)
    lpb = torch.log_softmax(torch.randn(4, 30, generator=gen, dtype=torch.float64), -1)
    out = contrast_logprobs(lpa, lpb, 2.0, 5)
    for r in range(4):
        top = sorted(range(30), key=lambda i: -float(lpb[r, i]))[:5]
        want = [float(lpa[r, i]) - (2.0 * max(0.0, float(lpb[r, i] - lpa[r, i])) if i in top else 0.0)
                for i in range(30)]
        norm = math.log(sum(math.exp(w) for w in want))
        assert out[r].tolist() == pytest.approx([w - norm for w in want], abs=1e-12)
