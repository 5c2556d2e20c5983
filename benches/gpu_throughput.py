"""Scoring and completion-training throughput on a randomly initialised Llama, as a fraction of the
accelerator's bf16 dense FLOP limit (model FLOPs utilisation, MFU). Part of benches/gpu_check.sh.

    python benches/gpu_throughput.py --device cuda --preset 1b     # ~1.2B parameters, bf16
    python benches/gpu_throughput.py --device cpu --preset tiny    # the same code path, seconds on a CPU

The models are random (weights never leave the machine, nothing is downloaded): speed does not
depend on what the weights say. Shapes of `1b` follow Llama-3.2-1B (hidden 2048, 16 layers, 32
heads, 8 KV heads, MLP 8192, a 128,256-token vocabulary, tied embeddings).

- scoring: `bftcore.score.Scorer` (both models, length-sorted batches, top-k statistics) over
  random documents; FLOPs = 2 models x 2 x parameters per token processed.
- training: `bftcore.complete.Trainer` steps of our method (`bft`: trainee forward + backward,
  the frozen aligned reference and the base model forward) on the toy world's completion data;
  FLOPs = (6 + 2 + 2) x parameters per token.
Attention's own FLOPs (under 3% at these lengths) are left out, so MFU is slightly understated.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import torch

from bftcore import complete as cp
from bftcore.demo import DEMO_COMPLETE, completion_inputs
from bftcore.models import load_tokenizer
from bftcore.score import Doc, ScoreConfig, Scorer
from bftcore.toy import toy_world
from bftcore.toy.models import new_model, toy_config

PRESETS: dict[str, dict[str, int]] = {
    "1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "vocab": 128256},
    "tiny": {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 4096},
}

# bf16 dense tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets
PEAK_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12,
             "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10G": 70e12, "RTX 4090": 165e12}


def peak_flops(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16.items():  # most specific names first
        if key in name:
            return name, flops
    return name, None


def models(preset: str, pad_id: int, bos_id: int, eos_id: int, device: torch.device) -> tuple[Any, Any, Any, Any]:
    p = PRESETS[preset]
    cfg = toy_config("llama", vocab_size=p["vocab"], hidden=p["hidden"], layers=p["layers"], intermediate=p["intermediate"],
                     heads=p["heads"], kv_heads=p["kv_heads"], max_positions=2048, bos_id=bos_id, eos_id=eos_id,
                     pad_id=pad_id)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    made = [new_model(cfg, seed).to(device=device, dtype=dtype) for seed in (1, 2, 3, 4)]
    return made[0], made[1], made[2], made[3]  # base, aligned, trainee, reference


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    ap.add_argument("--docs", type=int, default=256, help="documents to score")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--batch-size", type=int, default=32, help="records per training step")
    ap.add_argument("--json-out", help="also write the figures as JSON to this path")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    tw = toy_world(0).build(["llama"])
    tok = load_tokenizer(tw.tokenizer_dir("llama"))
    base, aligned, trainee, reference = models(a.preset, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, device)
    params = sum(p.numel() for p in trainee.parameters())
    vocab = PRESETS[a.preset]["vocab"]
    gpu, peak = peak_flops(device)

    # scoring: random documents, prompts of 32-96 and responses of 128-448 tokens
    g = torch.Generator().manual_seed(0)
    docs = []
    for i in range(a.docs):
        n_p, n_r = int(torch.randint(32, 97, (1,), generator=g)), int(torch.randint(128, 449, (1,), generator=g))
        ids = torch.randint(4, vocab, (n_p + n_r,), generator=g).tolist()
        docs.append(Doc(i, ids[:n_p], ids[n_p:], "harmful" if i % 2 else "benign"))
    scorer = Scorer(base, aligned, pad_id=tok.pad_token_id, cfg=ScoreConfig())
    scorer.score(docs[:8])  # warm-up: kernels, allocator
    sync(device)
    t0 = time.perf_counter()
    scorer.score(docs)
    sync(device)
    score_s = time.perf_counter() - t0
    processed = sum(len(d.prompt) + len(d.response) for d in docs)
    response_tokens = sum(len(d.response) for d in docs)
    score_flops = 2 * 2 * params * processed

    # training: our method's step on the toy world's completion data (token ids fit every preset)
    _, data, profile = completion_inputs(tw, "llama", device="cpu")
    cfg = replace(DEMO_COMPLETE, batch_size=a.batch_size, steps=a.steps + 2)
    trainee.train()
    reference.requires_grad_(False)
    base.requires_grad_(False)
    trainer = cp.Trainer(trainee, reference, base, cfg, profile, tok.pad_token_id)
    step_s, step_tokens = [], []
    for step in range(cfg.steps):
        examples = cp.make_examples(data, cfg, profile, step)
        norm = {k: float(v) for k, v in cp.term_counts(examples, cfg.method).items()}
        batch = cp.collate(examples, tok.pad_token_id, trainer.device)
        sync(device)
        t0 = time.perf_counter()
        loss, _ = trainer.micro_loss(batch, norm)
        loss.backward()
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        sync(device)
        if step >= 2:
            step_s.append(time.perf_counter() - t0)
            step_tokens.append(int(batch.ids.numel()))
    train_s, train_tokens = sum(step_s), sum(step_tokens)
    train_flops = (6 + 2 + 2) * params * train_tokens

    def mfu(flops: float, seconds: float) -> float | None:
        return None if peak is None else flops / seconds / peak

    out = {
        "device": gpu, "preset": a.preset, "parameters": params, "dtype": str(next(trainee.parameters()).dtype),
        "peak_bf16_flops": peak,
        "scoring": {"docs": len(docs), "tokens_processed": processed, "response_tokens": response_tokens,
                    "seconds": round(score_s, 3), "tokens_per_s": round(processed / score_s, 1),
                    "response_tokens_per_s": round(response_tokens / score_s, 1),
                    "mfu": mfu(score_flops, score_s)},
        "training": {"steps": len(step_s), "batch_records": a.batch_size, "tokens": train_tokens,
                     "seconds": round(train_s, 3), "tokens_per_s": round(train_tokens / train_s, 1),
                     "mfu": mfu(train_flops, train_s), "loss_last": float(loss.detach())},
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=2)

    def pct(x: float | None) -> str:
        return "n/a (peak unknown)" if x is None else f"{100 * x:.1f}%"

    print(f"{gpu}, preset {a.preset}: {params / 1e9:.3f}B parameters, {out['dtype']}")
    print("| stage | tokens | seconds | tokens/s | fraction of bf16 peak |")
    print("| --- | --- | --- | --- | --- |")
    s, t = out["scoring"], out["training"]
    print(f"| scoring (2 models, forward) | {processed:,} | {score_s:.2f} | {s['tokens_per_s']:,.0f} | {pct(s['mfu'])} |")
    print(f"| training, bft (fwd+bwd + 2 frozen fwd) | {train_tokens:,} | {train_s:.2f} | {t['tokens_per_s']:,.0f} "
          f"| {pct(t['mfu'])} |")


if __name__ == "__main__":
    main()
