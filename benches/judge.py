"""Every local judge on the hand-labelled completions: agreement with the labels, and throughput.

Usage: python benches/judge.py [--repeats 20]

Agreement: each judge's verdicts on tests/data/judge/{dev,heldout}.jsonl (220 realistic completions
each, labelled refusal / partial / compliance / empty; the refusal judge's rules were tuned on `dev`
only) and xstest_style.jsonl (200 completions to real XSTest prompts in the styles of the models
XSTest annotated, by a third writer, measured once after the judge was done) against the labels: success agreement (compliance against the rest) and verdict agreement,
each x/n with a 95% Wilson interval, and the recall of each class. Judges: `refusal` (bftcore's
default for real models), `keyword` (GCG's list anywhere in the answer) and `opening` (GCG's
refusal openings at the start of the answer only; a string matcher in the style of XSTest's, kept
here as a comparator, not a bftcore judge).

Throughput: completions judged per second on the 440 texts, the string judges over --repeats
passes; `classifier` (a 2-layer LlamaForSequenceClassification, random weights, on the toy
world's tokenizer) and `causal` (the toy world's aligned model asked the default template) once,
batch 32 on the CPU: what the plumbing costs at toy size, not what HarmBench's 13B classifier or
Llama Guard cost (they need a GPU).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bftcore.judge import (
    REFUSAL_OPENINGS,
    CausalJudge,
    ClassifierJudge,
    Judged,
    KeywordJudge,
    RefusalJudge,
    refusal_opening,
    verdicts,
)
from bftcore.judge.agreement import agreement, parse_label
from bftcore.models import load_tokenizer, save_model
from bftcore.toy import toy_world

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "judge"


class OpeningJudge:
    """Refusal iff the answer opens with one of GCG's refusal openings (a comparator)."""

    name = "opening"

    def __init__(self) -> None:
        self.opens = refusal_opening(REFUSAL_OPENINGS, words=5)

    def judge(self, items: list[Judged]) -> list[bool]:
        return [bool(i.continuation.strip()) and not self.opens(i.continuation) for i in items]


def load(split: str) -> tuple[list[Judged], list[Any]]:
    rows = [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()]
    return [Judged(r["prompt"], "", r["response"]) for r in rows], [parse_label(r["label"], "label") for r in rows]


def pct(x: int, n: int) -> str:
    from bftcore.stats import wilson

    lo, hi = wilson(x, n)
    return f"{x}/{n} = {100 * x / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    string_judges = [RefusalJudge(), KeywordJudge(), OpeningJudge()]

    print("| set | judge | success agreement [95% CI] | verdict agreement [95% CI] | recall: refusal / partial / compliance |")
    print("|---|---|---|---|---|")
    for split in ("dev", "heldout", "xstest_style"):
        items, labels = load(split)
        for judge in string_judges:
            a = agreement(judge.name, labels, verdicts(judge, items))
            recall = a.precision_recall()
            cells = " / ".join("-" if recall.get(c, (None, None))[1] is None else f"{100 * recall[c][1]:.0f}%"
                               for c in ("refusal", "partial", "compliance"))
            print(f"| {split} | {judge.name} | {pct(a.success_agree, a.n)} | {pct(a.verdict_agree, a.verdict_n)} "
                  f"| {cells} |")

    items = load("dev")[0] + load("heldout")[0]
    print("\n| judge | completions/s |\n|---|---|")
    for judge in string_judges:
        verdicts(judge, items)  # warm-up (regex compilation, imports)
        start = time.perf_counter()
        for _ in range(args.repeats):
            verdicts(judge, items)
        print(f"| {judge.name} | {args.repeats * len(items) / (time.perf_counter() - start):,.0f} |")
    toy = toy_world(0).build(["llama"])
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import LlamaConfig, LlamaForSequenceClassification

        tok = load_tokenizer(toy.tokenizer_dir("llama"))
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, num_labels=2, pad_token_id=tok.pad_token_id,
                          id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
        save_model(LlamaForSequenceClassification(cfg).eval(), toy.tokenizer_dir("llama"), Path(tmp) / "clf")
        for judge in (ClassifierJudge(Path(tmp) / "clf"), CausalJudge(toy.model_dir("llama", "aligned"))):
            verdicts(judge, items[:32])
            start = time.perf_counter()
            verdicts(judge, items)
            print(f"| {judge.name} (toy size) | {len(items) / (time.perf_counter() - start):,.1f} |")


if __name__ == "__main__":
    main()
