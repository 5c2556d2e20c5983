"""The scored-shard format (docs/formats.md, "Scored shards"): per-token statistics, one row per
response token: doc_id u64, pos u32 (1-based), token u32, lp_base, lp_aligned, kl, bf_mass, retain
f32, label (dictionary of strings), and the base top-k as fixed-size lists topk_token u32[k],
topk_lp_base f32[k], topk_lp_aligned f32[k]. The schema metadata key `bftcore` holds a JSON object
with the format, its version, both models, the tokenizer hash, k, tau and the vocabulary size, and
`digest`, a hash of the rest of that object (a flipped bit in it is caught).

Version 2 (what `score` writes): an Arrow IPC file, uncompressed, `shard-NNNNN.arrow`, with
`shard-NNNNN.arrow.xxh3` beside it (the file's xxh3-128). The Rust core memory-maps it and
aggregates its columns where they lie, hashing the file on the way: nothing is decoded or copied
(`bftcore.index.build`). polars, pyarrow and DuckDB read it as they read any Arrow file.
Version 1 (earlier bftcore): Parquet (lz4, CRC32 per data page), `shard-NNNNN.parquet` with a
`.sha256` beside it; still read, through pyarrow, into the same builder.

A shard is known by its metadata, never by its name: the same files renamed (`part-00000.arrow`,
as Spark, Ray or Dask name theirs) are shards too. Reading lives here with writing:
`index_batches` gives any shard's rows as the index builder's arrays (the reference
implementation's reader, and the builder's for version 1). Kept apart from `score` so that reading
shards never imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bftcore.errors import BadInput
from bftcore.files import atomic_file, atomic_write, file_digest, json_digest

SHARD_FORMAT = "bftcore-scored-shard"
SHARD_VERSION = 2
SUFFIX = ".arrow"  # what `score` writes (version 2); ".parquet": version 1
META_KEY = b"bftcore"
REQUIRED_META = ("base", "aligned", "tokenizer_hash", "k", "tau", "vocab_size")  # what indexing reads
COLUMNS = ["doc_id", "pos", "token", "lp_base", "lp_aligned", "kl", "bf_mass", "retain", "label",
           "topk_token", "topk_lp_base", "topk_lp_aligned"]
ROW_GROUP = 1 << 16  # rows per Parquet row group (version 1)
IPC_BATCH = 1 << 14  # rows per IPC record batch: 4 MiB at k = 20, hashed and counted while in cache
READ_BATCH = 1 << 16  # rows per record batch when reading through pyarrow: bounds memory
INDEX_COLUMNS = ["token", "pos", "lp_base", "lp_aligned", "kl", "bf_mass", "retain", "label",
                 "topk_token", "topk_lp_base", "topk_lp_aligned"]  # all but doc_id


def is_ipc(path: Path) -> bool:
    return Path(path).suffix == SUFFIX


# ---- finding shards -----------------------------------------------------------------------------
def is_shard(path: Path) -> bool:
    """Whether a file is a scored shard, by the bftcore metadata in its Parquet footer (whatever
    its name). A damaged or newer shard counts: reading it (`shard_meta`) says why it is refused."""
    return _footer(path) == "shard"


def _schema(path: Path) -> Any:
    """The Arrow schema of a shard file (IPC or Parquet), from its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_ipc(path):
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).schema
    return pq.read_schema(path)


def _footer(path: Path) -> str:
    """"shard", "parquet" (a Parquet or Arrow file of something else) or "unreadable"."""
    import pyarrow as pa

    try:
        metadata = _schema(path).metadata or {}
    except (OSError, ValueError, pa.ArrowException):  # not Parquet/Arrow, or a footer beyond reading
        return "unreadable"
    return "shard" if META_KEY in metadata else "parquet"


def shard_paths(directory: Path) -> list[Path]:
    """The scored shards in a directory, sorted by name: its *.arrow and *.parquet files when they
    are shards (whatever their names), none when they are not (a corpus). BadInput when it holds
    both kinds."""
    if not Path(directory).is_dir():  # not written yet: no shards
        return []
    files = sorted(p for p in Path(directory).iterdir() if p.suffix in (SUFFIX, ".parquet")
                   and p.is_file() and not p.name.startswith("."))
    kinds = {p: _footer(p) for p in files}
    shards = [p for p in files if kinds[p] == "shard"]
    others = [p for p in files if kinds[p] != "shard"]
    if shards and others:
        other = ("an unreadable one (a damaged shard?)" if kinds[others[0]] == "unreadable"
                 else "a Parquet file without bftcore metadata")
        raise BadInput(f"{directory}: mixes scored shards ({shards[0].name}) with other files: "
                       f"{others[0].name} is {other}; keep scored shards in a directory of their own")
    return shards


