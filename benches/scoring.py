"""Scoring throughput: bftcore's scorer against a naive loop, on the toy models (CPU).

Usage: python benches/scoring.py [--arch llama] [--docs 360]

The naive peer is what a first script would do: one document at a time (batch 1), the base model
over the whole corpus first with its full-vocabulary log-probs kept on the host, then the aligned
model, combining the two. bftcore runs both models over the same length-sorted batches and keeps
only the statistics. Same documents, same statistics (checked), tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import read_corpus
from bftcore.models import load_model, load_tokenizer
from bftcore.score import Doc, ScoreConfig, Scorer, shard_stats
from bftcore.toy import toy_world
from bftcore.toy.models import new_model


@torch.no_grad()
def naive(base, aligned, docs: list[Doc], k: int) -> tuple[dict[int, np.ndarray], int]:  # type: ignore[no-untyped-def]
    stored = {}
    for d in docs:  # pass 1: the base model, one document at a time
        ids = torch.tensor([d.prompt + d.response])
        lp = torch.log_softmax(base(input_ids=ids).logits[0].float(), -1)
        stored[d.doc_id] = lp[len(d.prompt) - 1: len(d.prompt) - 1 + len(d.response)].numpy()
    out = {}
    for d in docs:  # pass 2: the aligned model, combined with what pass 1 kept
        ids = torch.tensor([d.prompt + d.response])
        la = aligned(input_ids=ids).logits[0, len(d.prompt) - 1: len(d.prompt) - 1 + len(d.response)]
        lb = torch.from_numpy(stored[d.doc_id])
        out[d.doc_id] = shard_stats(lb, la, torch.tensor(d.response), k, 0.0)["kl"].numpy()
    return out, sum(a.nbytes for a in stored.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--docs", type=int, default=360)
    ap.add_argument("--vocab", type=int, default=0,
                    help="instead of the trained toy models, a random-init pair of the toy shape with "
                         "this vocabulary size (what a real 32k-128k vocabulary costs the naive loop)")
    a = ap.parse_args()
    tw = toy_world(0).build([a.arch])
    tok = load_tokenizer(tw.tokenizer_dir(a.arch))
    records, _ = read_corpus([tw.data_dir / "harmful_heldout.jsonl", tw.data_dir / "benign_heldout.jsonl"])
    docs = [Doc(i, prompt_ids(tok, r.prompt), response_ids(tok, r.response or "", eos=False), r.label)
            for i, r in enumerate(records[: a.docs])]
    tokens = sum(len(d.response) for d in docs)
    base, aligned = load_model(tw.model_dir(a.arch, "base")), load_model(tw.model_dir(a.arch, "aligned"))
    what = f"toy {a.arch}"
    if a.vocab:
        config = base.config
        config.vocab_size = a.vocab
        base, aligned = new_model(config, 1), new_model(config, 2)
        what = f"random-init toy-shape {a.arch} with a {a.vocab}-token vocabulary"
    cfg = ScoreConfig()
    scorer = Scorer(base, aligned, pad_id=tok.pad_token_id, cfg=cfg)
    scorer.score(docs[:8])  # warm-up
    t0 = time.perf_counter()
    table = scorer.score(docs)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    kl, held = naive(base, aligned, docs, cfg.k)
    theirs = time.perf_counter() - t0
    np.testing.assert_allclose(np.concatenate([kl[d.doc_id] for d in docs]),
                               table.column("kl").to_numpy(), rtol=1e-4, atol=1e-4)
    print(f"{what}, {len(docs)} documents, {tokens} response tokens, torch threads "
          f"{torch.get_num_threads()}")
    print("| scorer | seconds | tokens/s | speed-up | host bytes held between passes / written |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| naive loop (batch 1, two passes) | {theirs:.2f} | {tokens / theirs:,.0f} | 1.00x "
          f"| {held / 2**20:,.1f} MiB of full-vocabulary log-probs |")
    print(f"| bftcore (length-sorted batches of {cfg.batch_tokens} tokens, both models) | {ours:.2f} "
          f"| {tokens / ours:,.0f} | {theirs / ours:.2f}x | {table.nbytes / 2**20:,.1f} MiB of statistics |")


if __name__ == "__main__":
    main()
