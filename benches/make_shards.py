"""Synthetic scored shards for the index benchmarks (the schema of docs/formats.md "Scored shards", bftcore metadata).

Usage: python benches/make_shards.py --rows 10000000 --out /tmp/shards-1e7 [--k 20] [--vocab 32000]
                                     [--format arrow|parquet]

`--format arrow` (the default) writes shard version 2 (Arrow IPC) as `bftcore score` does now;
`parquet` writes version 1, as bftcore did before.

Realistic shapes, not realistic models: Zipf-distributed tokens, documents of 50-400 tokens,
two labels, log-probs and top-k drawn at random. Deterministic for a seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa

from bftcore.shards import SUFFIX, write_shard

ROWS_PER_SHARD = 1_000_000


def shard(rng: np.random.Generator, n: int, k: int, vocab: int, first_doc: int) -> tuple[pa.Table, int]:
    lengths = rng.integers(50, 400, size=n // 50 + 2)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n) + 1]
    lengths[-1] -= lengths.sum() - n
    doc = np.repeat(np.arange(first_doc, first_doc + len(lengths), dtype=np.uint64), lengths)
    pos = np.concatenate([np.arange(1, m + 1, dtype=np.uint32) for m in lengths])
    token = np.minimum(rng.zipf(1.3, n) - 1, vocab - 1).astype(np.uint32)
    label = np.where(doc % 2 == 0, "harmful", "benign")
    top = rng.integers(0, vocab, (n, k), dtype=np.uint32)
    top[::3, 0] = token[::3]  # the realised token is often the base's top-1
    lb = -np.sort(rng.exponential(3.0, (n, k)).astype(np.float32), axis=1)
    la = lb + rng.normal(0, 1.0, (n, k)).astype(np.float32)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    table = pa.table({
        "doc_id": doc, "pos": pos, "token": token,
        "lp_base": f32(-rng.exponential(2.0, n)), "lp_aligned": f32(-rng.exponential(2.0, n)),
        "kl": f32(rng.exponential(0.5, n)), "bf_mass": f32(rng.random(n)), "retain": f32(rng.random(n)),
        "label": pa.array(label).dictionary_encode(),
        "topk_token": pa.FixedSizeListArray.from_arrays(pa.array(top.reshape(-1)), k),
        "topk_lp_base": pa.FixedSizeListArray.from_arrays(pa.array(lb.reshape(-1)), k),
        "topk_lp_aligned": pa.FixedSizeListArray.from_arrays(pa.array(la.reshape(-1)), k),
    })
    return table, first_doc + len(lengths)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--format", choices=["arrow", "parquet"], default="arrow")
    a = ap.parse_args()
    suffix = SUFFIX if a.format == "arrow" else ".parquet"
    a.out.mkdir(parents=True, exist_ok=True)
    meta = {"format": "bftcore-scored-shard", "version": 1, "base": "synthetic-base",
            "aligned": "synthetic-aligned", "tokenizer_hash": "synthetic", "k": a.k, "tau": 0.0,
            "vocab_size": a.vocab}
    rng = np.random.default_rng(a.seed)
    doc, left, i = 0, a.rows, 0
    while left > 0:
        n = min(ROWS_PER_SHARD, left)
        table, doc = shard(rng, n, a.k, a.vocab, doc)
        write_shard(table, a.out / f"shard-{i:05d}{suffix}", meta)  # as bftcore score writes them
        left, i = left - n, i + 1
    print(f"{a.rows} rows in {i} shards under {a.out}")


if __name__ == "__main__":
    main()
