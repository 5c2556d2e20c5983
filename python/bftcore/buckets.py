"""Position buckets and token counts: a thin typed layer over the Rust core (`bftcore._core`).

A pure-Python reference of each function lives in `bftcore._reference`; the tests hold the two
equal. Positions count response tokens from 1; the default buckets are 1, 2, 3-4, 5-8, ..., 257+.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bftcore import _core

DEFAULT_BUCKET_EDGES: tuple[int, ...] = tuple(_core.DEFAULT_BUCKET_EDGES)


def _edges(edges: Sequence[int] | None) -> list[int] | None:
    return None if edges is None else [int(e) for e in edges]


def bucket_of(pos: int, edges: Sequence[int] | None = None) -> int:
    """The bucket of one 1-based response position."""
    return _core.bucket_of(pos, _edges(edges))


def bucket_index(positions: npt.ArrayLike, edges: Sequence[int] | None = None) -> npt.NDArray[np.uint32]:
    """Buckets of many positions at once."""
    return _core.bucket_index(np.ascontiguousarray(positions, dtype=np.uint32), _edges(edges))


def token_bucket_counts(
    tokens: npt.ArrayLike,
    positions: npt.ArrayLike,
    vocab_size: int,
    edges: Sequence[int] | None = None,
) -> npt.NDArray[np.uint64]:
    """Occurrences of every token id per position bucket, shape (buckets, vocab_size).

    Counted in parallel in Rust with the GIL released; uint32 contiguous inputs are read in place.
    """
    return _core.token_bucket_counts(
        np.ascontiguousarray(tokens, dtype=np.uint32),
        np.ascontiguousarray(positions, dtype=np.uint32),
        vocab_size,
        _edges(edges),
    )


def bucket_labels(edges: Sequence[int] | None = None) -> list[str]:
    """Human-readable bucket names: "1", "2", "3-4", ..., "257+"."""
    e = list(DEFAULT_BUCKET_EDGES if edges is None else edges)
    out = []
    for lo, nxt in zip(e, e[1:] + [None]):
        hi = None if nxt is None else nxt - 1
        out.append(f"{lo}+" if hi is None else (str(lo) if hi == lo else f"{lo}-{hi}"))
    return out


def response_positions(lengths: Sequence[int]) -> npt.NDArray[np.uint32]:
    """1..n for each response length n, concatenated (the `pos` column of a corpus)."""
    if not len(lengths):
        return np.zeros(0, dtype=np.uint32)
    return np.concatenate([np.arange(1, n + 1, dtype=np.uint32) for n in lengths])
