"""Index build from scored shards: bftcore's Rust core against polars and the numpy reference.

Usage: python benches/index_build.py SHARD_DIR [--engines rust,read,numpy,polars-streaming,polars-eager]

Each engine runs in a fresh process over the same shards (Arrow IPC, version 2, or Parquet,
version 1, as benches/make_shards.py wrote them) and computes the same aggregates (docs/method.md
§1, "The index"): per (label, bucket) counts and sums, per (label, bucket, token) occurrences,
realised base-favored counts and log-ratio sums, and memberships in B_t. `read` is the plain read
of the shards' bytes, no aggregation: for IPC shards the xxh3-128 of every file through a memory
map (what the Rust core's reader does besides counting), for Parquet shards the decoding of the
same columns into numpy arrays. Prints rows/s and GB/s of shard bytes, the best seconds of
--repeat runs and peak RSS per engine (mapped file pages count), and ratios against the Rust core.
Each engine process runs under an address-space cap (--mem-limit-gb).
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

    from bftcore import _core, _reference
    from bftcore import index as bfti
    from bftcore.shards import count_rows, index_batches, is_ipc, shard_meta, shard_paths

    shards = shard_paths(shard_dir)
    k = int(shard_meta(shards[0])["k"])
    vocab = int(shard_meta(shards[0])["vocab_size"])
    rows = count_rows(shards)
    size = sum(p.stat().st_size for p in shards)

    t0 = time.perf_counter()
    if engine == "rust":
        bfti.build(shards, shard_dir.with_suffix(".bench.bfti"))
    elif engine == "read" and all(is_ipc(p) for p in shards):  # the bytes through a map, hashed
        for p in shards:
            _core.file_xxh3(str(p))
    elif engine == "read":  # the same reader and conversions as bftcore.index.build, no aggregation
        for _ in index_batches(shards, k):
            pass
    elif engine == "numpy":
        names = ("token", "pos", "lp_base", "lp_aligned", "kl", "bf_mass", "retain")

        def as_dicts():
            for _, args in index_batches(shards, k):
                d = dict(zip(names, args[:7]))
                d["label"] = np.asarray(args[8])[args[7]]
                for c, a in zip(("topk_token", "topk_lp_base", "topk_lp_aligned"), args[9:]):
                    d[c] = a.reshape(-1, k)
                yield d
        _reference.index_aggregates(as_dicts(), vocab, k)
    elif engine.startswith("polars"):
        import polars as pl

        paths = [str(p) for p in shards]
        lf = pl.scan_ipc(paths) if all(is_ipc(p) for p in shards) else pl.scan_parquet(paths)
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
    return {"rows": rows, "bytes": size, "seconds": seconds, "rows_per_s": rows / seconds,
            "gb_per_s": size / seconds / 1e9, "peak_rss_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("shards", type=Path)
    ap.add_argument("--engines", default="rust,read,numpy,polars-streaming,polars-eager")
    ap.add_argument("--mem-limit-gb", type=float, default=20.0,
                    help="address-space cap per engine process: an engine that needs more fails "
                         "instead of pushing the machine into swap or the OOM killer")
    ap.add_argument("--repeat", type=int, default=3, help="runs per engine; the best time is kept")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(run_engine(a.child, a.shards)))
        return
    results: dict[str, dict] = {}
    cap = int(a.mem_limit_gb * 2**30)
    for _ in range(a.repeat):  # engines interleaved, so that a noisy minute hits them all
        for engine in a.engines.split(","):
            if "error" in results.get(engine, {}):
                continue
            r = subprocess.run([sys.executable, __file__, str(a.shards), "--child", engine],
                               capture_output=True, text=True,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
            if r.returncode != 0:
                results[engine] = {"error": (r.stderr.strip().splitlines() or ["killed"])[0][:200],
                                   "returncode": r.returncode}
            else:
                got = json.loads(r.stdout.strip().splitlines()[-1])
                best = results.get(engine)
                if best is None or got["seconds"] < best["seconds"]:
                    got["peak_rss_mib"] = max(got["peak_rss_mib"], (best or got)["peak_rss_mib"])
                    results[engine] = got
            print(engine, results[engine], flush=True)
    rust = results.get("rust", {}).get("seconds")
    print("\n| engine | rows | seconds | rows/s | GB/s | peak RSS MiB | time / rust |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for engine, r in results.items():
        if "error" in r:
            print(f"| {engine} | | failed: {r['error']} | | | | |")
            continue
        ratio = f"{r['seconds'] / rust:.2f}x" if rust else ""
        print(f"| {engine} | {r['rows']:.3g} | {r['seconds']:.2f} | {r['rows_per_s']:.3g} | {r['gb_per_s']:.2f} | "
              f"{r['peak_rss_mib']:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
