"""Any-Depth Alignment (inference-time): the assistant header re-inserted mid-answer, the answer
ended where the model then refuses; otherwise the plain decoding, token for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bftcore.anydepth import AnyDepthConfig, AnyDepthGenerator, assistant_header
from bftcore.attack import REFUSAL_OPENINGS
from bftcore.chat import response_ids
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.generate import Decoding, TorchGenerator
from bftcore.judge import refusal_opening
from bftcore.models import load_model, load_tokenizer
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from conftest import family_pair, run_cli


def test_the_header_is_the_templates_generation_prompt(toy) -> None:  # type: ignore[no-untyped-def]
    toy_tok = load_tokenizer(toy.tokenizer_dir("llama"))
    assert toy_tok.decode(assistant_header(toy_tok)) == "<|assistant|>"
    qwen = load_tokenizer(family_pair("qwen2.5")[1])
    assert qwen.decode(assistant_header(qwen)) == "<|im_start|>assistant\n"
    qwen3 = load_tokenizer(family_pair("qwen3")[1])
    assert qwen3.decode(assistant_header(qwen3)) == "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert qwen3.decode(assistant_header(qwen3, thinking=True)) == "<|im_start|>assistant\n"


def test_reassessment_ends_some_answers_and_leaves_the_rest_as_greedy(toy) -> None:  # type: ignore[no-untyped-def]
    """The aligned toy model, 5 harmful tokens prefilled: with a header every 8 tokens some
    answers end in header + refusal, each after exactly the greedy answer's first tokens; the
    others are the greedy answer itself."""
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    gen = TorchGenerator(load_model(toy.model_dir("llama", "aligned")), tok)
    records = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][:16]
    inputs = [gen.prompt_ids(r.prompt) + response_ids(tok, r.response or "", eos=False)[:5] for r in records]
    refuses = refusal_opening([*REFUSAL_OPENINGS, *REFUSALS, *RECOVERY_REFUSALS])
    ada = AnyDepthGenerator(gen, refuses, AnyDepthConfig(every=8, peek=8))
    d = Decoding(48)
    plain, guarded = gen.generate(inputs, d), ada.generate(inputs, d)
    header = assistant_header(tok)
    ended = 0
    for p, g in zip(plain, guarded):
        if g == p:
            continue
        at = next(i for i in range(len(g)) if g[i:i + len(header)] == header)
        assert at % 8 == 0 and g[:at] == p[:at]  # the greedy answer, cut where a header went in
        assert refuses(tok.decode(g[at + len(header):], skip_special_tokens=True))
        ended += 1
    assert ended == ada.reassessed > 0 and ended < len(records)


def test_the_cli_option_and_a_model_without_a_template(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, data = str(toy.model_dir("llama", "aligned")), str(toy.data_dir / "harmful_heldout.jsonl")
    r = run_cli("attack", model, "--attack", "prefill", "--k", "5", "--data", data, "--judge", "exact",
                "--limit", "6", "--max-new-tokens", "24", "--ada-every", "8", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    (m,) = [m for m in json.loads(r.stdout)["measures"] if m["metric"] == "ada-reassessed"]
    assert 0 <= m["value"] <= 6
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    tok.chat_template = None
    with pytest.raises(BadInput, match="no template"):
        assistant_header(tok)
