"""Qwen3's thinking switch: prompts render with thinking off unless --thinking, templates without
the switch render as ever, and `thinking_default` sets the default an exported template carries.

The flag through the CLI: tests/test_precision.py (score's manifest, complete's run card, and an
attack on a tiny Qwen3 with --thinking)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from bftcore import complete as cp
from bftcore.attack import AttackConfig, Suite
from bftcore.chat import prompt_ids, thinking_default
from bftcore.corpus import Record
from bftcore.judge import KeywordJudge
from bftcore.models import load_tokenizer
from bftcore.score import ScoreConfig, ScoreSummary, _prepare
from conftest import family_pair, run_cli

THINK = "<think>\n\n</think>\n\n"  # Qwen3's rendering of enable_thinking=False
ASSISTANT = "<|im_start|>assistant\n"
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How are you?"}]
WITHOUT_SWITCH = ("llama-3.1", "qwen2.5", "llama-2")


@functools.cache
def _tokenizer(family: str) -> Any:
    return load_tokenizer(family_pair(family)[1])


def _records(n: int = 3) -> list[Record]:
    return [Record(f"r{i}", f"Question {i}?", f"Sure, answer {i}.", "harmful", f"test:{i}") for i in range(n)]


class Recorder:
    """A generator that records every input it is asked to continue and answers nothing."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.inputs: list[list[int]] = []

    def prompt_ids(self, prompt: Any, *, chat: bool = True, thinking: bool = False) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat, thinking=thinking)

    def generate(self, inputs: Any, decoding: Any, seeds: Any = None, on_batch: Any = None) -> list[list[int]]:
        self.inputs += [list(x) for x in inputs]
        return [[] for _ in inputs]


def test_qwen3_prompts_close_the_thinking_block_unless_thinking_is_on() -> None:
    tok = _tokenizer("qwen3")
    for prompt in ("Hi", CHAT):
        off = tok.decode(prompt_ids(tok, prompt))
        on = tok.decode(prompt_ids(tok, prompt, thinking=True))
        assert off.endswith(ASSISTANT + THINK)
        assert on.endswith(ASSISTANT) and THINK not in on
        assert off == on + THINK  # the block is all that differs


@pytest.mark.parametrize("family", WITHOUT_SWITCH)
def test_templates_without_the_switch_render_as_they_always_did(family: str) -> None:
    tok = _tokenizer(family)
    assert "enable_thinking" not in tok.chat_template
    for prompt in ("Hi", CHAT):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        before = list(tok(text, add_special_tokens=False)["input_ids"])  # the rendering before the switch
        assert prompt_ids(tok, prompt) == prompt_ids(tok, prompt, thinking=True) == before


def test_the_toy_worlds_templates_have_no_switch(toy) -> None:  # type: ignore[no-untyped-def]
    """So every cached toy stage (keyed by settings and rendered token ids) keeps its key."""
    for arch in ("llama", "qwen2"):
        tok = load_tokenizer(toy.tokenizer_dir(arch))
        assert "enable_thinking" not in tok.chat_template
        assert prompt_ids(tok, CHAT) == prompt_ids(tok, CHAT, thinking=True)


def _render(template: str, **kw: Any) -> str:
    rendered: Any = render_jinja_template([[{"role": "user", "content": "Hi"}]], chat_template=template,
                                          add_generation_prompt=True, **kw)
    return str(rendered[0][0])


def test_thinking_default_is_what_a_runtime_without_the_variable_renders() -> None:
    qwen3 = _tokenizer("qwen3").chat_template
    assert _render(qwen3).endswith(ASSISTANT)  # Qwen3's own default: thinking on
    off = thinking_default(qwen3, False)
    assert _render(off).endswith(ASSISTANT + THINK)
    assert _render(off, enable_thinking=True) == _render(qwen3)  # a caller's value still wins
    assert _render(thinking_default(qwen3, True)) == _render(qwen3)
    for family in WITHOUT_SWITCH:
        template = _tokenizer(family).chat_template
        assert thinking_default(template, False) == template


@pytest.mark.parametrize("thinking", [False, True])
def test_every_stage_renders_with_the_configured_thinking(thinking: bool) -> None:
    """Attacks (AttackConfig), scoring (ScoreConfig) and completion data (build_data) pass the
    setting down to the chat template."""
    tok = _tokenizer("qwen3")
    records = _records()
    gen = Recorder(tok)
    suite = Suite(gen, KeywordJudge(), AttackConfig(ks=(2,), max_new_tokens=2, samples=2, thinking=thinking))
    for attack in ("direct", "prefill", "prefill-sampled", "decoding-exploit"):
        suite.run(attack, records)
    docs = _prepare(list(enumerate(records)), tok, None, ScoreConfig(thinking=thinking), 4096,
                    ScoreSummary("", 0, 0, 0, 0, 0, 0, 0, 0, 0))
    data = cp.build_data(records, [Record("b", "Hello?", "Hello.", "benign", "test:b")], Recorder(tok),
                         refuses=lambda text: False, thinking=thinking)
    # direct, prefill k=2, 2 samples, the 12 decoding configurations; then scoring and training
    assert len(gen.inputs) == len(records) * (1 + 1 + 2 + 12) and len(docs) == len(data.harmful) == len(records)
    prompts = [*gen.inputs, *(d.prompt for d in docs), *(h.prompt for h in data.harmful),
               *(b.prompt for b in data.benign)]
    assert all((THINK in tok.decode(p)) is not thinking for p in prompts)


def test_harden_builds_its_data_with_the_configured_thinking(toy, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    def build_data(*args: Any, **kw: Any) -> None:
        seen.update(kw)
        raise RuntimeError("stop: the data builder was reached")

    monkeypatch.setattr("bftcore.complete.job.build_data", build_data)
    inputs = cp.HardenInputs(aligned=toy.model_dir("llama", "aligned"), data=(toy.data_dir / "harmful_heldout.jsonl",),
                             benign=(toy.data_dir / "benign_heldout.jsonl",), out=tmp_path / "m", device="cpu")
    with pytest.raises(RuntimeError, match="stop"):
        cp.harden(inputs, cp.CompleteConfig(method="sft", thinking=True))
    assert seen["thinking"] is True


def test_export_writes_the_thinking_default_it_is_given(tmp_path: Path) -> None:
    """`bftcore export --to gguf` writes Qwen3's template with thinking off, `--thinking` on; the
    flag on an ONNX export is refused in one line (that directory keeps the source's template)."""
    from bftcore.export import gguf_header

    source = family_pair("qwen3")[1]
    rendered = {}
    for flag in ((), ("--thinking",)):
        out = tmp_path / f"q{len(flag)}.gguf"
        r = run_cli("export", str(source), "--to", "gguf", "--dtype", "f16", "--out", str(out), *flag)
        assert r.returncode == 0, r.stderr
        rendered[bool(flag)] = _render(str(gguf_header(out).values["tokenizer.chat_template"]))
    assert rendered[False].endswith(ASSISTANT + THINK) and rendered[True].endswith(ASSISTANT)
    r = run_cli("export", str(source), "--to", "onnx", "--out", str(tmp_path / "onnx"), "--thinking")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--thinking" in r.stderr
    assert not (tmp_path / "onnx").exists()
