"""Step time and peak memory of a `bft` completion step against a plain SFT step, same batch, same model.

    python benches/complete_step.py [--size toy|mid] [--steps 20] [--lora]

Each variant runs in its own fresh process (peak RSS is per process): it loads the models it needs,
builds the same global batch records from the toy world's training split, runs 3 warm-up steps and
then `--steps` timed optimizer steps. Memory is the process's peak RSS minus its RSS right after
importing torch and transformers (the libraries every variant pays alike).

Variants:
    sft                 plain SFT: cross-entropy on the targets (one forward + backward)
    bft                 ours, default settings: online base model (penalty), frozen aligned
                        reference (hybrid teacher)
    bft-no-penalty      ours without the penalty term: no base model in memory or in the step
                        (what the step costs when the base top-k comes from scored shards,
                        `--base-shards`, up to the table lookup)
All variants step on the same batches: bft's examples (direct, recovery with prefixes, benign).
`--lora` trains LoRA adapters instead (the reference is the trainee with its adapter disabled).
`--size mid` swaps the toy models for randomly initialised 6-layer, hidden-768 Llamas (same
tokenizer) so that weights, not activations, dominate memory, as in real models.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

# Every variant trains on bft's batches (the same examples); "sft" is plain cross-entropy on them.
VARIANTS = {
    "sft": {"penalty": "off", "teacher": "off", "alpha": 0.0},
    "bft": {},
    "bft-no-penalty": {"penalty": "off"},
}


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(variant: str, size: str, steps: int, lora: bool) -> dict:
    import torch
    import transformers  # noqa: F401  (the baseline includes the library)

    torch.set_num_threads(2)
    baseline = _rss_mib()
    from bftcore import complete as cp
    from bftcore.demo import DEMO_COMPLETE, completion_inputs
    from bftcore.models import load_model, load_tokenizer
    from bftcore.toy import toy_world
    from bftcore.toy.models import new_model, toy_config

    tw = toy_world(0).build(["llama"])
    tok = load_tokenizer(tw.tokenizer_dir("llama"))
    _, data, profile = completion_inputs(tw, "llama")
    cfg = replace(DEMO_COMPLETE, steps=steps + 3, lora=lora, **VARIANTS[variant])

    def model(role: str):  # type: ignore[no-untyped-def]
        if size == "toy":
            return load_model(tw.model_dir("llama", role))
        c = toy_config("llama", vocab_size=len(tok), hidden=768, layers=6, intermediate=2048, heads=12,
                       kv_heads=4, max_positions=512, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                       pad_id=tok.pad_token_id)
        return new_model(c, seed={"aligned": 1, "base": 2}[role])

    trainee = model("aligned")
    reference = None
    if lora:
        from peft import LoraConfig, get_peft_model

        trainee = get_peft_model(trainee, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                     target_modules="all-linear", task_type="CAUSAL_LM"))
    elif cfg.teacher != "off":
        reference = model("aligned").requires_grad_(False)
    base = model("base").requires_grad_(False) if cfg.penalty != "off" else None
    trainer = cp.Trainer(trainee, reference, base, cfg, profile, tok.pad_token_id)
    times = []
    trainee.train()
    for step in range(cfg.steps):
        examples = cp.make_examples(data, cfg, profile, step)
        norm = {k: float(v) for k, v in cp.term_counts(examples, cfg).items()}
        t0 = time.perf_counter()
        loss, _ = trainer.micro_loss(cp.collate(examples, tok.pad_token_id, trainer.device), norm)
        loss.backward()
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "size": size, "lora": lora, "step_s": statistics.median(times),
            "peak_mib": round(peak - baseline, 1), "tokens": sum(len(e.ids) for e in examples)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["toy", "mid"], default="toy")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.size, a.steps, a.lora)))
        return
    from bftcore.demo import completion_inputs
    from bftcore.toy import toy_world

    completion_inputs(toy_world(0).build(["llama"]), "llama")  # cached before any child measures
    results = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--child", v, "--size", a.size, "--steps", str(a.steps)]
        cmd += ["--lora"] if a.lora else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[v] = json.loads(out.strip().splitlines()[-1])
    sft = results["sft"]
    tag = f"{a.size}{' LoRA' if a.lora else ''}"
    print(f"| variant ({tag}) | step time (median of {a.steps}) | vs sft | peak memory above libraries | vs sft |")
    print("| --- | --- | --- | --- | --- |")
    for v, r in results.items():
        print(f"| {v} | {1000 * r['step_s']:.0f} ms | {r['step_s'] / sft['step_s']:.2f}x | "
              f"{r['peak_mib']:.0f} MiB | {r['peak_mib'] / sft['peak_mib']:.2f}x |")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    main()
