"""What the literature's attacks cost against a plain prefill: seconds per 100 prompts on the toy
world's aligned model (PyTorch, CPU), measured side by side in one run.

Usage: python benches/attack_cost.py [--records 60] [--k 10] [--max-new-tokens 64] [--steps 10] [--repeats 3]

Each attack runs once on the same held-out harmful records at one prefill length k and one
decoding length; the fine-tuning attack is `complete --method harmful-sft` (full weights) for
--steps steps of batch 10 on 10 harmful training pairs, then a plain prefill of the result (its
seconds include that prefill; it runs once). Each attack runs --repeats times after a warm-up and
the median counts. Ratios are to the plain prefill of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bftcore import complete as cp
from bftcore.attack import AttackConfig, Suite
from bftcore.corpus import read_corpus
from bftcore.generate import TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.toy import toy_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=60)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each attack; the median counts")
    args = ap.parse_args()
    toy = toy_world(0).build(["llama"])
    aligned = toy.model_dir("llama", "aligned")
    tok = load_tokenizer(aligned)
    records = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][: args.records]
    judge = PhraseJudge(toy.world.harmful_phrases)
    cfg = AttackConfig(ks=(args.k,), max_new_tokens=args.max_new_tokens)

    def suite(model_dir: Path) -> Suite:
        return Suite(TorchGenerator(load_model(model_dir), tok), judge, cfg)

    seconds: dict[str, float] = {}
    base_suite = suite(aligned)
    base_suite.run("prefill", records[:8])  # warm-up: the first forward passes pay for allocation
    for attack in ("prefill", "rap", "rap-oracle", "restart"):
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            base_suite.run(attack, records)
            runs.append(time.perf_counter() - start)
        seconds[attack] = statistics.median(runs)
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        pairs.write_text("\n".join((toy.data_dir / "harmful_train.jsonl").read_text().splitlines()[:10]) + "\n")
        start = time.perf_counter()
        cp.harden(cp.HardenInputs(aligned=aligned, data=(pairs,), benign=(), out=Path(tmp) / "attacked", device="cpu"),
                  cp.CompleteConfig(method="harmful-sft", steps=args.steps, batch_size=10, checkpoint_every=10_000))
        suite(Path(tmp) / "attacked").run("prefill", records)
        seconds[f"fine-tune ({args.steps} steps) + prefill"] = time.perf_counter() - start

    per100 = {a: 100 * s / len(records) for a, s in seconds.items()}
    print(f"{len(records)} records, k = {args.k}, {args.max_new_tokens} new tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| attack | seconds per 100 prompts | vs prefill |")
    print("| --- | --- | --- |")
    for a, s in per100.items():
        print(f"| {a} | {s:.1f} | {s / per100['prefill']:.1f}x |")


if __name__ == "__main__":
    main()
