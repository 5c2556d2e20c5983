"""The Rust index against the numpy reference, on hypothesis-generated shards; merge; the file."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
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


# Errors: the file system's as OSError subclasses, bad data as CoreError, misuse as StateError.

def small_index(tmp: Path, name: str = "x.bfti") -> Path:
    rng = np.random.default_rng(7)
    n, vocab, k = 200, 20, 3
    batch = {
        "token": rng.integers(0, vocab, n).astype(np.uint32),
        "pos": rng.integers(1, 700, n).astype(np.uint32),
        "lp_base": -rng.exponential(2, n).astype(np.float32),
        "lp_aligned": -rng.exponential(2, n).astype(np.float32),
        "kl": rng.exponential(1, n).astype(np.float32),
        "bf_mass": rng.random(n).astype(np.float32),
        "retain": rng.random(n).astype(np.float32),
        "label": rng.choice(["harmful", "benign"], n),
        "topk_token": rng.integers(0, vocab, (n, k)).astype(np.uint32),
        "topk_lp_base": -rng.exponential(2, (n, k)).astype(np.float32),
        "topk_lp_aligned": -rng.exponential(2, (n, k)).astype(np.float32),
    }
    return build(tmp, name, vocab, k, [batch]).path


def test_a_missing_index_is_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "missing.bfti"
    with pytest.raises(FileNotFoundError) as e:
        _core.Index.open(str(missing))
    assert e.value.errno == errno.ENOENT
    assert e.value.filename == str(missing)
    assert str(missing) in str(e.value)
    assert not isinstance(e.value, _core.CoreError)
    with pytest.raises(FileNotFoundError):
        _core.merge_indexes([str(small_index(tmp_path)), str(missing)], str(tmp_path / "m.bfti"))


def test_a_directory_is_not_an_index(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as e:
        _core.Index.open(str(tmp_path))
    assert e.value.errno == errno.EISDIR
    assert e.value.filename == str(tmp_path)


def test_writing_under_a_file_is_not_a_directory(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    builder = _core.IndexBuilder(5, 1, 0.0, "tok")
    with pytest.raises(NotADirectoryError) as e:
        builder.write(str(plain / "x.bfti"))
    assert e.value.errno == errno.ENOTDIR
    assert str(plain) in str(e.value)


UNREADABLE = """
import errno, os, sys
from bftcore import _core
if os.geteuid() == 0:  # root reads a file whatever its mode: drop to nobody, the module loaded
    os.setgid(65534)
    os.setuid(65534)
try:
    _core.Index.open(sys.argv[1])
except PermissionError as e:
    sys.exit(0 if e.errno == errno.EACCES and e.filename == sys.argv[1] else 3)
except BaseException as e:
    sys.exit(f"{type(e).__name__}: {e}")
sys.exit("opened an unreadable file")
"""


def test_an_unreadable_index_is_permission_error() -> None:
    # a directory of our own, open to all (pytest's tmp_path is not), holding a mode-000 index
    root = Path(tempfile.mkdtemp())
    try:
        root.chmod(0o755)
        path = small_index(root)
        path.chmod(0)
        r = subprocess.run([sys.executable, "-c", UNREADABLE, str(path)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(root)


def test_damaged_indexes_are_core_errors(tmp_path: Path) -> None:
    path = small_index(tmp_path)
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-50] ^= 0x10
    cases = {b"PAR1 not an index": "wrong magic", bytes(flipped): "checksum mismatch",
             good[:20]: "truncated"}
    for data, message in cases.items():
        path.write_bytes(data)
        with pytest.raises(_core.CoreError, match=message) as e:
            _core.Index.open(str(path))
        assert isinstance(e.value, ValueError) and not isinstance(e.value, OSError)


def test_queries_out_of_range_are_core_errors(tmp_path: Path) -> None:
    idx = _core.Index.open(str(small_index(tmp_path)))
    with pytest.raises(_core.CoreError, match='no label "nope"'):
        idx.top_tokens("nope", 0, 5)
    with pytest.raises(_core.CoreError, match="no label"):
        idx.bucket_table("nope")
    with pytest.raises(_core.CoreError, match="no bucket 10"):
        idx.top_tokens("harmful", 10, 5)
    with pytest.raises(_core.CoreError, match="outside the vocabulary of 20"):
        idx.token_histogram("harmful", 20)


def test_top_tokens_equal_a_numpy_ranking(tmp_path: Path) -> None:
    idx = _core.Index.open(str(small_index(tmp_path)))
    arrays = idx.arrays("harmful")
    for bucket in range(10):
        member = arrays["token_member"][bucket]
        ids = np.lexsort((np.arange(member.size), -member.astype(np.int64)))  # most first, ties by id
        want = [int(t) for t in ids if member[t] > 0]
        for n in (0, 3, 20, 100):
            got = idx.top_tokens("harmful", bucket, n)
            assert got["token"].tolist() == want[:n]
            assert got["member"].tolist() == member[want[:n]].tolist()
            assert got["occ"].tolist() == arrays["token_occ"][bucket][want[:n]].tolist()


def test_a_spent_builder_raises_state_error(tmp_path: Path) -> None:
    builder = _core.IndexBuilder(5, 1, 0.0, "tok")
    builder.write(str(tmp_path / "x.bfti"))
    empty_u32, empty_f32 = np.zeros(0, np.uint32), np.zeros(0, np.float32)
    with pytest.raises(_core.StateError, match="already called") as e:
        builder.add_batch(empty_u32, empty_u32, empty_f32, empty_f32, empty_f32, empty_f32, empty_f32,
                          np.zeros(0, np.uint16), [], empty_u32, empty_f32, empty_f32)
    assert isinstance(e.value, RuntimeError) and not isinstance(e.value, ValueError)
    with pytest.raises(_core.StateError, match="already called"):
        builder.write(str(tmp_path / "y.bfti"))
    assert not (tmp_path / "y.bfti").exists()


def test_the_memory_budget_changes_nothing_but_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = _core.Index.open(str(small_index(tmp_path, "default.bfti")))
    monkeypatch.setenv("BFTCORE_INDEX_MEMORY_MIB", "0")  # one partial state
    capped = _core.Index.open(str(small_index(tmp_path, "capped.bfti")))
    for label in ("benign", "harmful"):
        a, b = default.arrays(label), capped.arrays(label)
        for name in a:  # counts exactly; float sums up to the order of the additions
            if a[name].dtype.kind == "f":
                assert np.allclose(a[name], b[name], rtol=1e-12), (label, name)
            else:
                assert np.array_equal(a[name], b[name]), (label, name)
    monkeypatch.setenv("BFTCORE_INDEX_MEMORY_MIB", "lots")
    with pytest.raises(_core.CoreError, match="BFTCORE_INDEX_MEMORY_MIB"):
        _core.IndexBuilder(5, 1, 0.0, "tok")
