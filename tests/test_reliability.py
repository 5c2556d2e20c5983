"""Reliability (issue 7): damaged files are caught, never taken for good ones; nothing crashes.

Each test tries the failure for real: bytes flipped in scored shards, a disk that fills while an
index is written, untrusted export artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bftcore import index as bfti
from bftcore.corpus import read_corpus
from bftcore.errors import BadInput
from bftcore.generate import Decoding
from bftcore.score import ScoreConfig, score_corpus
from bftcore.shards import shard_paths

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
def test_damaged_shard_is_refused(small_shard: tuple[Path, bytes], tmp_path_factory, data) -> None:  # type: ignore[no-untyped-def]
    """Flip bits anywhere in a shard, or cut it. With its checksum file beside it (as `score`
    writes it) indexing always refuses with BadInput; without one it is refused as unverified, and
    read with `unverified` it refuses or succeeds, never with another exception (the metadata
    digest and Arrow's own validation catch some flips there: benches/fuzz_shards.py counts them)."""
    from bftcore.shards import checksum_path

    shard, good = small_shard
    raw = bytearray(shard.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    if bytes(raw) == shard.read_bytes():  # two flips of one bit cancel
        return
    d = tmp_path_factory.mktemp("bad")
    bad = d / shard.name
    bad.write_bytes(bytes(raw))
    with pytest.raises(BadInput, match="no checksum file"):
        bfti.build([bad], d / "loose.bfti")
    try:
        bfti.build([bad], d / "loose.bfti", unverified=True)
    except BadInput:
        pass
    checksum_path(bad).write_bytes(checksum_path(shard).read_bytes())
    with pytest.raises(BadInput):
        bfti.build([bad], d / "x.bfti")
    assert not (d / "x.bfti").exists()
    assert good


def test_nan_and_inf_log_probs_are_refused(small_shard: tuple[Path, bytes], tmp_path: Path) -> None:
    import pyarrow.compute as pc

    from bftcore.shards import COLUMNS, read_shard_table, shard_meta, write_shard

    shard, _ = small_shard
    table = read_shard_table(shard, COLUMNS)
    meta = shard_meta(shard)
    meta.pop("digest")
    for column, value in (("lp_base", float("nan")), ("kl", float("inf")), ("lp_aligned", float("-inf"))):
        col = table.column(column).to_numpy().copy()
        col[7] = value
        bad = table.set_column(table.schema.get_field_index(column), column, pc.cast(col, table.schema.field(column).type))
        path = tmp_path / column / shard.name
        path.parent.mkdir()
        write_shard(bad.replace_schema_metadata({}), path, meta)
        assert shard_meta(path)["k"] == meta["k"]
        with pytest.raises(BadInput, match=f"{column} is NaN or infinite"):
            bfti.build([path], tmp_path / column / "x.bfti")


# ---- a disk that fills while the index is written ----------------------------------------------------
FILL_DISK = """
import resource, signal, sys
from pathlib import Path
from bftcore import index as bfti
from bftcore.errors import BadInput
from bftcore.generate import Decoding
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


# ---- no network ---------------------------------------------------------------------------------------
def test_subprocesses_run_with_outbound_sockets_refused() -> None:
    """The CLI and the demo run in subprocesses: they load tests/offline/sitecustomize.py, so any
    attempt to reach the network fails loudly instead of silently succeeding on a connected machine."""
    probe = ("import socket\n"
             "try:\n    socket.create_connection(('93.184.216.34', 443), timeout=3)\n"
             "except OSError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert "network access in a test" in r.stdout, r.stdout + r.stderr
    import socket

    with pytest.raises(OSError, match="network access in a test"):  # and in this process
        socket.create_connection(("93.184.216.34", 443), timeout=3)
    loop = ("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "c = socket.create_connection(s.getsockname(), timeout=3); print('loopback ok')\n")
    r = subprocess.run([sys.executable, "-c", loop], capture_output=True, text=True, timeout=60, check=False)
    assert "loopback ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-c", "import os; print(os.environ['HF_HUB_OFFLINE'])"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.stdout.strip() == "1"


# ---- untrusted artifacts --------------------------------------------------------------------------------
def test_onnx_graph_with_data_outside_its_directory_is_refused(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model.onnx whose weights point outside its folder (absolute, or climbing out with ..)
    is refused before onnxruntime opens it; the same graph with its data beside it runs."""
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    from bftcore.backends import OnnxGenerator
    from bftcore.export import export_onnx

    src = export_onnx(toy.model_dir("llama", "aligned"), tmp_path / "good")
    model = onnx.load(str(src / "model.onnx"))
    for location in ("../secret.bin", str(tmp_path / "abs.bin")):
        bad = tmp_path / f"bad{len(location)}"
        bad.mkdir()
        for f in src.iterdir():
            if f.name != "model.onnx":
                (bad / f.name).write_bytes(f.read_bytes())
        m = onnx.ModelProto()
        m.CopyFrom(model)
        convert_model_to_external_data(m, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
        for t in onnx.external_data_helper._get_all_tensors(m):
            t.ClearField("raw_data")
            for e in t.external_data:
                if e.key == "location":
                    e.value = location
        # written as raw protobuf: onnx.save itself refuses such locations, an attacker's tool need not
        (bad / "model.onnx").write_bytes(m.SerializeToString())
        with pytest.raises(BadInput, match="outside the graph's directory"):
            OnnxGenerator(bad)
    assert OnnxGenerator(src).generate([[1, 4, 9, 10]], Decoding(4))


def test_a_gguf_chat_template_runs_sandboxed(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A GGUF's chat template is the file author's code: it renders in transformers' sandboxed
    Jinja, so a template reaching for Python internals fails instead of running."""
    import gguf

    from bftcore.backends import GGUFTokenizer, open_llama
    from bftcore.export import export_gguf

    good = export_gguf(toy.model_dir("llama", "aligned"), tmp_path / "m.gguf", "f16")
    reader = gguf.GGUFReader(str(good))
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    w = gguf.GGUFWriter(str(tmp_path / "evil.gguf"), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = evil if field.name == "tokenizer.chat_template" else field.contents()
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(field.name, value)
        else:
            w.add_key_value(field.name, value, vtype)
    for t in reader.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = GGUFTokenizer(open_llama(tmp_path / "evil.gguf", n_ctx=64))
    from jinja2.exceptions import SecurityError

    with pytest.raises(SecurityError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)


def test_an_index_is_refused_with_another_tokenizer(toy, small_shard: tuple[Path, bytes], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_cli

    _, good = small_shard
    (tmp_path / "x.bfti").write_bytes(good)
    r = run_cli("inspect", str(tmp_path / "x.bfti"), "--tokenizer", str(toy.model_dir("qwen2", "aligned")))
    assert r.returncode == 2 and "does not match the index's" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("inspect", str(tmp_path / "x.bfti"), "--tokenizer", str(toy.model_dir("llama", "aligned")))
    assert r.returncode == 0, r.stderr


# ---- corpus input ----------------------------------------------------------------------------------------
def test_corpus_duplicate_ids_and_a_10mb_line(tmp_path: Path) -> None:
    from bftcore.corpus import ReadOptions
    from conftest import run_cli

    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": "a", "prompt": "p1", "response": "r1"}\n{"id": "a", "prompt": "p1", "response": "r1"}\n'
                   '{"id": "a", "prompt": "p2", "response": "r2"}\n{"id": "b", "prompt": "p3"}\n')
    with pytest.raises(BadInput, match=r"dup.jsonl:3: duplicate id 'a' \(first at .*dup.jsonl:1\)"):
        read_corpus([dup])
    records, report = read_corpus([dup], ReadOptions(skip_bad=True))
    assert [r.id for r in records] == ["a", "b"] and report.duplicates == 1 and report.bad == 1
    # one 10 MB line: read whole as one record; a broken one is named by line, without its text
    big = tmp_path / "big.jsonl"
    prompt = "how do I " + "x" * 10_000_000
    big.write_text(json.dumps({"prompt": prompt, "response": "ok"}) + "\n")
    [rec], _ = read_corpus([big])
    assert len(rec.prompt) == len(prompt)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "' + "y" * 10_000_000 + '", "response": }\n')
    r = run_cli("attack", "/nonexistent-model", "--data", str(broken))
    assert r.returncode == 2 and "broken.jsonl:1:" in r.stderr and len(r.stderr) < 400, r.stderr[:400]


# ---- a corpus larger than the memory it may use -----------------------------------------------------
def _memory_cgroup(limit: int) -> Path | None:
    """A cgroup (v2, or v1's memory controller) capping memory at `limit`, when this machine
    lets us make one; None otherwise."""
    for root, knob in ((Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"), (Path("/sys/fs/cgroup"), "memory.max")):
        if not (root / knob).exists() and not (root / "cgroup.controllers").exists():
            continue
        group = root / f"bftcore-test-{os.getpid()}"
        try:
            group.mkdir(exist_ok=True)
            (group / knob).write_text(str(limit))
            swap = group / ("memory.memsw.limit_in_bytes" if knob == "memory.limit_in_bytes" else "memory.swap.max")
            if swap.exists():
                swap.write_text(str(limit) if swap.name.startswith("memory.memsw") else "0")
            return group
        except OSError:
            if group.exists():
                group.rmdir()
    return None


def test_index_a_corpus_larger_than_its_memory_cap(tmp_path: Path) -> None:
    """1.2 GB of scored shards (5 M rows, k = 20, vocab 32,000) indexed under a 512 MiB
    memory cgroup (2 threads: the partial states scale with threads): shards mapped one at a time,
    read in place, keep memory bounded. The result equals an index
    built without the cap. Where no cgroup can be made, the child's peak RSS is held to the
    same bound instead."""
    shards = tmp_path / "shards"
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "benches" / "make_shards.py"),
                        "--rows", "5000000", "--out", str(shards), "--k", "20", "--vocab", "32000"],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    decoded = sum(p.stat().st_size for p in shard_paths(shards))  # uncompressed Arrow: the bytes read
    cap = 512 * 2**20
    assert decoded > 2 * cap
    group = _memory_cgroup(cap)
    # a launcher that joins the cgroup, runs the index step, and reports that step's peak RSS
    launcher = ("import os, resource, subprocess, sys\n"
                "if sys.argv[1]:\n    open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                "r = subprocess.run(sys.argv[2:])\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
                "sys.exit(r.returncode)\n")
    cmd = [sys.executable, "-c", launcher, str(group / "cgroup.procs") if group else "",
           sys.executable, "-m", "bftcore", "index", str(shards), "--out", str(tmp_path / "capped.bfti"), "--json"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                           env={**os.environ, "RAYON_NUM_THREADS": "2"})
    finally:
        if group is not None:
            group.rmdir()
    assert r.returncode == 0, r.stderr[-500:]
    peak = int(r.stdout.strip().splitlines()[-1])
    assert peak < cap, f"peak RSS {peak / 2**20:.0f} MiB"
    bfti.build(shard_paths(shards), tmp_path / "free.bfti")
    assert _arrays(tmp_path / "capped.bfti") == _arrays(tmp_path / "free.bfti")
    for p in shard_paths(shards):
        p.unlink()
    print(f"indexed {decoded / 1e6:.0f} MB of decoded shards, peak RSS {peak / 2**20:.0f} MiB, "
          f"cgroup cap {'512 MiB' if group else 'none (RSS bound checked)'}")


# ---- unsafe models --------------------------------------------------------------------------------------
def test_pickle_weights_need_allow_pickle_and_load_as_tensors_only(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A model directory with pickle weights is refused (a pickle can run code); with
    --allow-pickle it is converted once to safetensors through the weights-only unpickler and
    attacked like any other; a pickle that carries an object, not tensors, is refused even then."""
    import torch

    from bftcore.models import load_model
    from conftest import run_cli

    src = toy.model_dir("llama", "aligned")
    pick = tmp_path / "pickled"
    pick.mkdir()
    torch.save(load_model(src).state_dict(), pick / "pytorch_model.bin")  # the old transformers format
    for f in [src / "config.json", *src.glob("tokenizer*")]:
        (pick / f.name).write_bytes(f.read_bytes())
    assert not list(pick.glob("*.safetensors")) and list(pick.glob("*.bin"))
    args = ["attack", str(pick), "--attack", "prefill", "--k", "5", "--data", str(toy.data_dir / "harmful_heldout.jsonl"),
            "--judge", "exact", "--limit", "20", "--max-new-tokens", "32", "--json", "--device", "cpu"]
    env = {"BFTCORE_CACHE": str(tmp_path / "cache")}
    r = run_cli(*args, env=env)
    assert r.returncode == 2 and "--allow-pickle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("--allow-pickle", *args, env=env)
    assert r.returncode == 0, r.stderr
    want = run_cli(*[a if a != str(pick) else str(src) for a in args])
    assert json.loads(r.stdout)["rows"][0]["x"] == json.loads(want.stdout)["rows"][0]["x"]
    # a pickle whose payload is an object: the weights-only unpickler will not build it
    marker = tmp_path / "ran"
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((pick / "config.json").read_text())

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    torch.save({"model.embed_tokens.weight": Payload()}, evil / "pytorch_model.bin")
    r = run_cli("--allow-pickle", *[a if a != str(pick) else str(evil) for a in args], env=env)
    assert r.returncode == 2 and "do not load as plain tensors" in r.stderr, r.stderr
    assert not marker.exists()


def test_models_with_their_own_code_are_never_run(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """trust_remote_code is never set: a directory whose config points at its own modeling code
    (auto_map) is refused, and that code is not imported."""
    from bftcore.models import load_model

    d = tmp_path / "custom"
    load_model(toy.model_dir("llama", "aligned")).save_pretrained(d)
    marker = tmp_path / "imported"
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BadInput, match="never runs code from a model directory"):
        load_model(d)
    assert not marker.exists()


def test_too_long_prompts_skip_and_count_or_refuse(toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from conftest import run_cli

    args = ["score", str(toy.data_dir / "harmful_heldout.jsonl"), "--base", str(toy.model_dir("llama", "base")),
            "--aligned", str(toy.model_dir("llama", "aligned")), "--max-length", "14", "--device", "cpu", "--json"]
    r = run_cli(*args, "--out", str(tmp_path / "skip"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["score"]
    assert summary["skipped_too_long"] > 0 and summary["docs"] + summary["skipped_too_long"] <= 180
    r = run_cli(*args, "--out", str(tmp_path / "refuse"), "--too-long", "refuse")
    assert r.returncode == 2 and "harmful_heldout.jsonl:" in r.stderr and "such records" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "refuse").exists()
