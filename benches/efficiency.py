"""Efficiency against the machine's own limits (issue 19): this machine's peaks, measured, and each
workload's share of them.

    python benches/efficiency.py                                  # CPU: peaks, the toy and mid models
    python benches/efficiency.py --device cuda --presets toy mid 1b   # a GPU (benches/gpu_check.sh)
    python benches/efficiency.py --presets tiny --docs 8 --steps 2 --json-out t.json   # seconds (tests)

Peaks, measured here with torch: dense matmul FLOP/s in float32 and bfloat16 (square products,
best of several), memory bandwidth as a copy (read + write bytes / s) and as a read (a sum over a
buffer far larger than the caches); on a GPU also the vendor's bf16 data-sheet figure.

Workloads, on models of each preset (`toy`: the toy world's trained Llama pair; `mid`: a random
Llama of ~90M parameters with Llama-3's 128,256-token vocabulary; `1b`: Llama-3.2-1B's shapes;
`tiny`: seconds, for tests; random weights: speed does not depend on what they say, and nothing
is downloaded):

- scoring: `bftcore.score.Scorer` over random documents (prompts of 32-96 tokens, responses of
  128-448), both models;
- a completion training step of our method (`bft`: the trainee's forward and backward, the frozen
  aligned reference and the base model) on the toy world's completion data;
- generation: `TorchGenerator`, greedy, 32 new tokens per prompt, batches of 16.

FLOPs are counted, not estimated: `torch.utils.flop_counter.FlopCounterMode` over one untimed run
of each workload counts every matrix product and attention the run executes (padding included);
achieved FLOP/s = counted FLOPs / the timed run's seconds, as a fraction of the measured matmul
peak of the dtype the workload ran in. For scoring, the FLOPs a run without padding would need are
reported beside (the useful share). Generation reads every weight once per decoding step: its
bytes/s against the read bandwidth is the figure that bounds it at small batches.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bftcore import complete as cp
from bftcore.demo import DEMO_COMPLETE, completion_inputs
from bftcore.generate import Decoding, TorchGenerator, length_batches
from bftcore.models import load_model, load_tokenizer
from bftcore.score import Doc, ScoreConfig, Scorer
from bftcore.toy import toy_world
from bftcore.toy.models import new_model, toy_config

# random models: (hidden, layers, heads, kv heads, MLP width, vocabulary)
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 256, "vocab": 4096},
    "mid": {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 4, "intermediate": 1536, "vocab": 128256},
    "1b": {"hidden": 2048, "layers": 16, "heads": 32, "kv_heads": 8, "intermediate": 8192, "vocab": 128256},
}
PRESETS = ("toy", *SHAPES)

# bf16 dense tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, most specific first
DATASHEET_BF16 = {"H200": 989e12, "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 NVL": 835e12,
                  "H100 PCIe": 756e12, "H100": 756e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                  "A10G": 70e12, "RTX 4090": 165e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Any, device: torch.device, repeat: int) -> float:
    fn()  # warm-up: kernels, allocator, caches
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


# ---- the machine's peaks ------------------------------------------------------------------------
def peaks(device: torch.device) -> dict[str, Any]:
    """Dense matmul FLOP/s per dtype and memory bandwidth, measured; the data sheet's bf16 on a GPU."""
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
                           "threads": torch.get_num_threads()}
    n = 8192 if device.type == "cuda" else 2048
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        s = best_seconds(lambda a=a, b=b: torch.mm(a, b), device, repeat=5)  # type: ignore[misc]
        out[f"matmul_{str(dtype).removeprefix('torch.')}"] = 2 * n ** 3 / s
    size = (2 << 30) if device.type == "cuda" else (1 << 30)  # bytes, far beyond every cache
    src = torch.ones(size // 4, device=device)
    dst = torch.empty_like(src)
    s = best_seconds(lambda: dst.copy_(src), device, repeat=5)
    out["copy_bytes_per_s"] = 2 * size / s  # read + write
    s = best_seconds(lambda: src.sum(), device, repeat=5)
    out["read_bytes_per_s"] = size / s
    if device.type == "cuda":
        name = out["device"]
        out["datasheet_bf16"] = next((f for key, f in DATASHEET_BF16.items() if key in name), None)
    return out


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


# ---- models --------------------------------------------------------------------------------------
def models(preset: str, device: torch.device, dtype: torch.dtype) -> tuple[list[Any], Any, Any]:
    """(base, aligned, trainee, reference), the tokenizer, the toy world."""
    tw = toy_world(0).build(["llama"])
    tok = load_tokenizer(tw.tokenizer_dir("llama"))
    if preset == "toy":
        base, aligned = (load_model(tw.model_dir("llama", r), device=device, dtype=dtype) for r in ("base", "aligned"))
        made = [base, aligned] + [load_model(tw.model_dir("llama", "aligned"), device=device, dtype=dtype)
                                  for _ in range(2)]
        return made, tok, tw
    p = SHAPES[preset]
    cfg = toy_config("llama", vocab_size=p["vocab"], hidden=p["hidden"], layers=p["layers"],
                     intermediate=p["intermediate"], heads=p["heads"], kv_heads=p["kv_heads"], max_positions=2048,
                     bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    return [new_model(cfg, seed).to(device=device, dtype=dtype) for seed in (1, 2, 3, 4)], tok, tw


def shape_of(model: Any) -> dict[str, int]:
    c = model.config
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    return {"parameters": total, "non_embedding": total - embed, "hidden": c.hidden_size,
            "layers": c.num_hidden_layers, "vocab": c.vocab_size}


def counted(fn: Any) -> float:
    """FLOPs of every matrix product and attention `fn` runs (one untimed run)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ---- workloads -----------------------------------------------------------------------------------
def scoring(base: Any, aligned: Any, tok: Any, docs: int, device: torch.device) -> dict[str, Any]:
    vocab = base.config.vocab_size
    g = torch.Generator().manual_seed(0)
    made = []
    for i in range(docs):
        n_p, n_r = int(torch.randint(32, 97, (1,), generator=g)), int(torch.randint(128, 449, (1,), generator=g))
        ids = torch.randint(4, vocab, (n_p + n_r,), generator=g).tolist()
        made.append(Doc(i, ids[:n_p], ids[n_p:], "harmful" if i % 2 else "benign"))
    scorer = Scorer(base, aligned, pad_id=tok.pad_token_id, cfg=ScoreConfig())
    flops = counted(lambda: scorer.score(made))
    seconds = best_seconds(lambda: scorer.score(made), device, repeat=1)
    # without padding: each document alone, the same statistics
    useful = sum(counted(lambda d=d: scorer.score_batch([d])) for d in made)  # type: ignore[misc]
    tokens = sum(len(d.prompt) + len(d.response) for d in made)
    return {"what": "scoring, both models", "tokens": tokens, "seconds": seconds, "flops": flops,
            "useful_flops": useful}


def training(models_: list[Any], tok: Any, tw: Any, steps: int, batch_size: int, device: torch.device,
             dtype: torch.dtype) -> dict[str, Any]:
    base, _, trainee, reference = models_
    _, data, profile = completion_inputs(tw, "llama", device="cpu")
    cfg = replace(DEMO_COMPLETE, batch_size=batch_size, steps=steps + 1, dtype=str(dtype).removeprefix("torch."))
    trainee.train()
    reference.requires_grad_(False)
    base.requires_grad_(False)
    trainer = cp.Trainer(trainee, reference, base, cfg, profile, tok.pad_token_id)
    batches = []
    for step in range(cfg.steps):
        examples = cp.make_examples(data, cfg, profile, step)
        norm = {k: float(v) for k, v in cp.term_counts(examples, cfg).items()}
        batches.append((cp.collate(examples, tok.pad_token_id, trainer.device), norm))

    def step(b: Any, norm: dict[str, float]) -> float:
        loss, _ = trainer.micro_loss(b, norm)
        loss.backward()
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(*batches[0])  # warm-up
    flops = sum(counted(lambda b=b, n=n: step(b, n)) for b, n in batches[1:])  # type: ignore[misc]
    sync(device)
    t0 = time.perf_counter()
    for b, n in batches[1:]:
        step(b, n)
    sync(device)
    return {"what": f"training step (bft, batch {batch_size})", "tokens": sum(int(b.ids.numel()) for b, _ in batches[1:]),
            "seconds": time.perf_counter() - t0, "flops": flops}


def generation(model: Any, tok: Any, prompts: int, device: torch.device) -> dict[str, Any]:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(4, vocab, (int(torch.randint(32, 97, (1,), generator=g)),), generator=g).tolist()
              for _ in range(prompts)]
    gen = TorchGenerator(model, tok, batch_size=16)
    decoding = Decoding(max_new_tokens=32)
    flops = counted(lambda: gen.generate(inputs, decoding))
    t0 = time.perf_counter()
    outs = gen.generate(inputs, decoding)
    sync(device)
    seconds = time.perf_counter() - t0
    new = sum(len(o) for o in outs)
    steps = sum(max(len(outs[i]) for i in chunk) for chunk in length_batches(inputs, gen.batch_size))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"what": "generation (greedy, batches of 16, 32 new tokens)", "tokens": new, "seconds": seconds,
            "flops": flops, "weight_bytes_per_s": steps * weight_bytes / seconds}


# ---- the report ----------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--presets", nargs="+", choices=PRESETS, default=["toy", "mid"])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bfloat16 on a GPU, float32 on a CPU")
    ap.add_argument("--docs", type=int, default=0, help="documents to score (default: 64 toy, 16 mid, 256 1b)")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    ap.add_argument("--batch-size", type=int, default=8, help="records per training step")
    ap.add_argument("--prompts", type=int, default=32, help="prompts to generate from")
    ap.add_argument("--json-out", help="also write the figures as JSON to this path")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    machine = peaks(device)
    peak = machine[f"matmul_{str(dtype).removeprefix('torch.')}"]
    results: dict[str, Any] = {"machine": machine, "dtype": str(dtype), "presets": {}}
    for preset in a.presets:
        made, tok, tw = models(preset, device, dtype)
        docs = a.docs or {"toy": 64, "mid": 16, "1b": 256, "tiny": 16}[preset]
        rows = [scoring(made[0], made[1], tok, docs, device),
                training(made, tok, tw, a.steps, a.batch_size, device, dtype),
                generation(made[1], tok, a.prompts, device)]
        for r in rows:
            r["flops_per_s"] = r["flops"] / r["seconds"]
            r["fraction_of_matmul_peak"] = r["flops_per_s"] / peak
            if machine.get("datasheet_bf16"):
                r["fraction_of_datasheet_bf16"] = r["flops_per_s"] / machine["datasheet_bf16"]
        rows[-1]["fraction_of_read_bandwidth"] = rows[-1]["weight_bytes_per_s"] / machine["read_bytes_per_s"]
        results["presets"][preset] = {"shape": shape_of(made[1]), "workloads": rows}
        del made
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(results, f, indent=2)
    print(report(results))


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"{m['device']}, {m['threads']} threads; workloads in {results['dtype'].removeprefix('torch.')}", "",
             "| peak | measured |", "| --- | --- |",
             f"| dense matmul, float32 | {m['matmul_float32'] / 1e9:,.1f} GFLOP/s |",
             f"| dense matmul, bfloat16 | {m['matmul_bfloat16'] / 1e9:,.1f} GFLOP/s |",
             f"| memory copy (read + write) | {m['copy_bytes_per_s'] / 1e9:,.1f} GB/s |",
             f"| memory read | {m['read_bytes_per_s'] / 1e9:,.1f} GB/s |"]
    if m.get("datasheet_bf16"):
        lines.append(f"| bf16, the vendor's data sheet | {m['datasheet_bf16'] / 1e12:,.0f} TFLOP/s |")
    lines += ["", "| model | workload | tokens | seconds | tokens/s | GFLOP/s | of matmul peak | note |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for preset, got in results["presets"].items():
        s = got["shape"]
        name = f"{preset} ({s['parameters'] / 1e6:.1f}M, vocab {s['vocab']:,})"
        for r in got["workloads"]:
            note = []
            if "useful_flops" in r:
                note.append(f"useful {100 * r['useful_flops'] / r['flops']:.0f}% of FLOPs (padding)")
            if "fraction_of_read_bandwidth" in r:
                note.append(f"weights read at {100 * r['fraction_of_read_bandwidth']:.0f}% of read bandwidth")
            if "fraction_of_datasheet_bf16" in r:
                note.append(f"{100 * r['fraction_of_datasheet_bf16']:.1f}% of the data sheet's bf16")
            lines.append(f"| {name} | {r['what']} | {r['tokens']:,} | {r['seconds']:.2f} | "
                         f"{r['tokens'] / r['seconds']:,.0f} | {r['flops_per_s'] / 1e9:,.1f} | "
                         f"{100 * r['fraction_of_matmul_peak']:.1f}% | {'; '.join(note)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