def is_shard_dir(path: Path) -> bool:
    """A directory of scored shards (as opposed to a corpus directory); BadInput when it mixes both."""
    return path.is_dir() and bool(shard_paths(path))


def count_rows(shards: Sequence[Path]) -> int:
    """Rows (response tokens) in all the shards, from their footers (and IPC batch headers)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total = 0
    for p in shards:
        try:
            if is_ipc(p):
                with pa.memory_map(str(p)) as source:
                    reader = pa.ipc.open_file(source)
                    total += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            else:
                total += pq.ParquetFile(p).metadata.num_rows
        except Exception as e:  # pyarrow raises several types (KeyError among them) for damaged files
            raise BadInput(f"{p}: unreadable ({e})") from e
    return total


def shard_meta(path: Path) -> dict[str, Any]:
    """The bftcore metadata of a scored shard, or BadInput when it is not one."""
    try:
        schema = _schema(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        kind = "Arrow IPC" if is_ipc(path) else "Parquet"
        raise BadInput(f"{path}: not a readable {kind} file ({e})") from e
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise BadInput(f"{path}: not a bftcore scored shard (no bftcore metadata)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: unreadable bftcore metadata ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        raise BadInput(f"{path}: not a bftcore scored shard")
    try:
        version = int(meta.get("version", 0))
    except (TypeError, ValueError) as e:
        raise BadInput(f"{path}: unreadable shard version {meta.get('version')!r}") from e
    if version > SHARD_VERSION:
        raise BadInput(f"{path}: shard format version {meta['version']} is newer than this "
                       f"bftcore reads ({SHARD_VERSION}); upgrade bftcore")
    if ("digest" in meta or version >= 2) and meta.get("digest") != _digest(meta):
        raise BadInput(f"{path}: the bftcore metadata does not match its digest (damaged file)")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise BadInput(f"{path}: the bftcore metadata lacks {', '.join(missing)} (damaged file?)")
    return meta


def _digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return json_digest(body)[:16]


def checksum_path(path: Path) -> Path:
    """The file beside a shard that holds the digest of its bytes: xxh3-128 for an IPC shard
    (checked by the core as it reads), SHA-256 for a Parquet one (Parquet checksums its data pages
    only; page headers and the footer are covered by this)."""
    return path.with_name(f"{path.name}.xxh3" if is_ipc(path) else f"{path.name}.sha256")


def expected_digest(path: Path) -> str | None:
    """The digest written beside a shard; None for shards written before checksums existed."""
    sums = checksum_path(path)
    if not sums.is_file():
        return None
    return (sums.read_text(encoding="ascii", errors="replace").split() or [""])[0]


def shard_digest(path: Path, ipc: bool | None = None) -> str:
    """The digest of a shard's bytes, of the kind its checksum file holds (`ipc`: of an IPC
    shard's, whatever the file's name)."""
    from bftcore import _core

    return str(_core.file_xxh3(str(path))) if (is_ipc(path) if ipc is None else ipc) else file_digest(path)


def verify_checksum(path: Path) -> None:
    """BadInput when the shard's bytes differ from the checksum written beside it (shards
    written before checksums existed have none and are read as they are)."""
    want = expected_digest(path)
    if want is not None and shard_digest(path) != want.lower():
        raise BadInput(f"{path}: checksum mismatch (the file changed after it was written: damaged?)")


def open_shard(path: Path) -> Any:
    """A Parquet reader of a version-1 shard that verifies every data page's checksum as it reads."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20, page_checksum_verification=True)


def _ipc_table(table: Any) -> Any:
    """The table with the types an IPC shard holds: labels a dictionary of uint16 codes over one
    dictionary (an IPC file has one per column), top-k as fixed-size lists."""
    import pyarrow as pa
    import pyarrow.compute as pc

    label = table.column("label")
    if pa.types.is_dictionary(label.type):
        label = label.cast(pa.string())
    codes = pc.dictionary_encode(label.combine_chunks())
    label = pa.DictionaryArray.from_arrays(codes.indices.cast(pa.uint16()), codes.dictionary)
    if len(codes.dictionary) > 65535:
        raise BadInput("more than 65535 distinct labels in one shard")
    return table.set_column(table.schema.get_field_index("label"), "label", label)


