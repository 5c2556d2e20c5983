"""The shipped artifacts: `make wheel` gives an abi3 wheel and an sdist; the wheel is portable (tagged
manylinux2014 = manylinux_2_17, and its extension really needs no glibc symbol newer than 2.17); it installs
into a fresh virtual environment where no Rust toolchain is on PATH and its `bftcore` indexes scored
shards exactly as the development install does; the sdist builds; the version has one source;
the extras and the onnxruntime-builds guard."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
# `make wheel` links with zig against glibc 2.17: the wheel installs on every Linux with glibc >= 2.17
PORTABLE_TAGS = {"manylinux2014_x86_64", "manylinux_2_17_x86_64"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "wheel", f"DIST={out}", f"PY={sys.executable}"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _wheel(dist: Path) -> Path:
    wheels = sorted(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_make_wheel_gives_one_abi3_wheel_with_the_core_stubs_and_extras(dist: Path) -> None:
    wheel = _wheel(dist)
    # abi3: one wheel for every CPython >= 3.11
    assert wheel.name.startswith(f"bftcore-{VERSION}-cp311-abi3-"), wheel.name
    assert (dist / f"bftcore-{VERSION}.tar.gz").is_file()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(f"bftcore-{VERSION}.dist-info/METADATA").decode()
        entry = z.read(f"bftcore-{VERSION}.dist-info/entry_points.txt").decode()
    assert [n for n in names if n.startswith("bftcore/_core")] == ["bftcore/_core.abi3.so", "bftcore/_core.pyi"]
    assert "bftcore/py.typed" in names and "bftcore/toy/language.py" in names
    assert not [n for n in names if n.startswith(("tests/", "target/", "rust/"))]
    assert "bftcore=bftcore.cli:main" in entry.replace(" ", "")
    assert "Requires-Python: >=3.11" in meta and f"Version: {VERSION}" in meta
    for extra in ("onnx", "gpu", "llamacpp", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    assert "onnxruntime-gpu" in meta and "extra == 'gpu'" in meta


def _platform_tags(wheel: Path) -> set[str]:
    """The platform tags in the file name (maturin writes a compressed set: `a.b`), which pip reads."""
    prefix = f"bftcore-{VERSION}-cp311-abi3-"
    assert wheel.name.startswith(prefix) and wheel.name.endswith(".whl"), wheel.name
    return set(wheel.name[len(prefix):-len(".whl")].split("."))


def _glibc_of_tag(tag: str) -> tuple[int, int]:
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_x86_64", tag)
    if m:
        return int(m[1]), int(m[2])
    return legacy[tag.removesuffix("_x86_64")]


def _glibc_versions_needed(so: Path) -> dict[tuple[int, ...], list[str]]:
    """GLIBC symbol versions the extension imports (`objdump -T`), each with its symbols."""
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) not found"
    out = subprocess.run([objdump, "-T", str(so)], capture_output=True, text=True, check=True).stdout
    needed: dict[tuple[int, ...], list[str]] = {}
    for line in out.splitlines():
        m = re.search(r"\bGLIBC_(\d+(?:\.\d+)+)\)?\s+(\S+)$", line)
        if m and "*UND*" in line:
            needed.setdefault(tuple(int(x) for x in m[1].split(".")), []).append(m[2])
    return needed


def test_the_wheel_is_portable_and_its_tag_is_true(dist: Path, tmp_path: Path) -> None:
    """manylinux2014 (= manylinux_2_17) in the name pip reads and in the WHEEL file, and no GLIBC symbol
    version newer than the tag's in the extension: the tag's claim, not only the file name."""
    wheel = _wheel(dist)
    tags = _platform_tags(wheel)
    assert tags == PORTABLE_TAGS, wheel.name
    with zipfile.ZipFile(wheel) as z:
        wheel_meta = z.read(f"bftcore-{VERSION}.dist-info/WHEEL").decode()
        so = Path(z.extract("bftcore/_core.abi3.so", tmp_path))
    assert {line.split("-")[-1] for line in wheel_meta.splitlines() if line.startswith("Tag:")} == PORTABLE_TAGS
    limit = min(_glibc_of_tag(t) for t in tags)
    assert limit == (2, 17)
    needed = _glibc_versions_needed(so)
    assert needed, "no GLIBC symbol versions read from the extension"
    newest = max(needed)
    assert newest <= limit, f"needs GLIBC_{'.'.join(map(str, newest))} ({', '.join(sorted(needed[newest])[:5])}) > tag's {limit}"


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed. It sees the machine's packages (torch is
    several GB and never installed twice) but installs bftcore itself from the wheel, offline: every
    declared dependency must already resolve."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(root)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install",
                        "--no-index", "--quiet", str(_wheel(dist))], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # the portable wheel itself is what got installed: its extension byte for byte, its tags
    site = next((root / "lib").glob("python3.*/site-packages"))
    with zipfile.ZipFile(_wheel(dist)) as z:
        shipped = hashlib.sha256(z.read("bftcore/_core.abi3.so")).hexdigest()
    assert hashlib.sha256((site / "bftcore" / "_core.abi3.so").read_bytes()).hexdigest() == shipped
    installed = (site / f"bftcore-{VERSION}.dist-info" / "WHEEL").read_text()
    assert {line.split("-")[-1] for line in installed.splitlines() if line.startswith("Tag:")} == PORTABLE_TAGS
    return root


def _no_rust_env(venv: Path) -> dict[str, str]:
    path = os.pathsep.join([str(venv / "bin"), "/usr/bin", "/bin"])
    for tool in ("cargo", "rustc", "maturin"):
        assert shutil.which(tool, path=path) is None, f"{tool} on the test's PATH"
    return {**os.environ, "PATH": path, "VIRTUAL_ENV": str(venv)}


def test_the_installed_wheel_runs_without_a_rust_toolchain(venv: Path, toy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = _no_rust_env(venv)
    r = subprocess.run(["bftcore", "--version"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"bftcore, version {VERSION}", r.stdout + r.stderr
    code = "import bftcore, bftcore._core as c; print(bftcore.__file__); print(c.__file__)"
    where = subprocess.run(["python", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(str(venv)) for line in where.stdout.split()), where.stdout  # not the checkout

    # scored shards of real toy-world texts, written by the development install
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(line + "\n" for line in
                              (toy.data_dir / "harmful_heldout.jsonl").read_text().splitlines()[:12]))
    shards = tmp_path / "shards"
    llama = toy.model_dir("llama", "base").parent
    s = run_cli("score", str(corpus), "--base", str(llama / "base"), "--aligned", str(llama / "aligned"),
                "--out", str(shards), "--device", "cpu")
    assert s.returncode == 0, s.stderr
    # indexed by the wheel's command, then by the development install: the same index
    mine = subprocess.run(["bftcore", "index", str(shards), "--out", str(tmp_path / "wheel.bfti"), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert mine.returncode == 0, mine.stderr
    dev = run_cli("index", str(shards), "--out", str(tmp_path / "dev.bfti"), "--json")
    assert dev.returncode == 0, dev.stderr
    a, b = json.loads(mine.stdout), json.loads(dev.stdout)
    assert a["header"]["rows"] > 0 and a["header"] == b["header"]
    assert {k: v for k, v in a.items() if k != "index"} == {k: v for k, v in b.items() if k != "index"}
    assert (tmp_path / "wheel.bfti").read_bytes() == (tmp_path / "dev.bfti").read_bytes()


def test_the_sdist_builds_a_wheel(dist: Path, tmp_path: Path) -> None:
    """From the sdist alone, in its own cargo target directory (nothing reused from the checkout)."""
    sdist = dist / f"bftcore-{VERSION}.tar.gz"
    env = {**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target")}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                        str(sdist), "-w", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    built = list((tmp_path / "out").glob(f"bftcore-{VERSION}-cp311-abi3-*.whl"))
    assert len(built) == 1
    with zipfile.ZipFile(built[0]) as z:
        assert "bftcore/_core.abi3.so" in z.namelist()


def test_the_version_has_one_source() -> None:
    """Cargo.toml's workspace version: the core reports it, the package metadata carries it."""
    import importlib.metadata

    import bftcore
    import bftcore._core

    assert bftcore.__version__ == bftcore._core.__version__ == importlib.metadata.version("bftcore") == VERSION
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["dynamic"] == ["version"] and "version" not in pyproject["project"]


