"""Scoring on the mid-size model against the matmul peak: block budgets and torch.compile, side by side.

Usage: python benches/score_blocks.py [--dtype float32] [--budgets 8 32 128] [--reps 3]

The mid model pair of benches/efficiency.py (random ~91M-parameter Llamas with Llama-3's 128,256-token
vocabulary) scores 16 random documents (32-96 prompt and 128-448 response tokens) with the
vocabulary projection in blocks of each budget's MiB of float32 logits, eager, and at the largest
budget also with the statistics compiled (`ScoreConfig(compile="on")`, compiled once before the timed
runs). Variants alternate within each repetition; each run's FLOP/s is the FLOPs counted by
torch.utils.flop_counter over one untimed run, divided by its seconds, as a fraction of this run's
measured matmul peak. The compiled statistics' largest deviation from the eager ones is printed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bftcore.score as sc
import efficiency as eff


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    device, dtype = torch.device("cpu"), getattr(torch, a.dtype)
    models, tok, _ = eff.models("mid", device, dtype)
    base, aligned = models[0], models[1]
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(16):
        n_p = int(torch.randint(32, 97, (1,), generator=g))
        n_r = int(torch.randint(128, 449, (1,), generator=g))
        ids = torch.randint(4, vocab, (n_p + n_r,), generator=g).tolist()
        docs.append(sc.Doc(i, ids[:n_p], ids[n_p:], "x"))
    eager = sc.Scorer(base, aligned, pad_id=tok.pad_token_id, cfg=sc.ScoreConfig(compile="off"))
    compiled = sc.Scorer(base, aligned, pad_id=tok.pad_token_id, cfg=sc.ScoreConfig(compile="on"))
    default_chunks = sc._chunks

    def with_budget(mib: int):  # type: ignore[no-untyped-def]
        size = max(16, (mib << 20) // (4 * vocab))
        return lambda n, _v, _d: [slice(s, s + size) for s in range(0, n, size)]

    flops = eff.counted(lambda: eager.score(docs))
    peak = eff.peaks(device)[f"matmul_{a.dtype}"]
    print(f"matmul peak {peak / 1e9:.0f} GFLOP/s, scoring {flops / 1e9:.1f} GFLOP", flush=True)
    top = max(a.budgets)
    sc._chunks = with_budget(top)
    t0 = time.perf_counter()
    ref, got = eager.score(docs), compiled.score(docs)
    print(f"compiled once ({time.perf_counter() - t0:.1f} s with one eager run); largest deviation: "
          + ", ".join(f"{c} {np.abs(np.asarray(ref[c]) - np.asarray(got[c])).max():.1e}"
                      for c in ("lp_base", "lp_aligned", "kl", "bf_mass", "retain"))
          + f"; top-k tokens equal: {ref['topk_token'].equals(got['topk_token'])}", flush=True)
    variants = [(f"{mib} MiB, eager", mib, eager) for mib in a.budgets] + [(f"{top} MiB, compiled", top, compiled)]
    seconds: dict[str, list[float]] = {}
    for rep in range(a.reps):
        for name, mib, scorer in variants:
            sc._chunks = with_budget(mib)
            t0 = time.perf_counter()
            scorer.score(docs)
            t = time.perf_counter() - t0
            seconds.setdefault(name, []).append(t)
            print(f"rep {rep} {name}: {t:.2f} s, {flops / t / 1e9:.1f} GFLOP/s = {flops / t / peak:.0%} of the peak",
                  flush=True)
    sc._chunks = default_chunks
    print("\n| blocks | seconds (best / median) | of the matmul peak (best) |\n| --- | --- | --- |")
    for name, ts in seconds.items():
        print(f"| {name} | {min(ts):.2f} / {float(np.median(ts)):.2f} | {flops / min(ts) / peak:.0%} |")


if __name__ == "__main__":
    main()
