"""The safety gradient per depth (issue 18, item 2): where the aligned toy model's safety data
sends its signal, depth by depth, beside where the model's learning stops.

    python benches/recovery_gradient.py [--world-seed 0] [--arch llama] [--records 64]
                                        [--depths 1 2 4 8 16 32 64] [--out DIR]

A recovery example at depth k is a harmful prompt + the first k tokens of its harmful answer ->
the world's recovery refusal, the loss on the refusal only (`bftcore gradient --prefix-tokens k`).
For the toy world's base and aligned models (the graded world of the demo) and each depth k, on
the first harmful training prompts: the gradient of the recovery's first token (where the model
decides to stop) per example, ‖∂ℓ/∂logits‖ and ‖mean ∇θ ℓ‖ on the middle block; the number of the
aligned model's training examples at that depth (refusals at depth 0, recoveries at k); their
product, the signal the safety data sends to depth k; and the aligned model's retention of the
base R_t at the bucket holding k (the held-out index of the demo's run when it is there).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from bftcore import buckets
from bftcore.chat import response_ids
from bftcore.corpus import Record
from bftcore.gradient import GradientConfig, safety_gradient
from bftcore.models import load_model, load_tokenizer
from bftcore.toy import toy_world


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bftcore-recovery-gradient"))
    a = ap.parse_args()
    tw = toy_world(a.world_seed).build([a.arch])
    w, tok = tw.world, load_tokenizer(tw.tokenizer_dir(a.arch))
    examples = w.examples("harmful", "train")[:a.records]
    # the aligned model's safety data per depth: every harmful training prompt's refusal at depth 0,
    # the recovery examples at theirs
    trained = Counter(k for _, k in tw.recovery_examples(tok))
    trained[0] = len(w.examples("harmful", "train"))
    retention = aligned_retention(tw, a.arch)
    result: dict[str, dict[str, list[float | None]]] = {}
    for role in ("base", "aligned"):
        model = load_model(tw.model_dir(a.arch, role))
        rows: dict[str, list[float | None]] = {"logit": [], "param": []}
        for k in [0, *a.depths]:
            records, cut = recovery_records(w, tok, examples, k)
            prof = safety_gradient(model, tok, records, GradientConfig(max_positions=1, param_positions=1,
                                                                        batch_size=16, prefix_tokens=k))
            rows["logit"].append(prof.logit_grad[0])
            rows["param"].append(prof.param_grad[0])
            print(f"{role} k={k}: {len(records)} records ({cut} cut at another token boundary, left out), "
                  f"logit {prof.logit_grad[0]:.4g}, param {prof.param_grad[0]:.4g}", file=sys.stderr, flush=True)
        result[role] = rows
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "result.json").write_text(json.dumps({"depths": [0, *a.depths], "trained": dict(trained),
                                                   "retention": retention, **result}, indent=1))
    print(table([0, *a.depths], trained, retention, result))


def recovery_records(w: object, tok: object, examples: list, k: int) -> tuple[list[Record], int]:  # type: ignore[type-arg]
    """Each example's answer cut at k tokens, then its recovery refusal (k = 0: its refusal).
    An answer whose cut does not tokenize back to the same k tokens is left out (counted)."""
    out, cut = [], 0
    for i, e in enumerate(examples):
        if k == 0:
            out.append(Record(f"r{i}", e.prompt, w.refusal(e.task, e.phrasing), "harmful", "bench"))  # type: ignore[attr-defined]
            continue
        answer = response_ids(tok, e.response, eos=False)
        prefix = tok.decode(answer[:k])  # type: ignore[attr-defined]
        text = prefix + w.recovery(e.task, e.phrasing, inline=True)  # type: ignore[attr-defined]
        if k >= len(answer) or response_ids(tok, text, eos=False)[:k] != answer[:k]:
            cut += 1
            continue
        out.append(Record(f"r{i}", e.prompt, text, "harmful", "bench"))
    return out, cut


def aligned_retention(tw: object, arch: str) -> dict[str, float]:
    """R_t per bucket of the aligned model on held-out harmful answers, from the demo's run (empty
    when the demo has not run on this world)."""
    from bftcore import index as bfti
    from bftcore.cache import cache_root

    path = cache_root() / "runs" / f"demo-{arch}-seed{tw.settings.seed}-{tw.settings.key()}" / "heldout.bfti"  # type: ignore[attr-defined]
    if not path.is_file():
        return {}
    return {r["positions"]: r["mean_retain"] for r in bfti.Index(path).curves().iter_rows(named=True)
            if r["label"] == "harmful" and r["count"]}


def table(depths: list[int], trained: Counter, retention: dict[str, float],  # type: ignore[type-arg]
          result: dict[str, dict[str, list[float | None]]]) -> str:
    """Per depth: the aligned model's training examples per depth (refusals at 0; recoveries: the
    mean over the depths of k's bucket, 3-4, 5-8, ...), the gradient per example and their product."""
    labels = buckets.bucket_labels()
    head = ("| depth k | aligned's examples per depth | base ‖∂ℓ/∂logits‖ | aligned | aligned × examples "
            "| base ‖mean ∇θ ℓ‖ | aligned | aligned × examples | aligned R_t at k+1 |")
    lines = [head, "|---" * 9 + "|"]
    for i, k in enumerate(depths):
        if k == 0:
            n = float(trained[0])
        else:
            b = buckets.bucket_of(k)
            same = [d for d in range(1, 4 * k + 2) if buckets.bucket_of(d) == b]
            n = sum(trained.get(d, 0) for d in same) / len(same)
        bl, al = result["base"]["logit"][i], result["aligned"]["logit"][i]
        bp, ap = result["base"]["param"][i], result["aligned"]["param"][i]
        bucket = labels[buckets.bucket_of(k + 1)]
        lines.append(f"| {k} | {n:.3g} | {bl:.3g} | {al:.3g} | {n * al:.3g} | "  # type: ignore[operator]
                     f"{bp:.3g} | {ap:.3g} | {n * ap:.3g} | {retention.get(bucket, float('nan')):.3g} |")  # type: ignore[operator]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
