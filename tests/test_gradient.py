"""The safety gradient per response position: the closed form and the per-position backward pass
against autograd done here by hand; the command on the toy world; the report's section."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import Record
from bftcore.errors import BadInput
from bftcore.gradient import GradientConfig, safety_gradient
from bftcore.models import load_model, load_tokenizer
from conftest import run_cli


def _refusal_records(toy, n: int) -> list[Record]:  # type: ignore[no-untyped-def]
    w = toy.world
    return [Record(f"r{i}", w.prompt(t, 0), w.refusal(t, i), "refusal", "test")
            for i, t in enumerate(w.select("harmful", "train")[:n])]


def test_gradient_matches_autograd_by_hand(toy) -> None:  # type: ignore[no-untyped-def]
    model = load_model(toy.model_dir("llama", "aligned"))
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    records = _refusal_records(toy, 3)
    cfg = GradientConfig(max_positions=12, param_positions=12, layer=0, batch_size=3)
    prof = safety_gradient(model, tok, records, cfg)
    # by hand: one sequence at a time, the loss of token t backpropagated to the logits
    logit_norms: list[list[float]] = [[] for _ in range(12)]
    per_record = []
    for r in records:
        p, y = prompt_ids(tok, r.prompt), response_ids(tok, r.response or "")[:12]
        logits = model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1:len(p) - 1 + len(y)]
        per_record.append((logits, y))
        for t in range(len(y)):
            leaf = logits[t].detach().requires_grad_(True)
            torch.nn.functional.cross_entropy(leaf[None], torch.tensor([y[t]])).backward()
            assert leaf.grad is not None
            logit_norms[t].append(float(leaf.grad.norm()))
    for t, norms in enumerate(logit_norms):
        assert prof.per_position["logit_grad"][t] == pytest.approx(sum(norms) / len(norms), rel=1e-4, abs=1e-6)
    # the parameter gradient: the mean loss of position t over the batch, block 0's .grad after backward
    block = model.model.layers[0]
    for t in (0, 5, 11):
        model.zero_grad()
        losses = [torch.nn.functional.cross_entropy(lg[t][None], torch.tensor([y[t]]))
                  for lg, y in per_record if len(y) > t]
        torch.stack(losses).mean().backward(retain_graph=True)
        want = math.sqrt(sum(float((q.grad ** 2).sum()) for q in block.parameters() if q.grad is not None))
        assert prof.per_position["param_grad"][t] == pytest.approx(want, rel=1e-3), t
    # per bucket: the logit figure is the mean over the bucket's positions
    assert prof.buckets[:4] == ["1", "2", "3-4", "5-8"]
    assert prof.positions[2] == len(logit_norms[2]) + len(logit_norms[3])


def test_prefix_tokens_take_the_loss_after_the_prefix_only(toy) -> None:  # type: ignore[no-untyped-def]
    """A recovery after a harmful prefix: the prefix's tokens are context; position 1 is the first
    token after them, and a response no longer than the prefix is left out."""
    model = load_model(toy.model_dir("llama", "aligned"))
    tok = load_tokenizer(toy.tokenizer_dir("llama"))
    w, K = toy.world, 7
    tasks = w.select("harmful", "train")[:3]
    records = [Record(f"r{i}", w.prompt(t, 0), w.answer(t) + w.recovery(t, 0, inline=True), "harmful", "test")
               for i, t in enumerate(tasks)]
    records.append(Record("short", w.prompt(tasks[0], 1), w.refusal(tasks[0], 1)[:4], "harmful", "test"))
    prof = safety_gradient(model, tok, records, GradientConfig(max_positions=5, param_positions=0, prefix_tokens=K))
    assert prof.records == 3 and prof.prefix_tokens == K
    for t in range(5):
        norms = []
        for r in records[:3]:
            p, y = prompt_ids(tok, r.prompt), response_ids(tok, r.response or "")
            logits = model(input_ids=torch.tensor([p + y])).logits[0, len(p) - 1 + K + t].detach()
            norms.append(float((logits.softmax(-1) - torch.nn.functional.one_hot(torch.tensor(y[K + t]),
                                                                                  logits.shape[-1])).norm()))
        assert prof.per_position["logit_grad"][t] == pytest.approx(sum(norms) / 3, rel=1e-4, abs=1e-6), t
    with pytest.raises(BadInput, match="--prefix-tokens 9999"):
        safety_gradient(model, tok, records, GradientConfig(prefix_tokens=9999))


def test_gradient_command_on_the_toy_world(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Safety SFT on refusals sends its gradient to the first positions of the aligned model (which
    already refuses: later refusal tokens follow) and everywhere on the base model; bad input in
    one line."""
    data = tmp_path / "refusals.jsonl"
    data.write_text("".join(json.dumps({"prompt": r.prompt, "response": r.response}) + "\n"
                            for r in _refusal_records(toy, 24)))
    profiles = {}
    for role in ("base", "aligned"):
        out = tmp_path / role / "gradient.json"
        r = run_cli("gradient", str(toy.model_dir("llama", role)), "--data", str(data), "--max-positions", "24",
                    "--param-positions", "8", "--out", str(out), "--json")
        assert r.returncode == 0, r.stderr
        profiles[role] = json.loads(out.read_text())
        assert profiles[role] == json.loads(r.stdout)
    aligned, base = profiles["aligned"]["logit_grad"], profiles["base"]["logit_grad"]
    assert min(aligned[:2]) > 5 * max(aligned[3:]), aligned  # buckets 1, 2 against 5-8 and later
    assert max(base) < 2 * min(base), base  # no decay: the base model never learned to refuse
    r = run_cli("report", str(tmp_path), "--out", str(tmp_path / "report.html"))
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "report.html").read_text()
    assert 'id="gradient"' in page and "2 gradient profiles" in page
    no_response = tmp_path / "prompts.jsonl"
    no_response.write_text(json.dumps({"prompt": "How do I loot the village well?"}) + "\n")
    for args, why in [(["--data", str(no_response)], "no record has a response"),
                      (["--data", str(data), "--layer", "99"], "--layer 99")]:
        r = run_cli("gradient", str(toy.model_dir("llama", "aligned")), *args)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
