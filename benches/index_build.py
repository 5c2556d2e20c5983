"""Index build from scored shards: bftcore's Rust core against polars and the numpy reference.

Usage: python benches/index_build.py SHARD_DIR [--engines rust,read,numpy,polars-streaming,polars-eager]

Each engine runs in a fresh process over the same shards and computes the same aggregates
(METHOD.md §1 "The index"): per (label, bucket) counts and sums, per (label, bucket, token)
occurrences, realised base-favored counts and log-ratio sums, and memberships in B_t. `read` is the
plain read of the same columns as numpy arrays: the limit that the reading itself sets.
Prints rows/s, seconds and peak RSS per engine, and ratios against the Rust core.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def run_engine(engine: str, shard_dir: Path) -> dict[str, float]:
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from bftcore import _reference
    from bftcore import index as bfti
    from bftcore.score import shard_paths

    shards = shard_paths(shard_dir)
    k = int(bfti.shard_meta(shards[0])["k"])
    vocab = int(bfti.shard_meta(shards[0])["vocab_size"])
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)

    def batches():  # the same reader as bftcore.index.build
        for p in shards:
            for rb in pq.ParquetFile(p).iter_batches(batch_size=bfti.READ_BATCH):
                labels = pc.dictionary_encode(rb.column("label"))
                yield rb, labels

    t0 = time.perf_counter()
    if engine == "rust":
        bfti.build(shards, shard_dir.with_suffix(".bench.bfti"))
    elif engine == "read":
        total = 0
        for rb, labels in batches():
            cols = [bfti._column(rb, c, np.float32) for c in
                    ("token", "pos", "lp_base", "lp_aligned", "kl", "bf_mass", "retain")]
            tops = [bfti._topk(rb, c, k, np.float32) for c in
                    ("topk_token", "topk_lp_base", "topk_lp_aligned")]
            codes = labels.indices.to_numpy(zero_copy_only=False)
            total += len(cols[0]) + len(tops[0]) + len(codes)
    elif engine == "numpy":
        def as_dicts():
            for rb, labels in batches():
                names = np.asarray(labels.dictionary.to_pylist())
                d = {c: bfti._column(rb, c, np.float32) for c in
                     ("token", "pos", "lp_base", "lp_aligned", "kl", "bf_mass", "retain")}
                d["label"] = names[labels.indices.to_numpy(zero_copy_only=False)]
                for c in ("topk_token", "topk_lp_base", "topk_lp_aligned"):
                    d[c] = bfti._topk(rb, c, k, np.float32).reshape(-1, k)
                yield d
        _reference.index_aggregates(as_dicts(), vocab, k)
    elif engine.startswith("polars"):
        import polars as pl

        lf = pl.scan_parquet([str(p) for p in shards])
        if engine == "polars-eager":
            lf = lf.collect().lazy()
        bucket = pl.col("pos").cast(pl.Float64).log(2).ceil().clip(0, 9).cast(pl.UInt8).alias("bucket")
        rho = (pl.col("lp_base") - pl.col("lp_aligned")).alias("rho")
        tops = ("topk_token", "topk_lp_base", "topk_lp_aligned")
        base = lf.with_columns(bucket, rho, pl.col("label").cast(pl.String),
                               *(pl.col(c).arr.to_list() for c in tops))
        realised = (pl.col("topk_token").list.contains(pl.col("token")) & (pl.col("rho") > 0))
        per_bucket = base.group_by("label", "bucket").agg(
            pl.len().alias("count"), pl.col("kl").cast(pl.Float64).sum(),
            pl.col("bf_mass").cast(pl.Float64).sum(), pl.col("retain").cast(pl.Float64).sum(),
            pl.col("rho").cast(pl.Float64).sum(), realised.sum().alias("bf_realised"))
        per_token = base.group_by("label", "bucket", "token").agg(
            pl.len().alias("occ"), realised.sum().alias("bf"), pl.col("rho").cast(pl.Float64).sum())
        members = (base.select("label", "bucket", *tops)
                   .explode(*tops)
                   .filter(pl.col("topk_lp_base") - pl.col("topk_lp_aligned") > 0)
                   .group_by("label", "bucket", "topk_token").len())
        streaming = engine == "polars-streaming"
        pl.collect_all([per_bucket, per_token, members],
                       engine="streaming" if streaming else "in-memory")
    else:
        raise SystemExit(f"unknown engine {engine}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds, "peak_rss_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("--engines", default="rust,read,numpy,polars-streaming,polars-eager")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_engine(a.child, a.shards)))
        return
    results = {}
    for engine in a.engines.split(","):
        r = subprocess.run([sys.executable, __file__, str(a.shards), "--child", engine],
                           capture_output=True, text=True)
        if r.returncode != 0:
            results[engine] = {"error": (r.stderr.strip().splitlines() or ["killed"])[-1][:200],
                               "returncode": r.returncode}
        else:
            results[engine] = json.loads(r.stdout.strip().splitlines()[-1])
        print(engine, results[engine], flush=True)
    rust = results.get("rust", {}).get("seconds")
    print("\n| engine | rows | seconds | rows/s | peak RSS MiB | time / rust |")
    print("| --- | --- | --- | --- | --- | --- |")
    for engine, r in results.items():
        if "error" in r:
            print(f"| {engine} | | failed: {r['error']} | | | |")
            continue
        ratio = f"{r['seconds'] / rust:.2f}x" if rust else ""
        print(f"| {engine} | {r['rows']:.3g} | {r['seconds']:.1f} | {r['rows_per_s']:.3g} | "
              f"{r['peak_rss_mib']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
