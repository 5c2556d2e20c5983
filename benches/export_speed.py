"""Deployed generation speed: the exported toy model in llama.cpp (GGUF F16, Q8_0) and ONNX Runtime
against PyTorch on the CPU, side by side in one run; and export time per dtype.

Usage: python benches/export_speed.py [--arch llama] [--repeats 3]

The aligned toy model (it writes whole answers under a prefilling attack, so every row generates
its 64 tokens) on the 180 held-out harmful prompts with a 10-token harmful prefix, greedy. Every
backend gets the same token ids. llama.cpp decodes one sequence at a time, so PyTorch and
onnxruntime are measured both one at a time (like for like) and batched (64, their best).
Generated tokens per second, median of the repeats, and the ratio to PyTorch at the same batch
size; the generated tokens are checked equal to PyTorch's for F32-exact backends (ONNX) and
reported as the share of identical rows for the quantized ones.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bftcore import export as ex
from bftcore.backends import LlamaCppGenerator, OnnxGenerator
from bftcore.chat import response_ids
from bftcore.corpus import read_corpus
from bftcore.generate import Decoding, TorchGenerator
from bftcore.models import load_model, load_tokenizer
from bftcore.toy import toy_world


def timed(fn, repeats: int):  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    tw = toy_world(0).build([a.arch])
    src = tw.model_dir(a.arch, "aligned")
    tok = load_tokenizer(src)
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])
    torch_gen = TorchGenerator(load_model(src), tok)
    inputs = [torch_gen.prompt_ids(r.prompt) + response_ids(tok, r.response or "", eos=False)[:10] for r in records]
    d = Decoding(max_new_tokens=64)
    work = Path(tempfile.mkdtemp(prefix="bftcore-bench-"))

    export_rows = []
    for to, dtype in (("gguf", "f32"), ("gguf", "f16"), ("gguf", "bf16"), ("gguf", "q8_0"), ("gguf", "q4_k_m"),
                      ("onnx", "f32")):
        out = work / (f"{dtype}.gguf" if to == "gguf" else "onnx")
        sec, _ = timed(functools.partial(ex.export, src, to, out, dtype), a.repeats)
        size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.iterdir())
        export_rows.append((f"{to} {dtype}", sec, size))

    gens = {
        ("PyTorch", 1): TorchGenerator(torch_gen.model, tok, batch_size=1),
        ("PyTorch", 64): TorchGenerator(torch_gen.model, tok, batch_size=64),
        ("llama.cpp F16", 1): LlamaCppGenerator(work / "f16.gguf"),
        ("llama.cpp Q8_0", 1): LlamaCppGenerator(work / "q8_0.gguf"),
        ("onnxruntime", 1): OnnxGenerator(work / "onnx", batch_size=1),
        ("onnxruntime", 64): OnnxGenerator(work / "onnx", batch_size=64),
    }
    results = {}
    for key, gen in gens.items():
        sec, outs = timed(lambda gen=gen: gen.generate(inputs, d), a.repeats)
        results[key] = (sec, outs)
    ref = {b: results[("PyTorch", b)][1] for b in (1, 64)}
    assert results[("onnxruntime", 64)][1] == ref[64], "onnxruntime tokens differ from PyTorch"

    print(f"toy {a.arch} aligned, {len(inputs)} prompts + 10-token prefix, 64 new tokens greedy, "
          f"median of {a.repeats}; torch threads {torch.get_num_threads()}")
    print("| backend | batch | tokens | seconds | tokens/s | vs PyTorch (same batch) | rows identical to PyTorch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (name, batch), (sec, outs) in results.items():
        n = sum(len(o) for o in outs)
        base = results[("PyTorch", batch)][0]
        same = sum(x == y for x, y in zip(outs, ref[batch]))
        print(f"| {name} | {batch} | {n:,} | {sec:.2f} | {n / sec:,.0f} | {base / sec:.2f}x | {same}/{len(outs)} |")
    print()
    print("| export | seconds | size |")
    print("| --- | --- | --- |")
    for name, sec, size in export_rows:
        print(f"| {name} | {sec:.2f} | {size / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
