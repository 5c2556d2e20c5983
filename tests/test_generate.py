"""The torch generator: batched greedy decoding equals one prompt at a time."""

from __future__ import annotations

from bftcore.chat import response_ids
from bftcore.generate import Decoding, TorchGenerator
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


def test_sampling_is_reproducible_with_a_seed(toy) -> None:  # type: ignore[no-untyped-def]
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    gen = TorchGenerator(load_model(toy.model_dir("llama", "base"), device="cpu"), tok)
    inputs = [gen.prompt_ids(e.prompt) for e in toy.world.examples("benign", "heldout")[:8]]
    d = Decoding(max_new_tokens=40, temperature=0.9, top_p=0.6, seed=11)
    assert gen.generate(inputs, d) == gen.generate(inputs, d)
