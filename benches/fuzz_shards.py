"""Fuzz the scored-shard reader: mutated shards must be refused (BadInput) or give exactly the
index of the undamaged shard; any other exception, or a different index, is a finding.

Usage: python benches/fuzz_shards.py [--inputs 1000000] [--workers 2] [--seed 0]

A small synthetic shard (300 rows, k = 4, the real schema: Arrow IPC, shard version 2, its metadata
digest and the xxh3-128 file beside it, or `--without-checksum`), mutated in memory (1-3 bit flips
anywhere, or a cut), written to /dev/shm and indexed with `bftcore.index.build`. Prints the counts
per outcome.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from bftcore import index as bfti
from bftcore.errors import BadInput
from bftcore.shards import write_shard


def small_shard(path: Path, rows: int = 300, k: int = 4, vocab: int = 64) -> None:
    rng = np.random.default_rng(0)
    top = rng.integers(0, vocab, (rows, k), dtype=np.uint32)
    def f32(*s: int) -> np.ndarray:
        return rng.normal(-3, 1, s).astype(np.float32)

    table = pa.table({
        "doc_id": pa.array(np.repeat(np.arange(rows // 50, dtype=np.uint64), 50)),
        "pos": pa.array(np.tile(np.arange(1, 51, dtype=np.uint32), rows // 50)),
        "token": pa.array(rng.integers(0, vocab, rows, dtype=np.uint32)),
        "lp_base": pa.array(f32(rows)), "lp_aligned": pa.array(f32(rows)),
        "kl": pa.array(np.abs(f32(rows))), "bf_mass": pa.array(rng.random(rows, dtype=np.float32)),
        "retain": pa.array(rng.random(rows, dtype=np.float32)),
        "label": pa.array(np.where(np.arange(rows) % 100 < 50, "harmful", "benign")).dictionary_encode(),
        "topk_token": pa.FixedSizeListArray.from_arrays(pa.array(top.ravel()), k),
        "topk_lp_base": pa.FixedSizeListArray.from_arrays(pa.array(f32(rows * k)), k),
        "topk_lp_aligned": pa.FixedSizeListArray.from_arrays(pa.array(f32(rows * k)), k),
    })
    write_shard(table, path, {"format": "bftcore-scored-shard", "version": 1, "base": "b", "aligned": "a",
                              "tokenizer_hash": "t", "k": k, "tau": 0.0, "vocab_size": vocab})


def arrays(raw: bytes) -> bytes:
    n = int.from_bytes(raw[16:24], "little")
    return raw[32 + n:]


def worker(args: tuple[int, int, bytes, bytes, str]) -> collections.Counter:
    seed, count, shard, good, sums = args
    rng = random.Random(seed)
    out: collections.Counter = collections.Counter()
    d = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    path, idx = d / "shard-00000.arrow", d / "x.bfti"
    if sums:
        (d / "shard-00000.arrow.xxh3").write_text(sums)
    for _ in range(count):
        raw = bytearray(shard)
        if rng.random() < 0.2:
            raw = raw[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randint(1, 3)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(raw))
        try:
            bfti.build([path], idx, unverified=not sums)
            out["harmless (same index)" if arrays(idx.read_bytes()) == good else "DIFFERENT INDEX"] += 1
        except BadInput:
            out["refused"] += 1
        except Exception as e:  # noqa: BLE001 - a finding, counted by type
            out[f"UNEXPECTED {type(e).__name__}: {str(e)[:160]}"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--without-checksum", action="store_true", help="Without the .xxh3 file beside the shard (indexed with unverified=True).")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp())
    small_shard(d / "shard-00000.arrow")
    bfti.build([d / "shard-00000.arrow"], d / "good.bfti")
    shard, good = (d / "shard-00000.arrow").read_bytes(), arrays((d / "good.bfti").read_bytes())
    sums = "" if a.without_checksum else (d / "shard-00000.arrow.xxh3").read_text()
    chunks = 200
    per = -(-a.inputs // chunks)
    t0 = time.perf_counter()
    total: collections.Counter = collections.Counter()
    with mp.get_context("fork").Pool(a.workers) as pool:
        for c in pool.imap_unordered(worker, [(a.seed * 100_003 + i, per, shard, good, sums) for i in range(chunks)]):
            total.update(c)
    n = sum(total.values())
    print(f"{n:,} mutated shards ({len(shard):,} bytes each, {'without' if a.without_checksum else 'with'} "
          f"the checksum file) in {time.perf_counter() - t0:.0f} s, {a.workers} workers")
    for k, v in total.most_common():
        print(f"  {k}: {v:,}")


if __name__ == "__main__":
    main()
