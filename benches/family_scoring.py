"""What a real vocabulary costs the scorer: a tiny real-family pair against the toy pair of the same
width and depth, on the same documents (CPU), and where the time goes.

Usage: python benches/family_scoring.py VOCAB_DIR [--family llama-3.1] [--docs 120]

VOCAB_DIR holds llama.cpp's vocabulary GGUFs and chat templates (ggml-vocab-*.gguf, templates/).
Both pairs have the toy world's shape (hidden 256, 2 layers, 4 heads, 2 kv heads); only the
vocabulary (and so the embedding and the head) differs. The documents are the toy world's held-out
records, tokenized by each pair's own tokenizer: throughput is response tokens scored per second.
The profile is torch's, of one scoring pass of the family pair: one line per top operator.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import read_corpus
from bftcore.families import TinySize, cached_pair
from bftcore.models import load_model, load_tokenizer
from bftcore.score import Doc, ScoreConfig, Scorer
from bftcore.toy import toy_world

FILES = {"llama-3.1": ("ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja"),
         "qwen3": ("ggml-vocab-qwen2.gguf", "Qwen-Qwen3-0.6B.jinja"),
         "llama-2": ("ggml-vocab-llama-spm.gguf", None)}


def docs_for(tok: Any, records: list[Any]) -> list[Doc]:
    return [Doc(i, prompt_ids(tok, r.prompt), response_ids(tok, r.response or "", eos=False), r.label)
            for i, r in enumerate(records)]


def timed(base: Any, aligned: Any, tok: Any, docs: list[Doc]) -> tuple[float, int]:
    scorer = Scorer(base, aligned, pad_id=tok.pad_token_id or 0, cfg=ScoreConfig())
    scorer.score(docs[:8])  # warm-up
    t0 = time.perf_counter()
    scorer.score(docs)
    return time.perf_counter() - t0, sum(len(d.response) for d in docs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("vocab_dir", type=Path)
    ap.add_argument("--family", default="llama-3.1", choices=sorted(FILES))
    ap.add_argument("--docs", type=int, default=120)
    a = ap.parse_args()
    tw = toy_world(0).build(["llama"])
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl", tw.data_dir / "benign_heldout.jsonl"])
    records = records[: a.docs]
    toy_tok = load_tokenizer(tw.tokenizer_dir("llama"))
    toy = (load_model(tw.model_dir("llama", "base")), load_model(tw.model_dir("llama", "aligned")))
    vocab, template = FILES[a.family]
    size = TinySize(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512)
    fam_base, fam_aligned = cached_pair(a.family, a.vocab_dir / vocab,
                                        template=a.vocab_dir / "templates" / template if template else None,
                                        size=size)
    fam_tok = load_tokenizer(fam_aligned)
    fam = (load_model(fam_base), load_model(fam_aligned))
    rows = []
    for name, (b, al), tok in (("toy llama", toy, toy_tok), (f"tiny {a.family}", fam, fam_tok)):
        docs = docs_for(tok, records)
        seconds, tokens = timed(b, al, tok, docs)
        rows.append((name, b.config.vocab_size, tokens, seconds))
    print(f"{len(records)} documents, hidden 256, 2 layers, torch threads {torch.get_num_threads()}")
    print("| pair | vocabulary | response tokens | seconds | tokens/s | relative |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, v, tokens, seconds in rows:
        print(f"| {name} | {v:,} | {tokens:,} | {seconds:.2f} | {tokens / seconds:,.0f} "
              f"| {(tokens / seconds) / (rows[0][2] / rows[0][3]):.2f}x |")
    docs = docs_for(fam_tok, records)
    scorer = Scorer(*fam, pad_id=fam_tok.pad_token_id or 0, cfg=ScoreConfig())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        scorer.score(docs)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\nprofile of one pass of tiny {a.family} (self CPU time, top operators)")
    print("| operator | calls | self seconds | share |")
    print("| --- | --- | --- | --- |")
    for e in events[:8]:
        print(f"| {e.key} | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | {e.self_cpu_time_total / total:.0%} |")


if __name__ == "__main__":
    main()
