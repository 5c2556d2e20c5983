"""Trials toward a toy world whose safety learning is graded (issue 18): the aligned model's
safety SFT plus recovery examples after short harmful prefixes, their depth k drawn so that the
signal is concentrated early, as real safety data concentrate it.

Usage: python benches/graded_trials.py (--geometric P | --log-uniform MAX | --uniform MAX |
           --per-verb MAX [--within uniform]) --fraction F [--weight-tau TAU] [--inline]
           [--world-seed S] --name NAME

A recovery example is a harmful training prompt + the first k tokens of its harmful answer -> the
world's recovery refusal (loss on the refusal only), for a fraction F of the harmful training
examples. k ~ 1 + Geometric(P); or log-uniform or uniform on [1, MAX]; or (--per-verb) up to a
depth D_v of each harmful verb, log-uniform on [1, MAX] (safety data that covers some harms deeper
than others). --weight-tau weakens a recovery example's loss with depth (exp(-(k-1)/TAU)); --inline
puts the recovery on the same line (a space before it, not a new line). The aligned Llama of world
seed S (default 0) is retrained from its base with the world's aligned settings, then measured on
the held-out harmful prompts: prefill ASR per k (exact judge, greedy, 64 new tokens) and the index
against the base (R_t and KL per bucket). The model and a result.json go to
/tmp/bftcore-graded/NAME. Not yet the toy world's own recipe: these trials choose it.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bftcore import attack as atk
from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import read_corpus
from bftcore.demo import index_records
from bftcore.generate import TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer, save_model
from bftcore.toy import toy_world
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS
from bftcore.train import TrainingSequence, train

KS = (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    depth = ap.add_mutually_exclusive_group(required=True)
    depth.add_argument("--geometric", type=float, help="k ~ 1 + Geometric(P)")
    depth.add_argument("--log-uniform", type=int, help="k log-uniform on [1, MAX]")
    depth.add_argument("--uniform", type=int, help="k uniform on [1, MAX]")
    depth.add_argument("--per-verb", type=int, help="k log-uniform on [1, D_verb], D_verb log-uniform on [1, MAX]")
    ap.add_argument("--within", choices=("log", "uniform"), default="log",
                    help="--per-verb: k log-uniform or uniform on [1, D_verb]")
    ap.add_argument("--weight-tau", type=float,
                    help="a recovery example's loss weight exp(-(k-1)/TAU): the signal weakens with depth")
    ap.add_argument("--inline", action="store_true",
                    help="the recovery refusal goes on in the same line (a space, not a new line, before it)")
    ap.add_argument("--fraction", type=float, required=True, help="harmful training examples given a recovery example")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    tw = toy_world(args.world_seed).build(["llama"])
    w, s = tw.world, tw.settings
    tok = load_tokenizer(tw.tokenizer_dir("llama"))
    if args.per_verb:
        depth_name = f"per-verb-{args.per_verb}" + ("-uniform" if args.within == "uniform" else "")
    elif args.uniform:
        depth_name = f"uniform-{args.uniform}-tau-{args.weight_tau}"
    else:
        depth_name = f"{args.geometric}-{args.log_uniform}"
    rng = random.Random(f"graded-{depth_name}-{args.fraction}")  # --inline: the same k as without
    verb_depth = [math.exp(rng.uniform(0, math.log(args.per_verb))) for _ in range(64)] if args.per_verb else []
    pairs = [(prompt_ids(tok, e.prompt), response_ids(tok, w.refusal(e.task, e.phrasing)))
             for e in w.examples("harmful", "train")]
    pairs += [(prompt_ids(tok, e.prompt), response_ids(tok, e.response)) for e in w.examples("benign", "train")]
    ks: list[int] = []
    recovery: list[tuple[list[int], list[int], float]] = []
    for e in w.examples("harmful", "train"):
        if rng.random() >= args.fraction:
            continue
        h = response_ids(tok, e.response, eos=False)
        if args.uniform:
            k = rng.randint(1, args.uniform)
        elif args.per_verb and args.within == "uniform":
            k = rng.randint(1, max(1, int(verb_depth[e.task.verb])))
        elif args.log_uniform or args.per_verb:
            top = args.log_uniform or verb_depth[e.task.verb]
            k = int(math.exp(rng.uniform(0, math.log(top))))
        else:
            k = 1
            while rng.random() > args.geometric and k < len(h) - 1:
                k += 1
        k = min(k, len(h) - 1)
        ks.append(k)
        weight = math.exp(-(k - 1) / args.weight_tau) if args.weight_tau else 1.0
        text = w.recovery(e.task, e.phrasing)
        text = " " + text.lstrip("\n") if args.inline else text
        recovery.append((prompt_ids(tok, e.prompt) + h[:k], response_ids(tok, text), weight))
    if args.per_verb:
        print("verb depths: " + " ".join(f"{d:.0f}" for d in sorted(verb_depth[:len(w.verb_steps['harmful'])])))
    print(f"{len(ks)} recovery examples; k median {np.median(ks):.0f}, 90% <= {np.percentile(ks, 90):.0f}", flush=True)
    model = load_model(tw.model_dir("llama", "base"))
    start = time.time()
    examples = [TrainingSequence.prompt_target(p, r) for p, r in pairs]
    examples += [TrainingSequence(p + r, [0.0] * len(p) + [wt] * len(r)) for p, r, wt in recovery]
    train(model, examples, replace(s.aligned_train, seed=s.seed + 1),
          pad_id=tok.pad_token_id)
    print(f"trained in {time.time() - start:.0f} s", flush=True)
    out = Path("/tmp/bftcore-graded") / args.name
    save_model(model, tw.tokenizer_dir("llama"), out)
    harmful = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])[0]
    suite = atk.Suite(TorchGenerator(load_model(out), tok), PhraseJudge(w.harmful_phrases),
                      atk.AttackConfig(ks=KS, max_new_tokens=64), model=args.name, arch="llama",
                      openers=REFUSALS + RECOVERY_REFUSALS)
    rows = suite.run("prefill", harmful).rows
    print("prefill ASR: " + " ".join(f"k={r.k}: {r.x}/{r.n}" for r in rows))
    idx = index_records(harmful, tw.model_dir("llama", "base"), out, out / "heldout.bfti", device="cpu", progress=None)
    c = idx.curves()
    c = c.filter(c["label"] == "harmful")
    curve = [(b, r, kl) for b, r, kl in zip(c["positions"], c["mean_retain"], c["mean_kl"]) if r is not None]
    print("R_t: " + " ".join(f"{b}: {r:.3f}" for b, r, _ in curve))
    print("KL:  " + " ".join(f"{b}: {kl:.3g}" for b, _, kl in curve))
    (out / "result.json").write_text(json.dumps({"asr": [(r.k, r.x, r.n) for r in rows], "curve": curve}))


if __name__ == "__main__":
    main()
