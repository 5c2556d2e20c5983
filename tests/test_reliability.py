"""Reliability (issue 7): damaged files are caught, never taken for good ones; nothing crashes.

Each test tries the failure for real: bytes flipped in scored shards, a disk that fills while an
index is written, untrusted export artifacts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bftcore import index as bfti
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# ---- scored shards: bit flips, truncation, NaN ---------------------------------------------------


@pytest.fixture(scope="module")
def small_shard(toy, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:  # type: ignore[no-untyped-def]
    """One scored shard of 24 held-out records, and the index built from it (the good result)."""
    out = tmp_path_factory.mktemp("shards")
    records = read_corpus([toy.data_dir / "harmful_heldout.jsonl"])[0][:24]
    score_corpus(records, toy.model_dir("llama", "base"), toy.model_dir("llama", "aligned"), out / "s",
                 ScoreConfig(), device="cpu")
    [shard] = shard_paths(out / "s")
    bfti.build([shard], out / "good.bfti")
    return shard, (out / "good.bfti").read_bytes()


def _arrays(path: Path) -> bytes:
    """The index's content apart from the header's record of where its shards came from."""
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[16:24], "little")
    header = json.loads(raw[32:32 + header_len])
    header.pop("meta", None)
    return json.dumps(header, sort_keys=True).encode() + raw[32 + header_len:]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_shard_is_refused_or_harmless(small_shard: tuple[Path, bytes], tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    """Flip bits anywhere in a shard, or cut it: indexing it either refuses with BadInput or
    gives exactly the index of the undamaged shard. Page CRCs and the metadata digest make a
    silently different index impossible for data and metadata bytes."""
    shard, good = small_shard
    raw = bytearray(shard.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    d = tmp_path_factory.mktemp("bad")
    bad = d / "shard-00000.parquet"
    bad.write_bytes(bytes(raw))
    try:
        bfti.build([bad], d / "x.bfti")
    except BadInput:
        assert not (d / "x.bfti").exists()
        return
    good_path = d / "good.bfti"
    good_path.write_bytes(good)
    assert _arrays(d / "x.bfti") == _arrays(good_path), "a damaged shard gave a different index"


def test_nan_and_inf_log_probs_are_refused(small_shard: tuple[Path, bytes], tmp_path: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from bftcore.shards import META_KEY, shard_meta, write_shard

    shard, _ = small_shard
    table = pq.read_table(shard)
    meta = shard_meta(shard)
    meta.pop("digest")
    for column, value in (("lp_base", float("nan")), ("kl", float("inf")), ("lp_aligned", float("-inf"))):
        col = table.column(column).to_numpy().copy()
        col[7] = value
        bad = table.set_column(table.schema.get_field_index(column), column, pc.cast(col, table.schema.field(column).type))
        path = tmp_path / column / "shard-00000.parquet"
        path.parent.mkdir()
        write_shard(bad.replace_schema_metadata({}), path, meta)
        assert META_KEY in pq.read_schema(path).metadata
        with pytest.raises(BadInput, match=f"{column} is NaN or infinite"):
            bfti.build([path], tmp_path / column / "x.bfti")


# ---- a disk that fills while the index is written ----------------------------------------------------
FILL_DISK = """
import resource, signal, sys
from pathlib import Path
from bftcore import index as bfti
from bftcore.errors import BadInput
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    bfti.build([Path(sys.argv[1])], Path(sys.argv[2]))
except BadInput as e:
    print(e)
    sys.exit(2)
"""


def test_disk_full_while_writing_keeps_the_previous_index(small_shard: tuple[Path, bytes], tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past a size fail, as a full disk does: the index write
    fails with a one-line reason, the previous index is byte-for-byte intact, no temp file stays."""
    shard, good = small_shard
    out = tmp_path / "idx.bfti"
    out.write_bytes(good)
    r = subprocess.run([sys.executable, "-c", FILL_DISK, str(shard), str(out), str(len(good) // 3)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr
    assert "File too large" in r.stdout or "os error 27" in r.stdout, r.stdout
    assert out.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx.bfti"]


# ---- kill -9 during scoring and indexing, then the same command again ------------------------------
def _kill_when(cmd: list[str], ready, timeout: float = 600) -> None:  # type: ignore[no-untyped-def]
    """Start `cmd`, SIGKILL it as soon as `ready()` holds; it must not have finished by then."""
    import signal
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the command ended before it could be killed"
        assert time.monotonic() < deadline, "the command never reached the point to kill it at"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_kill_during_scoring_and_indexing_then_rerun(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """`bftcore index corpus --shards DIR` scores into shards (a rerun skips finished ones), then
    indexes them (written by temp file and rename). Killed with SIGKILL after its first shard,
    and again while indexing, the same command gives the index of an uninterrupted run, and a
    killed run never leaves a file that looks finished."""
    corpus = [str(toy.data_dir / "harmful_heldout.jsonl"), str(toy.data_dir / "benign_heldout.jsonl")]

    def cmd(d: Path) -> list[str]:
        return [sys.executable, "-m", "bftcore", "index", *corpus, "--base", str(toy.model_dir("llama", "base")),
                "--aligned", str(toy.model_dir("llama", "aligned")), "--shards", str(d / "shards"),
                "--out", str(d / "x.bfti"), "--shard-size", "40", "--device", "cpu", "--json"]

    whole = tmp_path / "whole"
    r = subprocess.run(cmd(whole), capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    # during scoring: after the first shard is renamed into place
    _kill_when(cmd(killed), lambda: len(shard_paths(killed / "shards")) >= 1)
    finished = shard_paths(killed / "shards")
    assert 1 <= len(finished) < len(shard_paths(whole / "shards")) and not (killed / "x.bfti").exists()
    for p in finished:  # what is there is whole: each finished shard reads completely
        assert p.read_bytes() == (whole / "shards" / p.name).read_bytes()
    # during indexing: every shard present, the index not yet renamed into place
    all_shards = len(shard_paths(whole / "shards"))
    _kill_when(cmd(killed), lambda: len(shard_paths(killed / "shards")) == all_shards)
    assert not (killed / "x.bfti").exists() or _arrays(killed / "x.bfti") == _arrays(whole / "x.bfti")
    r = subprocess.run(cmd(killed), capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr
    assert _arrays(killed / "x.bfti") == _arrays(whole / "x.bfti")
    assert [p.read_bytes() for p in shard_paths(killed / "shards")] == \
        [p.read_bytes() for p in shard_paths(whole / "shards")]
    # SIGKILL leaves a writer's temporary file behind at most; it is dot-named, never a result
    for d in (killed, killed / "shards"):
        assert all(".tmp" in p.name for p in d.iterdir() if p.name.startswith("."))
