"""Every stage on every real family, through the CLI, on tiny models with the real vocabularies and
chat templates: score, index, inspect, complete (LoRA and full), attack, export to GGUF (F16, Q8_0,
Q4_K_M) and ONNX, the attacks again on each artifact (llama.cpp, onnxruntime, the llama.cpp
server) and the report. Random weights: rates mean nothing and are not asserted; that every stage
runs, counts what it should and round-trips is.

The commands run in this process (`bftcore.cli.main`), as a user's shell would run them, without
paying torch's import once per command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bftcore.backends import llama_server
from bftcore.cli import main
from conftest import FAMILY_FILES, family_pair

RECORDS = 6  # harmful and benign records each: enough for every stage to have work


def bftcore(capsys: Any, *args: str) -> dict[str, Any]:
    """Run `bftcore ARGS --json` here; its JSON output, or a failure with its stderr."""
    with pytest.raises(SystemExit) as done:
        main([*args, "--json"])
    out = capsys.readouterr()
    assert done.value.code == 0, (args, out.err[-2000:])
    return json.loads(out.out) if out.out.strip() else {}


def _corpus(toy: Any, tmp: Path) -> tuple[Path, Path]:
    """A few of the toy world's harmful and benign prompt/response pairs (plain English text)."""
    files = []
    for name in ("harmful_train", "benign_train"):
        lines = (toy.data_dir / f"{name}.jsonl").read_text().splitlines()[:RECORDS]
        path = tmp / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return files[0], files[1]


@pytest.mark.parametrize("family", list(FAMILY_FILES))
def test_every_stage_through_the_cli(family: str, toy, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base, aligned = family_pair(family)
    harmful, benign = _corpus(toy, tmp_path)
    run = tmp_path / "run"

    # find: score both models over the corpus, index, inspect
    scored = bftcore(capsys, "score", "--base", str(base), "--aligned", str(aligned), str(harmful), str(benign),
                     "--out", str(tmp_path / "shards"), "--device", "cpu")
    assert scored["score"]["docs"] == 2 * RECORDS and scored["score"]["tokens"] > 0
    bftcore(capsys, "index", str(tmp_path / "shards"), "--out", str(run / "corpus.bfti"))
    inspected = bftcore(capsys, "inspect", str(run / "corpus.bfti"))
    assert inspected["header"]["labels"] == ["benign", "harmful"]

    # repair: targeted completion, LoRA (merged) and full weights
    common = ["--aligned", str(aligned), "--base", str(base), "--index", str(run / "corpus.bfti"),
              "--data", str(harmful), "--benign", str(benign), "--steps", "2", "--batch-size", "4",
              "--max-length", "192", "--device", "cpu"]
    for kind, extra in (("lora", ["--lora", "--lora-r", "4", "--merge"]), ("full", [])):
        card = bftcore(capsys, "complete", *common, *extra, "--out", str(tmp_path / kind))
        assert card["data"]["harmful"] == RECORDS
        (run / "training" / kind).mkdir(parents=True)
        for name in ("train_log.jsonl", "bftcore_complete.json"):  # what the report reads of a run
            shutil.copy(tmp_path / kind / name, run / "training" / kind / name)
    hardened = tmp_path / "full"
    assert json.loads((hardened / "config.json").read_text())["vocab_size"] == json.loads(
        (aligned / "config.json").read_text())["vocab_size"]

    # attack the hardened model (PyTorch)
    attack = ["--data", str(harmful), "--judge", "keyword", "--k", "2,4", "--limit", "4",
              "--max-new-tokens", "6", "--device", "cpu"]
    torch_rows = bftcore(capsys, "attack", str(hardened), "--attack", "direct,prefill,rank-prefill,completion",
                         *attack, "--out", str(run / "attack-torch"))["rows"]
    assert {r["attack"] for r in torch_rows} == {"direct", "prefill", "rank-prefill", "completion"}
    assert all(0 < r["n"] <= 4 for r in torch_rows)

    # ship: GGUF in three types and ONNX, each attacked again where it runs
    artifacts = {}
    for dtype in ("f16", "q8_0", "q4_k_m"):
        artifacts[dtype] = tmp_path / f"hardened-{dtype}.gguf"
        bftcore(capsys, "export", str(hardened), "--to", "gguf", "--dtype", dtype, "--out", str(artifacts[dtype]))
    artifacts["onnx"] = tmp_path / "hardened-onnx"
    bftcore(capsys, "export", str(hardened), "--to", "onnx", "--out", str(artifacts["onnx"]))
    for label, path in artifacts.items():
        rows = bftcore(capsys, "attack", str(path), "--attack", "direct,prefill", *attack,
                       "--out", str(run / f"attack-{label}"))["rows"]
        assert [(r["attack"], r["k"], r["n"]) for r in rows] == [
            (r["attack"], r["k"], r["n"]) for r in torch_rows if r["attack"] in ("direct", "prefill")], label
    with llama_server(artifacts["q8_0"]) as url:
        rows = bftcore(capsys, "attack", url, "--backend", "server", "--tokenizer", str(artifacts["q8_0"]),
                       "--attack", "prefill", *attack)["rows"]
        assert [r["n"] for r in rows] == [r["n"] for r in torch_rows if r["attack"] == "prefill"]

    # report: one page of the run
    summary = bftcore(capsys, "report", str(run), "--out", str(tmp_path / "report.html"))
    assert summary["indexes"] == 1 and summary["attack_tables"] == 1 + len(artifacts)
    assert summary["training_runs"] == 2
