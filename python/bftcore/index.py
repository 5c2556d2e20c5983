"""The base-favored-token index: built by the Rust core from scored shards, queried as polars.

    build(shards, out)            one streaming pass over scored shards -> a `.bfti` file
    merge(paths, out)             exact merge of partial indexes (multi-GPU, multi-machine)
    Index(path)                   mmap-opened index: curves(), top_tokens(), token_histogram()

Arrow IPC shards (version 2) are memory-mapped and counted where they lie by the core, which
hashes each file on the way; Parquet shards (version 1) are decoded a record batch at a time
(`shards.index_batches`) in a reader thread, while the core counts with the GIL released.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from bftcore import _core
from bftcore.buckets import bucket_labels
from bftcore.errors import BadInput
from bftcore.shards import (
    checksum_path,
    count_rows,
    expected_digest,
    index_batches,
    is_ipc,
    shard_meta,
    verify_checksum,
)

BUCKET_FIELDS = ["count", "kl_sum", "bf_mass_sum", "retain_sum", "bf_realised", "log_ratio_sum"]


def build(shards: Sequence[Path], out: Path, *, edges: Sequence[int] | None = None,
          progress: Callable[[str, int, int], None] | None = None, unverified: bool = False) -> Index:
    """Aggregate scored shards into `out` (.bfti), in one streaming pass. An IPC shard is read only
    with its checksum file beside it (Arrow's own structure checks miss most damage to its
    values); `unverified` reads one without."""
    if not shards:
        raise BadInput("no scored shards to index")
    for p in shards:
        if not is_ipc(p):  # an IPC shard's checksum is checked by the core as it reads it
            verify_checksum(p)
        elif not unverified and not checksum_path(p).is_file():
            raise BadInput(f"{p}: no checksum file {checksum_path(p).name} beside it (copy it with the "
                           "shard, or index with --unverified to read shards without one)")
    metas = [shard_meta(p) for p in shards]
    first = metas[0]
    for p, m in zip(shards, metas):
        for key in ("base", "aligned", "tokenizer_hash", "k", "tau", "vocab_size"):
            if m.get(key) != first.get(key):
                raise BadInput(f"{p}: scored with another {key} than {shards[0]} "
                               f"({m.get(key)!r} vs {first.get(key)!r})")
    k, vocab = int(first["k"]), int(first["vocab_size"])
    meta = {"base": first["base"], "aligned": first["aligned"], "shards": len(shards),
            "created_by": f"bftcore {_core.__version__}"}
    builder = _core.IndexBuilder(vocab, k, float(first["tau"]), first["tokenizer_hash"],
                                 json.dumps(meta), None if edges is None else list(edges))
    total = count_rows(shards)
    ipc = [p for p in shards if is_ipc(p)]
    for path in ipc:  # version 2: the core maps the file and counts its columns in place
        try:
            builder.add_ipc_shard(str(path), k, expected_digest(path))
        except _core.CoreError as e:
            raise BadInput(" ".join(str(e).split())) from e
        except ValueError as e:  # (not a CoreError) the checksum file's text, parsed once, by the core
            raise BadInput(f"{checksum_path(path)}: {e} (damaged?)") from e
        except OSError as e:
            raise BadInput(f"{path}: unreadable ({e.strerror or e})") from e
        if progress:
            progress("indexing", builder.rows, total)
    for path, args in _prefetch(index_batches([p for p in shards if not is_ipc(p)], k)):
        try:
            builder.add_batch(*args)
        except (_core.CoreError, TypeError) as e:  # TypeError: an array of another dtype
            raise BadInput(f"{path}: {' '.join(str(e).split())}") from e
        if progress:
            progress("indexing", builder.rows, total)
    _write(builder, out)
    return Index(out)


T = TypeVar("T")


def _prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run `items` in a reader thread, `depth` ahead: Parquet decoding (pyarrow) overlaps the
    aggregation (the core), both with the GIL released. Memory stays bounded by `depth` batches."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def reader() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # noqa: BLE001 (not swallowed: handed to the consumer, raised there)
            q.put(e)

    thread = threading.Thread(target=reader, name="bftcore-shard-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # stop the reader and wait for it: a thread left inside pyarrow when the interpreter
        # exits is killed mid-call (std::terminate), turning a clean error into an abort
        stop.set()
        while thread.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _write(builder: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        builder.write(str(out))
    except _core.CoreError as e:
        raise BadInput(f"{out}: {e}") from e
    except OSError as e:  # the core keeps the kind: disk full, permission denied, ...
        raise BadInput(f"{out}: cannot write the index ({e.strerror or e})") from e


def merge(paths: Sequence[Path], out: Path) -> Index:
    """Exact merge: the index of the union of the inputs' rows."""
    if not paths:
        raise BadInput("nothing to merge")
    try:
        _core.merge_indexes([str(p) for p in paths], str(out))
    except _core.CoreError as e:
        raise BadInput(str(e)) from e
    except OSError as e:
        raise BadInput(f"{e.filename or out}: {e.strerror or e}") from e
    return Index(out)


