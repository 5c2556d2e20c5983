"""The scored-shard format (DESIGN.md §2): Parquet files of per-token statistics.

One row per response token: doc_id u64, pos u32 (1-based), token u32, lp_base, lp_aligned, kl,
bf_mass, retain f32, label str, and the base top-k as list columns topk_token u32[k],
topk_lp_base f32[k], topk_lp_aligned f32[k]. The file metadata key `bftcore` holds a JSON object
with the format, both models, the tokenizer hash, k, tau and the vocabulary size, and `digest`, a
hash of the rest of that object (a flipped bit in the footer's metadata is caught). Data pages
carry CRC32 checksums, verified on every read (a flipped bit in the data is caught).
Kept apart from `score` so that reading shards never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bftcore.errors import BadInput

SHARD_FORMAT = "bftcore-scored-shard"
SHARD_VERSION = 1
META_KEY = b"bftcore"
COLUMNS = ["doc_id", "pos", "token", "lp_base", "lp_aligned", "kl", "bf_mass", "retain", "label",
           "topk_token", "topk_lp_base", "topk_lp_aligned"]
ROW_GROUP = 1 << 16  # rows per Parquet row group: what a reader holds decoded at once


def shard_paths(out_dir: Path) -> list[Path]:
    return sorted(Path(out_dir).glob("shard-*.parquet"))


def shard_meta(path: Path) -> dict[str, Any]:
    """The bftcore metadata of a scored shard, or BadInput when it is not one."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise BadInput(f"{path}: not a readable Parquet file ({e})") from e
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
    if "digest" in meta and meta["digest"] != _digest(meta):
        raise BadInput(f"{path}: the bftcore metadata does not match its digest (damaged file)")
    return meta


def _digest(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def checksum_path(path: Path) -> Path:
    """The file beside a shard that holds the SHA-256 of its bytes (Parquet checksums its data
    pages only; page headers and the footer are covered by this)."""
    return path.with_name(f"{path.name}.sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path) -> None:
    """BadInput when the shard's bytes differ from the checksum written beside it (shards
    written before checksums existed have none and are read as they are)."""
    sums = checksum_path(path)
    if not sums.is_file():
        return
    want = sums.read_text(encoding="ascii", errors="replace").split()[0] if sums.stat().st_size else ""
    if _sha256(path) != want:
        raise BadInput(f"{path}: checksum mismatch (the file changed after it was written: damaged?)")


def open_shard(path: Path) -> Any:
    """A Parquet reader of a shard that verifies every data page's checksum as it reads."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20, page_checksum_verification=True)


def is_shard(path: Path) -> bool:
    try:
        shard_meta(path)
        return True
    except BadInput:
        return False


def is_shard_dir(path: Path) -> bool:
    """A directory of scored shards (as opposed to a corpus directory)."""
    files = shard_paths(path) if path.is_dir() else []
    return bool(files) and is_shard(files[0])


def write_shard(table: Any, path: Path, meta: dict[str, Any]) -> None:
    """Write a shard atomically: a temporary file beside it, synced, then renamed."""
    import pyarrow.parquet as pq

    meta = {**meta, "digest": _digest(meta)}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # lz4 decodes ~30% faster than zstd when indexing, for ~10% more bytes
    pq.write_table(table, tmp, compression="lz4", row_group_size=ROW_GROUP, write_page_checksum=True)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    # the checksum goes into place first: a shard is never there without its own
    sums = checksum_path(path)
    sums_tmp = sums.with_name(f".{sums.name}.tmp-{os.getpid()}")
    sums_tmp.write_text(f"{_sha256(tmp)}  {path.name}\n", encoding="ascii")
    os.replace(sums_tmp, sums)
    os.replace(tmp, path)
