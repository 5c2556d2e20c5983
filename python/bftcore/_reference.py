"""Pure-Python reference implementations of the Rust core, kept beside the fast ones (as tiktoken
does) so that tests can hold the two equal and readers can see what the core computes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEFAULT_BUCKET_EDGES = (1, 2, 3, 5, 9, 17, 33, 65, 129, 257)


def bucket_of(pos: int, edges: Sequence[int] = DEFAULT_BUCKET_EDGES) -> int:
    if pos < 1:
        raise ValueError("position 0 (positions count from 1)")
    return max(i for i, lo in enumerate(edges) if lo <= pos)


def token_bucket_counts(
    tokens: Sequence[int],
    positions: Sequence[int],
    vocab_size: int,
    edges: Sequence[int] = DEFAULT_BUCKET_EDGES,
) -> npt.NDArray[np.uint64]:
    if len(tokens) != len(positions):
        raise ValueError("tokens and positions differ in length")
    out = np.zeros((len(edges), vocab_size), dtype=np.uint64)
    for tok, pos in zip(tokens, positions):
        if not 0 <= tok < vocab_size:
            raise ValueError(f"token id {tok} is outside the vocabulary of {vocab_size}")
        out[bucket_of(int(pos), edges), tok] += 1
    return out
