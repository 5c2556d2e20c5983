"""Attack throughput: batched generation against one prompt at a time, on the toy models (CPU).

Usage: python benches/attack_throughput.py [--arch llama]

The same attacks (direct request and prefilling at k = 10, greedy, 64 new tokens, exact judge) on
the 180 held-out harmful prompts of the toy world, through the same generator with batch size 64
and with batch size 1. Prompts per minute, and the ratio; the tables are checked equal.
"""

from __future__ import annotations

import argparse
import time

import torch

from bftcore.attack import AttackConfig, Suite
from bftcore.corpus import read_corpus
from bftcore.generate import TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.toy import toy_world


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama")
    a = ap.parse_args()
    tw = toy_world(0).build([a.arch])
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])
    model = load_model(tw.model_dir(a.arch, "aligned"))
    tok = load_tokenizer(tw.tokenizer_dir(a.arch))
    judge = PhraseJudge(tw.world.harmful_phrases)
    cfg = AttackConfig(ks=(10,), max_new_tokens=64)
    results = {}
    for batch in (64, 1):
        suite = Suite(TorchGenerator(model, tok, batch_size=batch), judge, cfg, model="aligned")
        t0 = time.perf_counter()
        rows = suite.run("direct", records).rows + suite.run("prefill", records).rows
        results[batch] = (time.perf_counter() - t0, [r.to_dict() for r in rows])
    assert results[64][1] == results[1][1], "batched and one-at-a-time tables differ"
    prompts = 2 * len(records)
    print(f"toy {a.arch} aligned, {prompts} attack prompts (direct + prefill k=10), 64 new tokens, "
          f"torch threads {torch.get_num_threads()}")
    print("| generation | seconds | prompts/min | speed-up |")
    print("| --- | --- | --- | --- |")
    one = results[1][0]
    for batch, (sec, _) in sorted(results.items()):
        print(f"| batch {batch} | {sec:.1f} | {60 * prompts / sec:,.0f} | {one / sec:.1f}x |")


if __name__ == "__main__":
    main()