class Index:
    """A `.bfti` file opened by mmap; every query returns a polars DataFrame."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BadInput(f"{self.path}: no such index file")
        try:
            self._core = _core.Index.open(str(self.path))
        except _core.CoreError as e:
            raise BadInput(f"{self.path}: {e}") from e
        except OSError as e:
            raise BadInput(f"{self.path}: {e.strerror or e}") from e
        self.header: dict[str, Any] = json.loads(self._core.header_json)

    @property
    def labels(self) -> list[str]:
        return list(self.header["labels"])

    @property
    def edges(self) -> list[int]:
        return list(self.header["bucket_edges"])

    def resolve_label(self, label: str | None = None) -> str:
        """`label` when the index has it (else BadInput); None: harmful if present, else the first."""
        if label is None:
            return "harmful" if "harmful" in self.labels else self.labels[0]
        if label not in self.labels:
            raise BadInput(f"no label {label!r} in {self.path} (labels: {', '.join(self.labels)})")
        return label

    def curves(self) -> Any:
        """One row per (label, bucket): the aggregates and their per-token means."""
        import polars as pl

        rows = []
        names = bucket_labels(self.edges)
        for label in self.labels:
            t = self._core.bucket_table(label)
            for b, lo in enumerate(self.edges):
                hi = self.edges[b + 1] - 1 if b + 1 < len(self.edges) else None
                n = int(t["count"][b])
                kl, mass, retain, ratio = (float(x) for x in t["sums"][b])
                bf = int(t["bf_realised"][b])
                rows.append({
                    "label": label, "bucket": b, "positions": names[b], "lo": lo, "hi": hi,
                    "count": n, "kl_sum": kl, "bf_mass_sum": mass, "retain_sum": retain,
                    "bf_realised": bf, "log_ratio_sum": ratio,
                    "mean_kl": kl / n if n else None, "mean_bf_mass": mass / n if n else None,
                    "mean_retain": retain / n if n else None, "bf_rate": bf / n if n else None,
                    "mean_log_ratio": ratio / n if n else None,
                })
        return pl.DataFrame(rows, schema_overrides={"hi": pl.Int64})

    def top_tokens(self, bucket: int, n: int = 20, label: str | None = None,
                   tokenizer: Any = None) -> Any:
        """The n tokens most often base-favored (in B_t) at positions of `bucket`."""
        import polars as pl

        label = self.resolve_label(label)
        if not 0 <= bucket < len(self.edges):
            raise BadInput(f"no bucket {bucket} (buckets 0-{len(self.edges) - 1})")
        t = self._core.top_tokens(label, bucket, n)
        ids = t["token"].tolist()
        return pl.DataFrame({
            "bucket": [bucket] * len(ids), "token": ids,
            "text": [_decode(tokenizer, i) for i in ids],
            "base_favored": t["member"].tolist(), "occurrences": t["occ"].tolist(),
            "realised_base_favored": t["bf"].tolist(), "log_ratio_sum": t["log_ratio_sum"].tolist(),
        }, schema_overrides={"text": pl.String})

    def token_histogram(self, token: int, label: str | None = None) -> Any:
        """One token's counts per position bucket."""
        import polars as pl

        label = self.resolve_label(label)
        if not 0 <= token < int(self.header["vocab_size"]):
            raise BadInput(f"token id {token} is outside the vocabulary of {self.header['vocab_size']}")
        t = self._core.token_histogram(label, token)
        return pl.DataFrame({
            "bucket": list(range(len(self.edges))), "positions": bucket_labels(self.edges),
            "occurrences": t["occ"].tolist(), "realised_base_favored": t["bf"].tolist(),
            "base_favored": t["member"].tolist(), "log_ratio_sum": t["log_ratio_sum"].tolist(),
        })

    def to_json(self, *, top: int = 10, tokenizer: Any = None, bucket: int | None = None,
                label: str | None = None) -> dict[str, Any]:
        """The stable `inspect --json` object: header, buckets, and the top tokens of `label`
        (default: harmful, else the first label) in `bucket` (default: every bucket)."""
        curves = self.curves()
        buckets = [{k: r[k] for k in ("label", "bucket", "lo", "hi", *BUCKET_FIELDS)}
                   for r in curves.iter_rows(named=True)]
        top_tokens = []
        if self.labels:  # an index of no tokens has none
            label = self.resolve_label(label)
            for b in [bucket] if bucket is not None else range(len(self.edges)):
                df = self.top_tokens(b, top, label, tokenizer)
                top_tokens.append({"label": label, "bucket": b, "tokens": [
                    {"token": r["token"], "text": r["text"], "base_favored": r["base_favored"]}
                    for r in df.iter_rows(named=True)]})
        return {"header": self.header, "buckets": buckets, "top_tokens": top_tokens}


def _decode(tokenizer: Any, token: int) -> str | None:
    if tokenizer is None:
        return None
    return str(tokenizer.decode([token]))


def plot_signal_decay(index: Index, path: Path) -> None:
    """KL, retention R_t, M_t and base-favored rate per position bucket, per label (log x axis)."""
    from bftcore.plots import pyplot, save_figure

    plt = pyplot()
    curves = index.curves()
    panels = [("mean_kl", "KL(π_a ‖ π_b) [nats]", True), ("mean_retain", "retention R_t", False),
              ("mean_bf_mass", "M_t (aligned mass on B_t)", False),
              ("bf_rate", "realised base-favored rate", False)]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), constrained_layout=True)
    for ax, (col, title, logy) in zip(axes, panels):
        for label in index.labels:
            df = curves.filter((curves["label"] == label) & (curves["count"] > 0))
            x = [lo if hi is None else (lo * hi) ** 0.5 for lo, hi in zip(df["lo"], df["hi"])]
            ax.plot(x, df[col].to_list(), marker="o", label=label)
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("response position")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"signal decay: {Path(index.header['meta'].get('aligned', '')).name} vs "
                 f"{Path(index.header['meta'].get('base', '')).name}, {index.header['rows']} tokens")
    save_figure(fig, path)
