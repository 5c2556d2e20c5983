"""Build llama.cpp's own server (`llama-server`: parallel slots, continuous batching) from the
llama.cpp sources the installed llama-cpp-python was compiled from: its sdist from the package
index (sha256 checked), then CMake. ~10 minutes on 2 cores, once; `make llama-server` runs it.

    python benches/build_llama_server.py [--out DIR]     # default: $BFTCORE_CACHE/tools

Only benches/attack_throughput.py uses it (the serving engine that batches requests in flight).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from bftcore.cache import cache_root

INDEX = "https://pypi.org/simple/llama-cpp-python/"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=cache_root() / "tools")
    a = ap.parse_args()
    version = importlib.metadata.version("llama_cpp_python")
    target = a.out / "llama-server"
    stamp = a.out / "llama-server.version"
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == version:
        print(f"{target}: llama.cpp of llama-cpp-python {version}, built already")
        return
    if shutil.which("cmake") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "cmake"], check=True)
    page = urllib.request.urlopen(INDEX, timeout=60).read().decode()
    found = re.search(rf'href="([^"]*llama_cpp_python-{re.escape(version)}\.tar\.gz)#sha256=([0-9a-f]+)"', page)
    if not found:
        sys.exit(f"no sdist of llama-cpp-python {version} on {INDEX}")
    url, sha = found.groups()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(tmp) / "sdist.tar.gz"
        sdist.write_bytes(urllib.request.urlopen(url, timeout=300).read())
        if hashlib.sha256(sdist.read_bytes()).hexdigest() != sha:
            sys.exit(f"{url}: sha256 differs from the index's")
        with tarfile.open(sdist) as t:
            t.extractall(tmp, filter="data")
        src = Path(tmp) / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        build = Path(tmp) / "build"
        subprocess.run(["cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=OFF",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                        "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", "2"], check=True,
                       stdout=subprocess.DEVNULL)
        a.out.mkdir(parents=True, exist_ok=True)
        tmp_target = target.with_name(target.name + ".tmp")
        shutil.copy2(build / "bin" / "llama-server", tmp_target)
        tmp_target.replace(target)
    stamp.write_text(version + "\n")
    print(f"built {target} (llama.cpp of llama-cpp-python {version})")


if __name__ == "__main__":
    main()
