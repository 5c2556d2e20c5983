"""`bftcore index / merge / inspect` end to end on the toy world, torchrun, and damaged files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bftcore.corpus import read_corpus
from bftcore.index import Index, build
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import SHARD_FORMAT, SHARD_VERSION, SUFFIX, checksum_path, shard_paths, write_shard
from bftcore.toy.check import signal_decay_checks
from conftest import run_cli, shared_data

BUCKET_KEYS = ["label", "bucket", "lo", "hi", "count", "kl_sum", "bf_mass_sum", "retain_sum",
               "bf_realised", "log_ratio_sum"]


@pytest.fixture(scope="module")
def heldout(toy, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The held-out toy responses indexed by the CLI (llama)."""
    out = tmp_path_factory.mktemp("idx") / "heldout.bfti"
    r = run_cli("index", str(toy.data_dir / "harmful_heldout.jsonl"),
                str(toy.data_dir / "benign_heldout.jsonl"), "--base", str(toy.model_dir("llama", "base")),
                "--aligned", str(toy.model_dir("llama", "aligned")), "--out", str(out),
                "--shard-size", "100", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["score"]["docs"] == 360 and report["header"]["rows"] > 30_000
    assert list(report["buckets"][0]) == BUCKET_KEYS
    return out


def fake_shards(directory: Path, n: int = 3, rows: int = 50, k: int = 4, vocab: int = 64,
                suffix: str = SUFFIX) -> list[Path]:
    """`n` small scored shards of random statistics, written as `score` writes them (no model);
    `suffix` ".parquet": as bftcore wrote them before shard version 2."""
    import pyarrow as pa

    rng = np.random.default_rng(len(str(directory)))
    meta = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "base": "b", "aligned": "a",
            "tokenizer_hash": "t", "k": k, "tau": 0.0, "vocab_size": vocab}
    paths = []
    for i in range(n):
        def floats(size: int) -> pa.Array:
            return pa.array(-rng.random(size, dtype=np.float32) * 5)

        table = pa.table({
            "doc_id": pa.array(np.repeat(np.arange(rows // 10, dtype=np.uint64) + 100 * i, 10)),
            "pos": pa.array(np.tile(np.arange(1, 11, dtype=np.uint32), rows // 10)),
            "token": pa.array(rng.integers(0, vocab, rows, dtype=np.uint32)),
            "lp_base": floats(rows), "lp_aligned": floats(rows), "kl": pa.array(rng.random(rows, dtype=np.float32)),
            "bf_mass": pa.array(rng.random(rows, dtype=np.float32)), "retain": pa.array(rng.random(rows, dtype=np.float32)),
            "label": pa.array(rng.choice(["harmful", "benign"], rows)).dictionary_encode(),
            "topk_token": pa.FixedSizeListArray.from_arrays(pa.array(rng.integers(0, vocab, rows * k, dtype=np.uint32)), k),
            "topk_lp_base": pa.FixedSizeListArray.from_arrays(floats(rows * k), k),
            "topk_lp_aligned": pa.FixedSizeListArray.from_arrays(floats(rows * k), k),
        })
        paths.append(directory / f"shard-{i:05d}{suffix}")
        write_shard(table, paths[-1], meta)
    return paths


def renamed(shards: list[Path], to: Path, *, drop_sums: int | None = None) -> Path:
    """The shards copied to `to` as Spark/Ray/Dask name theirs (part-00000.arrow), each with its
    checksum file renamed beside it, but for shard `drop_sums` (shards from elsewhere have none)."""
    to.mkdir()
    for i, shard in enumerate(shards):
        part = to / f"part-{i:05d}{shard.suffix}"
        part.write_bytes(shard.read_bytes())
        if i != drop_sums:
            checksum_path(part).write_bytes(checksum_path(shard).read_bytes())
    return to


# ---- fast: shards made up, no model ------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".arrow", ".parquet"])
def test_renamed_shards_index_to_the_same_bytes(tmp_path: Path, suffix: str) -> None:
    """Shards are known by their footer, not their names: renamed part-*, with or without their
    checksum files (without: read with --unverified), give the byte-identical index; a renamed damaged one is still caught; Arrow
    IPC shards (version 2) and Parquet ones (version 1) of the same rows, the same index."""
    shards = fake_shards(tmp_path / "shards", suffix=suffix)
    r = run_cli("index", str(tmp_path / "shards"), "--out", str(tmp_path / "a.bfti"))
    assert r.returncode == 0, r.stderr
    parts = renamed(shards, tmp_path / "parts", drop_sums=1)  # an IPC one without it: --unverified
    r = run_cli("index", str(parts), "--out", str(tmp_path / "b.bfti"), "--unverified")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "b.bfti").read_bytes() == (tmp_path / "a.bfti").read_bytes()
    other = ".parquet" if suffix == ".arrow" else ".arrow"
    fake_shards(tmp_path / "twin_s", suffix=other)  # a name as long as "shards": the same rows
    r = run_cli("index", str(tmp_path / "twin_s"), "--out", str(tmp_path / "o.bfti"))
    assert r.returncode == 0, r.stderr
    assert Index(tmp_path / "o.bfti").to_json(top=5)["buckets"] == Index(tmp_path / "a.bfti").to_json(top=5)["buckets"]
    damaged = bytearray((parts / f"part-00002{suffix}").read_bytes())
    damaged[len(damaged) // 2] ^= 1  # the checksum renamed with it still guards it
    (parts / f"part-00002{suffix}").write_bytes(bytes(damaged))
    r = run_cli("index", str(parts), "--out", str(tmp_path / "c.bfti"), "--unverified")
    assert r.returncode == 2 and f"part-00002{suffix}: checksum mismatch" in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if not line.startswith("[")]  # but progress lines
    assert len(errors) == 1 and "Traceback" not in r.stderr and not (tmp_path / "c.bfti").exists(), r.stderr


def test_a_damaged_checksum_file_is_named(tmp_path: Path) -> None:
    """An IPC shard's checksum file that holds no xxh3-128 (empty, short, signed, not hex): one line
    naming the checksum file, exit 2; the true digest in capitals still reads."""
    shard = fake_shards(tmp_path / "s", n=1)[0]
    sums = checksum_path(shard)
    digest = sums.read_text().split()[0]
    for text in ("", "\n", "0" * 31, "+" + digest[1:], "g" * 32, digest + "0"):
        sums.write_text(text)
        r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (text, r.stderr)
        assert f"{sums.name}: not an xxh3-128 digest" in lines[0], (text, lines[0])
    sums.write_text(digest.upper() + "\n")
    assert run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti")).returncode == 0


def test_an_arrow_shard_without_its_checksum_file_is_refused_unless_unverified(tmp_path: Path) -> None:
    """Copied without its .xxh3, an IPC shard's damage would go unseen: refused by name, exit 2;
    `--unverified` indexes it, to the same index as with the checksum file."""
    shards = fake_shards(tmp_path / "s", n=2)
    assert run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "with.bfti")).returncode == 0
    checksum_path(shards[1]).unlink()
    r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{shards[1].name}: no checksum file {shards[1].name}.xxh3" in lines[0], lines[0]
    assert not (tmp_path / "x.bfti").exists()
    r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"), "--unverified")
    assert r.returncode == 0, r.stderr
    assert Index(tmp_path / "x.bfti").curves().equals(Index(tmp_path / "with.bfti").curves())


def test_a_directory_mixing_shards_and_other_parquet_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fake_shards(tmp_path / "d", n=2)
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), tmp_path / "d" / "extra.parquet")
    r = run_cli("index", str(tmp_path / "d"), "--out", str(tmp_path / "x.bfti"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "mixes scored shards (shard-00000.arrow)" in lines[0] and "extra.parquet" in lines[0], lines[0]
    # plain Parquet records alone are a corpus (to score), not shards
    (tmp_path / "corpus").mkdir()
    (tmp_path / "d" / "extra.parquet").rename(tmp_path / "corpus" / "records.parquet")
    r = run_cli("index", str(tmp_path / "corpus"), "--out", str(tmp_path / "x.bfti"))
    assert r.returncode == 2 and "--base and --aligned are needed to score a corpus" in r.stderr, r.stderr
    # shards and a corpus in one command: refused, naming one of each
    r = run_cli("index", str(tmp_path / "d"), str(tmp_path / "corpus"), "--out", str(tmp_path / "x.bfti"))
    assert r.returncode == 2 and "holds scored shards but" in r.stderr and "corpus" in r.stderr, r.stderr


def test_progress_is_plain_lines_off_a_terminal(tmp_path: Path) -> None:
    """stderr captured (not a terminal): progress comes as plain lines instead of hidden bars: one
    when a task starts, one when it completes, and between them at most one per interval."""
    import re

    fake_shards(tmp_path / "s", n=3)
    total = 3 * 50
    line = re.compile(r"^\[\d\d:\d\d:\d\d\] indexing (\d+)/(\d+)$")
    r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"), env={"BFTCORE_PROGRESS_EVERY": "0"})
    assert r.returncode == 0, r.stderr
    counts = [tuple(map(int, m.groups())) for m in map(line.match, r.stderr.splitlines()) if m]
    assert counts == [(50, total), (100, total), (150, total)], r.stderr  # one batch per shard
    r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"), env={"BFTCORE_PROGRESS_EVERY": "600"})
    counts = [tuple(map(int, m.groups())) for m in map(line.match, r.stderr.splitlines()) if m]
    assert counts == [(50, total), (150, total)], r.stderr  # started, completed
    r = run_cli("index", str(tmp_path / "s"), "--out", str(tmp_path / "x.bfti"), env={"BFTCORE_PROGRESS_EVERY": "soon"})
    assert r.returncode == 2 and "BFTCORE_PROGRESS_EVERY" in r.stderr, r.stderr


def test_torchrun_with_more_ranks_than_shards(tmp_path: Path) -> None:
    """Each rank indexes its share of the shards and rank 0 merges; a rank with no share writes no
    partial (and does not fail the others)."""
    fake_shards(tmp_path / "s", n=1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29531",
           "-m", "bftcore", "index", str(tmp_path / "s"), "--out", str(tmp_path / "dist.bfti")]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.bfti", "s"]  # no partial left behind
    build(shard_paths(tmp_path / "s"), tmp_path / "one.bfti")
    assert_same_index(Index(tmp_path / "dist.bfti"), Index(tmp_path / "one.bfti"))


# ---- on the toy world --------------------------------------------------------------------------
def assert_same_index(a: Index, b: Index) -> None:
    assert a.labels == b.labels and a.header["rows"] == b.header["rows"]
    for label in a.labels:
        x, y = a._core.arrays(label), b._core.arrays(label)
        for name in x:
            if x[name].dtype.kind == "u":
                assert np.array_equal(x[name], y[name]), name
            else:
                np.testing.assert_allclose(x[name], y[name], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_signal_decay_holds_on_the_toy_world(toy, arch: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    records, _ = read_corpus([toy.data_dir / "harmful_heldout.jsonl",
                              toy.data_dir / "benign_heldout.jsonl"])
    score_corpus(records, toy.model_dir(arch, "base"), toy.model_dir(arch, "aligned"),
                 tmp_path / "s", ScoreConfig())
    idx = build(shard_paths(tmp_path / "s"), tmp_path / "x.bfti")
    checks = signal_decay_checks(idx.curves(), arch)
    assert len(checks) == 3 and all(c.holds for c in checks), checks
    # benign responses: nothing to unlearn, retention near 1 everywhere
    benign = idx.curves().filter(idx.curves()["label"] == "benign")
    assert benign.filter(benign["count"] > 0)["mean_retain"].min() > 0.9


def test_shards_are_aggregated_directly(heldout: Path, tmp_path: Path) -> None:
    r = run_cli("index", str(heldout) + ".shards", "--out", str(tmp_path / "again.bfti"))
    assert r.returncode == 0, r.stderr
    assert "per position bucket" in r.stdout
    assert_same_index(Index(heldout), Index(tmp_path / "again.bfti"))
    # the same shards renamed as other tools name theirs: the same index, byte for byte
    parts = renamed(shard_paths(Path(str(heldout) + ".shards")), tmp_path / "parts", drop_sums=0)
    r = run_cli("index", str(parts), "--out", str(tmp_path / "parts.bfti"), "--unverified")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "parts.bfti").read_bytes() == (tmp_path / "again.bfti").read_bytes()


def test_inspect_json_is_stable_and_plots(heldout: Path, tmp_path: Path) -> None:
    png = tmp_path / "decay.png"
    r = run_cli("inspect", str(heldout), "--json", "--top", "3", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert list(obj) == ["header", "buckets", "top_tokens"]
    assert {"format", "version", "labels", "k", "tau", "tokenizer_hash", "bucket_edges", "rows",
            "vocab_size", "meta"} <= set(obj["header"])
    assert all(list(b) == BUCKET_KEYS for b in obj["buckets"])
    assert len(obj["buckets"]) == 2 * 10
    first = obj["top_tokens"][0]
    assert first["bucket"] == 0 and len(first["tokens"]) == 3
    assert set(first["tokens"][0]) == {"token", "text", "base_favored"}
    # the realised opener of a harmful answer is base-favored at position 1
    assert "Sure" in [t["text"] for t in first["tokens"]]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    r = run_cli("inspect", str(heldout), "--bucket", "6", "--top", "5")
    assert r.returncode == 0 and "bucket 6" in r.stdout


def test_merge_of_split_corpora_equals_the_whole(toy, heldout: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, aligned = str(toy.model_dir("llama", "base")), str(toy.model_dir("llama", "aligned"))
    parts = []
    for name in ("harmful_heldout", "benign_heldout"):
        out = tmp_path / f"{name}.bfti"
        r = run_cli("index", str(toy.data_dir / f"{name}.jsonl"), "--base", base, "--aligned",
                    aligned, "--out", str(out), "--device", "cpu")
        assert r.returncode == 0, r.stderr
        parts.append(out)
    r = run_cli("merge", *map(str, reversed(parts)), "--out", str(tmp_path / "m.bfti"))
    assert r.returncode == 0, r.stderr
    merged, whole = Index(tmp_path / "m.bfti"), Index(heldout)
    assert merged.labels == whole.labels and merged.header["rows"] == whole.header["rows"]
    for label in whole.labels:
        x, y = merged._core.arrays(label), whole._core.arrays(label)
        assert np.array_equal(x["token_occ"], y["token_occ"])
        np.testing.assert_allclose(x["bucket_sums"], y["bucket_sums"], rtol=1e-5)


def test_damaged_and_foreign_files_exit_2(heldout: Path, tmp_path: Path) -> None:
    good = heldout.read_bytes()
    cases = {"truncated.bfti": good[: len(good) // 2], "flipped.bfti": good[:-50] + bytes([good[-50] ^ 1]) + good[-49:],
             "foreign.bfti": b"PAR1" + b"\0" * 100, "empty.bfti": b"",
             "newer.bfti": good[:8] + (7).to_bytes(4, "little") + good[12:]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        r = run_cli("inspect", str(tmp_path / name))
        assert r.returncode == 2, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "newer" in run_cli("inspect", str(tmp_path / "newer.bfti")).stderr
    assert "checksum" in run_cli("inspect", str(tmp_path / "flipped.bfti")).stderr
    assert "not a .bfti" in run_cli("inspect", str(tmp_path / "foreign.bfti")).stderr
    r = run_cli("merge", str(heldout), str(tmp_path / "foreign.bfti"), "--out", str(tmp_path / "m.bfti"))
    assert r.returncode == 2 and not (tmp_path / "m.bfti").exists()


def test_index_tokenizer_must_match_the_model_given(toy, heldout: Path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("inspect", str(heldout), "--tokenizer", str(toy.model_dir("qwen2", "aligned")))
    assert r.returncode == 2 and "does not match" in r.stderr


def test_index_needs_models_for_a_corpus(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("index", str(toy.data_dir / "harmful_heldout.jsonl"), "--out", str(tmp_path / "x.bfti"))
    assert r.returncode == 2 and "--base and --aligned" in r.stderr


def test_index_runs_on_every_shared_data_file(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "shared.bfti"
    r = run_cli("index", str(shared_data()), "--base", str(toy.model_dir("llama", "base")),
                "--aligned", str(toy.model_dir("llama", "aligned")), "--out", str(out),
                "--max-length", "160", "--max-new-tokens", "24", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    records, _ = read_corpus([shared_data()])  # whatever files the directory holds today
    labels = sorted({x.label for x in records})
    assert report["read"]["records"] == len(records)
    assert report["score"]["generated"] == sum(x.response is None for x in records) > 0
    score = report["score"]
    # prompts longer than the context are skipped and counted; longer responses truncated
    assert score["docs"] + score["skipped_too_long"] + score["skipped_empty"] == len(records)
    assert score["docs"] > 0.85 * len(records) and score["truncated"] > 0 and report["header"]["rows"] > 50_000
    assert report["header"]["labels"] == labels


def test_torchrun_two_ranks_equal_one_process(toy, heldout: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "dist.bfti"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", "29517", "-m", "bftcore", "index",
           str(toy.data_dir / "harmful_heldout.jsonl"), str(toy.data_dir / "benign_heldout.jsonl"),
           "--base", str(toy.model_dir("llama", "base")), "--aligned",
           str(toy.model_dir("llama", "aligned")), "--out", str(out), "--shard-size", "100",
           "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.bfti", "dist.bfti.shards"]
    # each rank scored its own shards: the same shards as the single process
    single = [p.read_bytes() for p in shard_paths(Path(str(heldout) + ".shards"))]
    assert len(single) == 4
    dist = Index(out)
    assert dist.header["rows"] == Index(heldout).header["rows"]
    assert_same_index(dist, Index(heldout))


def test_score_command_then_index_the_shards(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shards = tmp_path / "shards"
    args = ["score", str(toy.data_dir / "benign_heldout.jsonl"), "--base",
            str(toy.model_dir("qwen2", "base")), "--aligned", str(toy.model_dir("qwen2", "aligned")),
            "--out", str(shards), "--k", "5", "--shard-size", "50", "--device", "cpu", "--json"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["score"]["shards"] == 4 and report["score"]["shards_scored"] == 4
    assert report["read"]["records"] == 180
    again = json.loads(run_cli(*args).stdout)
    assert again["score"]["shards_scored"] == 0  # finished shards are skipped
    r = run_cli("index", str(shards), "--out", str(tmp_path / "b.bfti"), "--json")
    assert r.returncode == 0, r.stderr
    header = json.loads(r.stdout)["header"]
    assert header["k"] == 5 and header["labels"] == ["benign"] and header["meta"]["shards"] == 4
