"""Attack throughput per attack and per engine, side by side in one run (issue 19, item 4).

    python benches/attack_throughput.py [--arch llama] [--records 180] [--llama-server PATH]

The toy world's aligned model and its Q8_0 GGUF export, the held-out harmful prompts, greedy (and
for prefill-sampled 4 samples at T = 0.9), 64 new tokens, the exact judge, k = 10. Engines:

- `torch batch 64` and `torch batch 1`: `TorchGenerator` (left-padded, length-sorted, KV cache);
- `llama.cpp`: the GGUF in process (`LlamaCppGenerator`, one sequence at a time);
- `server N in flight`: llama.cpp's own `llama-server` (`--parallel 16`, continuous batching) over
  HTTP with N requests open at once (`ServerGenerator`), N = 1, 4, 16; `make llama-server` builds
  it from the llama.cpp sources of the installed llama-cpp-python (without it these rows are
  left out and the table says so).

Prompts per second per attack and engine, and whether each engine's rows equal its reference's
(torch: batch 64 against batch 1; llama.cpp: every server row against the in-process one).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from bftcore.attack import AttackConfig, Suite
from bftcore.backends import GGUFTokenizer, LlamaCppGenerator, ServerGenerator, open_llama
from bftcore.cache import cache_root
from bftcore.corpus import read_corpus
from bftcore.demo import exported_models
from bftcore.generate import TorchGenerator
from bftcore.judge import PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.toy import toy_world

ATTACKS = ("direct", "prefill", "prefill-sampled", "rank-prefill", "rap")
IN_FLIGHT = (1, 4, 16)


def llama_server_path(given: str | None) -> Path | None:
    """The llama-server binary: --llama-server, $BFTCORE_LLAMA_SERVER, what `make llama-server` built."""
    for p in (given, os.environ.get("BFTCORE_LLAMA_SERVER"), cache_root() / "tools" / "llama-server",
              shutil.which("llama-server")):
        if p and Path(p).is_file():
            return Path(p)
    return None


class LlamaServer:
    """llama.cpp's server on a free port with `slots` parallel slots of `ctx` tokens each."""

    def __init__(self, binary: Path, gguf: Path, *, slots: int = 16, ctx: int = 512) -> None:
        import socket
        import subprocess
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        threads = str(torch.get_num_threads())
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "--parallel", str(slots),
             "-c", str(slots * ctx), "-t", threads, "-tb", threads, "--no-webui", "--log-disable"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError("llama-server did not come up within 120 s")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def run(gen: Any, judge: Any, cfg: AttackConfig, records: list[Any]) -> dict[str, tuple[float, int, list[Any]]]:
    """attack -> (seconds, prompts, rows)."""
    suite = Suite(gen, judge, cfg, model="aligned", arch="llama")
    out = {}
    for attack in ATTACKS:
        t0 = time.perf_counter()
        res = suite.run(attack, records)
        prompts = sum(r.n for r in res.rows)
        out[attack] = (time.perf_counter() - t0, prompts, [(r.attack, r.k, r.x, r.n) for r in res.rows])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--records", type=int, default=180)
    ap.add_argument("--llama-server", help="the llama-server binary (default: what `make llama-server` built)")
    a = ap.parse_args()
    tw = toy_world(0).build([a.arch])
    records = read_corpus([tw.data_dir / "harmful_heldout.jsonl"])[0][: a.records]
    aligned = tw.model_dir(a.arch, "aligned")
    model, tok = load_model(aligned), load_tokenizer(tw.tokenizer_dir(a.arch))
    judge = PhraseJudge(tw.world.harmful_phrases)
    cfg = AttackConfig(ks=(10,), max_new_tokens=64, samples=4)
    gguf = exported_models(aligned, only=("gguf-q8_0",))["gguf-q8_0"]
    engines: dict[str, dict[str, tuple[float, int, list[Any]]]] = {
        "torch batch 64": run(TorchGenerator(model, tok, batch_size=64), judge, cfg, records),
        "torch batch 1": run(TorchGenerator(model, tok, batch_size=1), judge, cfg, records),
        "llama.cpp (in process)": run(LlamaCppGenerator(gguf), judge, cfg, records),
    }
    binary = llama_server_path(a.llama_server)
    if binary is not None:
        server = LlamaServer(binary, gguf)
        try:
            tokenizer = GGUFTokenizer(open_llama(gguf, n_ctx=64))
            for n in IN_FLIGHT:
                engines[f"llama-server, {n} in flight"] = run(ServerGenerator(server.url, tokenizer, in_flight=n),
                                                              judge, cfg, records)
        finally:
            server.close()
    print(f"toy {a.arch} aligned (and its Q8_0 GGUF), {len(records)} held-out harmful prompts, k = 10, 64 new "
          f"tokens, {cfg.samples} samples for prefill-sampled; torch threads {torch.get_num_threads()}")
    if binary is None:
        print("(llama-server rows left out: no binary; `make llama-server` builds it)")
    print()
    print("| engine | " + " | ".join(f"{x} prompts/s" for x in ATTACKS) + " | rows equal to |")
    print("|---" * (len(ATTACKS) + 2) + "|")
    for name, got in engines.items():
        ref = "torch batch 1" if name.startswith("torch") else "llama.cpp (in process)"
        differ = [f"{x} ({'; '.join(f'{a} k={k}: {xs}/{n}' for a, k, xs, n in got[x][2])} vs "
                  f"{'; '.join(f'{xs}/{n}' for _, _, xs, n in engines[ref][x][2])})"
                  for x in ATTACKS if got[x][2] != engines[ref][x][2]]
        cells = [f"{got[x][1] / got[x][0]:,.1f}" for x in ATTACKS]
        verdict = "(reference)" if name == ref else f"{ref}: " + ("all" if not differ else "all but " + ", ".join(differ))
        print(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    print()
    print("Speed-up of each engine over torch batch 1, per attack:")
    print()
    print("| engine | " + " | ".join(ATTACKS) + " |")
    print("|---" * (len(ATTACKS) + 1) + "|")
    one = engines["torch batch 1"]
    for name, got in engines.items():
        print(f"| {name} | " + " | ".join(f"{one[x][0] / got[x][0] * got[x][1] / one[x][1]:.1f}x" for x in ATTACKS) + " |")


if __name__ == "__main__":
    main()
