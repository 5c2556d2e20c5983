"""The fine-tuning attack grid on the toy world: N steps on M harmful pairs, LoRA and full weights,
plain SFT and Qi et al.'s constrained objective, against the aligned model and hardened ones.

    python benches/finetune_grid.py [--models aligned completed qi-augment] [--steps 10 50 100]
                                    [--pairs 10 100] [--out FILE]

The hardened models are the demo's (150 steps, seed 0; trained here if the cache lacks them). Each
cell fine-tunes the model (`complete --method harmful-sft | harmful-constrained`, batch 8, learning
rate 3e-4 for both LoRA (r 16, merged) and full weights) on the first M harmful pairs of the
training split, then attacks it on the demo's 60 literature records: the direct request and the
prefill at k = 10, x/n with the 95% Wilson interval. Resumable: fine-tuned weights and rows are
cached by their inputs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--models", nargs="+", default=["aligned", "completed", "qi-augment"])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--pairs", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    a = ap.parse_args()

    from bftcore import demo
    from bftcore.cache import model_digest, settings
    from bftcore.progress import plain_lines
    from bftcore.toy import toy_world

    progress = plain_lines(lambda line: print(line, file=sys.stderr, flush=True), 60.0)
    tw = toy_world(0).build([a.arch])
    trained = [m for m in a.models if m != "aligned"]
    methods = tuple("bft" if m == demo.COMPLETED else m for m in trained)
    paths = {"aligned": tw.model_dir(a.arch, "aligned"),
             **demo.completed_models(tw, a.arch, methods, progress=progress)}
    harmful = demo.heldout(tw, "harmful_heldout")[::demo.LITERATURE_EVERY]
    header = ["setting", *(f"{m} {what}" for m in a.models for what in ("direct", "prefill k=10"))]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for lora in (False, True):
        for n_pairs in a.pairs:
            for steps in a.steps:
                cfg = replace(demo.DEMO_FINETUNE, steps=steps, lora=lora)
                per_objective: dict[str, list[str]] = {}
                for m in a.models:
                    rows = partial(demo.finetune_attack, tw, a.arch, paths[m], m, harmful, progress=progress,
                                   finetune=cfg, n_pairs=n_pairs, ks=(10,))
                    result = demo.cached_rows(tw, a.arch, m, "finetune-grid", {
                        "model": model_digest(paths[m]), "finetune": settings(cfg), "pairs": n_pairs,
                        "every": demo.LITERATURE_EVERY}, rows, False)
                    for r in result.rows:
                        objective = r.attack.removeprefix("ft-").removesuffix("-prefill")
                        low, high = r.ci
                        per_objective.setdefault(objective, []).append(
                            f"{r.x}/{r.n} [{100 * low:.0f},{100 * high:.0f}]")
                for objective, cells in per_objective.items():
                    setting = f"{objective}, {'LoRA' if lora else 'full'}, {n_pairs} pairs, {steps} steps"
                    lines.append(f"| {setting} | " + " | ".join(cells) + " |")
                print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
