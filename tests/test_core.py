"""The Rust core against its pure-Python reference, its errors, and the GIL released while it works."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from bftcore import _reference, buckets


def test_bucket_of_matches_reference_and_log2() -> None:
    for pos in range(1, 3000):
        want = min(int(np.ceil(np.log2(pos))), 9) if pos > 1 else 0
        assert buckets.bucket_of(pos) == _reference.bucket_of(pos) == want


def test_bucket_index_and_labels() -> None:
    pos = np.array([1, 2, 3, 4, 5, 8, 9, 256, 257, 10_000], dtype=np.uint32)
    assert buckets.bucket_index(pos).tolist() == [0, 1, 2, 2, 3, 3, 4, 8, 9, 9]
    assert buckets.bucket_labels() == ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64",
                                       "65-128", "129-256", "257+"]
    assert buckets.bucket_labels([1, 11, 101]) == ["1-10", "11-100", "101+"]
    assert buckets.bucket_index(pos, [1, 11, 101]).tolist() == [0] * 6 + [0, 2, 2, 2]


@pytest.mark.parametrize("edges", [None, [1, 4, 16, 64]])
def test_token_bucket_counts_matches_reference(edges: list[int] | None) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=5000, dtype=np.uint32)
    positions = rng.integers(1, 400, size=5000, dtype=np.uint32)
    got = buckets.token_bucket_counts(tokens, positions, 50, edges)
    want = _reference.token_bucket_counts(tokens.tolist(), positions.tolist(), 50,
                                          edges or _reference.DEFAULT_BUCKET_EDGES)
    assert got.dtype == np.uint64 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert got.sum() == 5000


def test_response_positions() -> None:
    assert buckets.response_positions([3, 1, 2]).tolist() == [1, 2, 3, 1, 1, 2]
    assert buckets.response_positions([]).size == 0


@pytest.mark.parametrize(
    ("tokens", "positions", "message"),
    [([0, 7], [1, 2], "token id 7 is outside the vocabulary of 5"),
     ([0, 1], [1, 0], "position 0"),
     ([0], [1, 2], "differ in length")],
)
def test_bad_rows_raise_value_error(tokens: list[int], positions: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        buckets.token_bucket_counts(tokens, positions, 5)


def test_bad_edges_raise_value_error() -> None:
    with pytest.raises(ValueError, match="first edge must be 1"):
        buckets.bucket_of(3, [2, 4])
    with pytest.raises(ValueError, match="strictly increase"):
        buckets.bucket_of(3, [1, 4, 4])
    with pytest.raises(ValueError, match="position 0"):
        buckets.bucket_of(0)


def test_gil_is_released_while_counting() -> None:
    """Another Python thread runs while the core counts (as safetensors tests it).

    The main thread timestamps its loop iterations; the worker timestamps its one long call. With
    the GIL held for the call, no iteration could fall inside it, bar one switch interval at each end.
    """
    n = 40_000_000
    tokens = np.zeros(n, dtype=np.uint32)
    positions = np.ones(n, dtype=np.uint32)
    span: list[float] = []
    ticks: list[float] = []

    def count() -> None:
        span.append(time.perf_counter())
        buckets.token_bucket_counts(tokens, positions, 1)
        span.append(time.perf_counter())

    worker = threading.Thread(target=count)
    worker.start()
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    margin = 2 * sys.getswitchinterval()
    start, end = span[0] + margin, span[1] - margin
    assert end - start > 0.02, "the call was too short to tell; make the input larger"
    inside = sum(start < t < end for t in ticks)
    assert inside > 100


FORK_AFTER_CORE = """
import os, sys, numpy as np
from bftcore import _core
toks = (np.arange(3_000_000) % 997).astype(np.uint32)
pos = (np.arange(3_000_000) % 300 + 1).astype(np.uint32)
before = np.asarray(_core.token_bucket_counts(toks, pos, 1000))  # starts the core's thread pool
pid = os.fork()
if pid == 0:  # the child uses the core again: a pool inherited from the parent would hang here
    after = np.asarray(_core.token_bucket_counts(toks, pos, 1000))
    os._exit(0 if np.array_equal(after, before) else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_fork_after_the_core_ran_does_not_deadlock() -> None:
    """rayon's global pool does not survive fork(); the bindings keep a pool per process (as
    tokenizers guards its own), so a forked child (multiprocessing's default start method on
    Linux, DataLoader workers) can call the core again."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", FORK_AFTER_CORE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_multiprocessing_fork_pool_uses_the_core() -> None:
    import multiprocessing as mp
    import subprocess

    script = """
import multiprocessing as mp, numpy as np
from bftcore import _core
def work(i):
    t = (np.arange(200_000) % 97).astype(np.uint32); p = (np.arange(200_000) % 50 + 1).astype(np.uint32)
    return int(np.asarray(_core.token_bucket_counts(t, p, 100)).sum())
if __name__ == "__main__":
    work(0)
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(work, range(4)) == [200_000] * 4
"""
    assert "fork" in mp.get_all_start_methods()
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