def _fake_distribution(site: Path, name: str, version: str = "1.23.0") -> None:
    """The metadata pip writes for an installed distribution: all that tells builds apart."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_onnxruntime_and_onnxruntime_gpu_together_are_refused(tmp_path: Path) -> None:
    from bftcore.extras import onnxruntime_builds

    site = tmp_path / "site"
    _fake_distribution(site, "onnxruntime-gpu")
    _fake_distribution(site, "onnxruntime")
    assert onnxruntime_builds([str(site)]) == ["onnxruntime", "onnxruntime-gpu"]
    data = tmp_path / "h.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r", "label": "harmful"}) + "\n")
    r = run_cli("attack", str(tmp_path), "--backend", "onnx", "--data", str(data),
                env={"PYTHONPATH": os.pathsep.join([os.environ["PYTHONPATH"], str(site)])})
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "onnxruntime and onnxruntime-gpu are installed together" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_missing_extra_names_the_extra(tmp_path: Path) -> None:
    """Without llama-cpp-python (here: hidden from the import system) a GGUF file is a one-line
    reason naming `bftcore[llamacpp]`."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    code = ("import sys; sys.modules['llama_cpp'] = None; sys.argv = ['bftcore', 'attack', sys.argv[1], "
            "'--backend', 'llamacpp', '--data', sys.argv[2]]; from bftcore.cli import main; main()")
    data = tmp_path / "h.jsonl"
    data.write_text(json.dumps({"prompt": "p", "response": "r", "label": "harmful"}) + "\n")
    r = subprocess.run([sys.executable, "-c", code, str(gguf), str(data)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'bftcore[llamacpp]'" in r.stderr