def write_shard(table: Any, path: Path, meta: dict[str, Any]) -> None:
    """Write a shard atomically (a temporary file beside it, synced, then renamed): Arrow IPC for
    a `.arrow` path (version 2), Parquet for a `.parquet` one (version 1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {**meta, "version": SHARD_VERSION if is_ipc(path) else 1}
    meta["digest"] = _digest(meta)
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_file(path, durable=True) as tmp:
        if is_ipc(path):
            table = _ipc_table(table)
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table, max_chunksize=IPC_BATCH)
        else:  # lz4 decodes ~30% faster than zstd when indexing, for ~10% more bytes
            pq.write_table(table, tmp, compression="lz4", row_group_size=ROW_GROUP, write_page_checksum=True)
        # the checksum goes into place first: a shard is never there without its own
        atomic_write(checksum_path(path), f"{shard_digest(tmp, is_ipc(path))}  {path.name}\n", durable=True)


def read_shard_table(path: Path, columns: Sequence[str]) -> Any:
    """Some columns of a whole shard as a pyarrow Table (either version)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_ipc(path):
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all().select(list(columns))
    return pq.read_table(path, columns=list(columns))


# ---- decoding shards for the index builder --------------------------------------------------------
def index_batches(shards: Sequence[Path], k: int) -> Iterator[tuple[Path, tuple[Any, ...]]]:
    """(shard, the arguments of `IndexBuilder.add_batch`) for every record batch of every shard.

    Each column is a numpy view of the Arrow buffer where its type allows (no copy); labels are
    dictionary codes (uint16) and their names. A damaged or foreign shard is BadInput naming it."""
    import pyarrow.compute as pc

    for path in shards:
        try:
            for rb in _record_batches(path):
                labels = pc.dictionary_encode(rb.column("label"))
                if labels.null_count:
                    raise BadInput(f"{path}: column label has missing values")
                if len(labels.dictionary) > 65535:
                    raise BadInput(f"{path}: more than 65535 distinct labels")
                codes = labels.indices.to_numpy(zero_copy_only=False).astype(np.uint16)
                yield path, (
                    _column(rb, "token", np.uint32), _column(rb, "pos", np.uint32),
                    _column(rb, "lp_base", np.float32), _column(rb, "lp_aligned", np.float32),
                    _column(rb, "kl", np.float32), _column(rb, "bf_mass", np.float32),
                    _column(rb, "retain", np.float32), codes,
                    [str(x) for x in labels.dictionary.to_pylist()],
                    _topk(rb, "topk_token", k, np.uint32), _topk(rb, "topk_lp_base", k, np.float32),
                    _topk(rb, "topk_lp_aligned", k, np.float32),
                )
        except BadInput as e:
            raise BadInput(f"{path}: {e}") if not str(e).startswith(str(path)) else e from e
        except KeyError as e:
            raise BadInput(f"{path}: missing column {e}") from e
        except (OSError, ValueError, TypeError) as e:  # pyarrow's IO and format errors
            raise BadInput(f"{path}: unreadable ({e})") from e


def _record_batches(path: Path) -> Iterator[Any]:
    """The index columns of a shard, a record batch at a time."""
    import pyarrow as pa

    if is_ipc(path):
        # the map stays open while any batch's buffers refer to it (they hold it), not longer
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i).select(INDEX_COLUMNS)
        return
    # no pre-buffering (it reads whole files ahead, 3x slower here and memory-hungry); page
    # checksums verified
    yield from open_shard(path).iter_batches(batch_size=READ_BATCH, columns=INDEX_COLUMNS)


def _column(batch: Any, name: str, dtype: Any) -> np.ndarray:
    col = batch.column(name)
    if col.null_count:
        raise BadInput(f"column {name} has missing values")
    return _exact(_numpy(col), name, dtype)


def _topk(batch: Any, name: str, k: int, dtype: Any) -> np.ndarray:
    values = batch.column(name).flatten()
    if len(values) != k * batch.num_rows:
        raise BadInput(f"column {name} does not hold k={k} values per row")
    return _exact(_numpy(values), name, dtype)


def _numpy(array: Any) -> np.ndarray:
    """A view of the Arrow buffer; another physical type: one conversion, bounded by the batch."""
    import pyarrow as pa

    try:
        return array.to_numpy(zero_copy_only=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return array.to_numpy(zero_copy_only=False)


def _exact(arr: np.ndarray, name: str, dtype: Any) -> np.ndarray:
    """The column as `dtype` when that loses nothing (float32 from float64 aside), else BadInput:
    a shard whose schema says int32 where a scored shard has uint32 is damaged, not convertible."""
    if arr.dtype == dtype:
        return arr
    if np.dtype(dtype).kind == "f" and arr.dtype.kind == "f":
        return np.ascontiguousarray(arr, dtype=dtype)
    raise BadInput(f"column {name} holds {arr.dtype}, a scored shard holds {np.dtype(dtype)} (damaged?)")
