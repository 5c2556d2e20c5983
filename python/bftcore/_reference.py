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


def index_aggregates(
    batches: Sequence[dict[str, np.ndarray]],
    vocab_size: int,
    k: int,
    tau: float = 0.0,
    edges: Sequence[int] = DEFAULT_BUCKET_EDGES,
) -> dict[str, dict[str, np.ndarray]]:
    """The index's aggregates per label, in numpy (the Rust core's `IndexBuilder`, readably).

    Each batch holds the scored-shard columns: token, pos, lp_base, lp_aligned, kl, bf_mass,
    retain (n,), label (n, str), topk_token, topk_lp_base, topk_lp_aligned (n, k).
    """
    nb = len(edges)
    out: dict[str, dict[str, np.ndarray]] = {}
    tau32 = np.float32(tau)
    for batch in batches:
        for label in np.unique(batch["label"]):
            sel = batch["label"] == label
            agg = out.setdefault(str(label), {
                "bucket_count": np.zeros(nb, np.uint64),
                "bucket_bf_realised": np.zeros(nb, np.uint64),
                "bucket_sums": np.zeros((nb, 4), np.float64),
                "token_occ": np.zeros((nb, vocab_size), np.uint64),
                "token_bf": np.zeros((nb, vocab_size), np.uint64),
                "token_member": np.zeros((nb, vocab_size), np.uint64),
                "token_log_ratio": np.zeros((nb, vocab_size), np.float64),
            })
            pos = batch["pos"][sel]
            if np.any(pos < 1):
                raise ValueError("position 0 (positions count from 1)")
            b = np.searchsorted(np.asarray(edges), pos, side="right") - 1
            tok = batch["token"][sel].astype(np.int64)
            rho = (batch["lp_base"][sel] - batch["lp_aligned"][sel]).astype(np.float32)
            top = batch["topk_token"][sel].reshape(-1, k).astype(np.int64)
            favored = (batch["topk_lp_base"][sel].reshape(-1, k)
                       - batch["topk_lp_aligned"][sel].reshape(-1, k)) > tau32
            in_top = (top == tok[:, None]).any(axis=1) if k else np.zeros(len(tok), bool)
            realised = in_top & (rho > tau32)
            np.add.at(agg["bucket_count"], b, 1)
            np.add.at(agg["bucket_bf_realised"], b, realised.astype(np.uint64))
            for j, col in enumerate(("kl", "bf_mass", "retain")):
                np.add.at(agg["bucket_sums"][:, j], b, batch[col][sel].astype(np.float64))
            np.add.at(agg["bucket_sums"][:, 3], b, rho.astype(np.float64))
            np.add.at(agg["token_occ"], (b, tok), 1)
            np.add.at(agg["token_bf"], (b, tok), realised.astype(np.uint64))
            np.add.at(agg["token_log_ratio"], (b, tok), rho.astype(np.float64))
            rows, cols = np.nonzero(favored)
            np.add.at(agg["token_member"], (b[rows], top[rows, cols]), 1)
    return out
