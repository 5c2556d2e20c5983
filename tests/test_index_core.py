"""The Rust index against the numpy reference, on hypothesis-generated shards; merge; the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bftcore import _core, _reference
from bftcore.index import Index, merge

LABELS = ["harmful", "benign", "x"]


@st.composite
def shards(draw: st.DrawFn) -> tuple[int, int, list[dict[str, np.ndarray]]]:
    vocab = draw(st.integers(1, 40))
    k = draw(st.integers(1, 4))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 30))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        # positions from 1 to beyond the last bucket; tokens up to the vocabulary's edge
        edge = rng.random(n) < 0.3
        out.append({
            "token": np.where(edge, vocab - 1, rng.integers(0, vocab, n)).astype(np.uint32),
            "pos": rng.choice([1, 2, 3, 4, 5, 256, 257, 258, 5000], n).astype(np.uint32)
            if draw(st.booleans()) else rng.integers(1, 700, n).astype(np.uint32),
            "lp_base": -rng.exponential(2, n).astype(np.float32),
            "lp_aligned": -rng.exponential(2, n).astype(np.float32),
            "kl": rng.exponential(1, n).astype(np.float32),
            "bf_mass": rng.random(n).astype(np.float32),
            "retain": rng.random(n).astype(np.float32),
            "label": rng.choice(LABELS[: draw(st.integers(1, 3))], n),
            "topk_token": rng.integers(0, vocab, (n, k)).astype(np.uint32),
            "topk_lp_base": -rng.exponential(2, (n, k)).astype(np.float32),
            "topk_lp_aligned": -rng.exponential(2, (n, k)).astype(np.float32),
        })
        # make the realised token sometimes sit in the top-k
        if n:
            out[-1]["topk_token"][::2, 0] = out[-1]["token"][::2]
    return vocab, k, out


def add(builder: _core.IndexBuilder, b: dict[str, np.ndarray]) -> None:
    names, codes = np.unique(b["label"], return_inverse=True)
    builder.add_batch(
        b["token"], b["pos"], b["lp_base"], b["lp_aligned"], b["kl"], b["bf_mass"], b["retain"],
        codes.astype(np.uint16).reshape(-1), [str(x) for x in names],
        b["topk_token"].reshape(-1), b["topk_lp_base"].reshape(-1), b["topk_lp_aligned"].reshape(-1))


def build(tmp: Path, name: str, vocab: int, k: int, batches: list[dict[str, np.ndarray]]) -> Index:
    builder = _core.IndexBuilder(vocab, k, 0.0, "tok", json.dumps({"base": "b", "aligned": "a"}))
    for b in batches:
        add(builder, b)
    builder.write(str(tmp / name))
    return Index(tmp / name)


def assert_matches(idx: Index, want: dict[str, dict[str, np.ndarray]]) -> None:
    assert idx.labels == sorted(want)
    for label, ref in want.items():
        got = idx._core.arrays(label)
        for name in ("bucket_count", "bucket_bf_realised", "token_occ", "token_bf", "token_member"):
            assert np.array_equal(got[name], ref[name]), (label, name)
        for name in ("bucket_sums", "token_log_ratio"):
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-6, atol=1e-9)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=shards())
def test_rust_equals_numpy_reference(data: tuple[int, int, list[dict[str, np.ndarray]]],
                                     tmp_path: Path) -> None:
    vocab, k, batches = data
    rows = sum(len(b["token"]) for b in batches)
    idx = build(tmp_path, "x.bfti", vocab, k, batches)
    if rows == 0:  # empty shards give a valid, empty index
        assert idx.labels == [] and idx.header["rows"] == 0 and idx.curves().height == 0
        return
    assert idx.header["rows"] == rows
    assert_matches(idx, _reference.index_aggregates(batches, vocab, k))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=shards(), order=st.permutations(range(4)))
def test_merge_of_a_split_equals_the_whole_in_any_order(
        data: tuple[int, int, list[dict[str, np.ndarray]]], order: list[int], tmp_path: Path) -> None:
    vocab, k, batches = data
    if not sum(len(b["token"]) for b in batches):
        return
    whole = build(tmp_path, "whole.bfti", vocab, k, batches)
    parts = [build(tmp_path, f"p{i}.bfti", vocab, k, [b]) for i, b in enumerate(batches)]
    paths = [parts[i].path for i in order if i < len(parts)]
    merged = merge(paths, tmp_path / "merged.bfti")
    assert merged.header["rows"] == whole.header["rows"]
    assert_matches(merged, {label: whole._core.arrays(label) for label in whole.labels})
