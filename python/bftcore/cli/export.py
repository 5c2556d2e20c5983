"""`bftcore export`: a model directory to GGUF (llama.cpp) or ONNX (onnxruntime), optionally verified."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from bftcore.cli.common import console, emit_json, err, export_parity_table, progress_bars
from bftcore.errors import BadInput, CheckFailed


@click.command("export")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(["gguf", "onnx"]), required=True, help="gguf (llama.cpp) or onnx (onnxruntime).")
@click.option("--dtype", type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_k_m"]), default=None,
              help="GGUF weight type [default: f16]; ONNX is always f32.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The .gguf file, or the ONNX directory.")
@click.option("--verify", is_flag=True, help="Compare the export with PyTorch: token ids, max |logit diff|, argmax agreement.")
@click.option("--verify-data", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Prompt/response records to verify on (default: built-in probe texts); repeatable.")
@click.option("--verify-limit", type=click.IntRange(min=1), default=64, show_default=True, help="Records verified.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), help="Argmax agreement --verify asks [default: 0.99; 0.95 for q4_k_m].")
@click.option("--thinking", is_flag=True,
              help="GGUF: the chat template renders with thinking on where the runtime passes no enable_thinking "
                   "(Qwen3). Off by default, as bftcore renders.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: output, seconds, parity rows.")
def export_cmd(model: Path, target: str, dtype: str | None, out: Path, verify: bool,
               verify_data: tuple[Path, ...], verify_limit: int, min_agreement: float | None,
               thinking: bool, as_json: bool) -> None:
    """Export a model directory (or LoRA adapter) to GGUF for llama.cpp or to ONNX for onnxruntime.

    GGUF: Llama (Llama 2, Llama 3.x with its rope scaling), Qwen2/Qwen2.5 and Qwen3; byte-level BPE
    (GPT-2, Qwen2, Llama 3 pre-tokenizers) and SentencePiece-style tokenizers; special tokens and the
    chat template go along. q4_k_m is
    made by llama.cpp's quantizer. ONNX: one graph with a KV cache, tokenizer and config beside it.
    With --verify, exits 3 when a token id differs or argmax agreement is below --min-agreement.

    \b
    Example:
      bftcore export hardened/ --to gguf --dtype q8_0 --out hardened-q8_0.gguf --verify
      bftcore export hardened/ --to onnx --out hardened-onnx/ --verify --verify-data heldout.jsonl
      bftcore attack hardened-q8_0.gguf --attack prefill --data harmful.jsonl
    """
    from bftcore import export as ex
    from bftcore.models import resolve_model

    dtype = _checked_dtype(target, dtype, out)
    if thinking and target == "onnx":
        raise BadInput("--thinking sets a GGUF chat template's default; an ONNX directory keeps the source's "
                       "template (pass --thinking to bftcore attack instead)")
    model = resolve_model(model)
    ex.check_source(model, target)
    start = time.perf_counter()
    with progress_bars() as bar:
        ex.export(model, target, out, dtype, progress=bar, thinking=thinking)
        seconds = time.perf_counter() - start
        rows = ex.verify(model, out, ex.verify_texts(model, verify_data, verify_limit), dtype) if verify else []
    need = min_agreement if min_agreement is not None else ex.min_agreement(dtype)
    failed = [r for r in rows if r.token_mismatches > 0 or r.argmax_agreement < need]
    types = ex.gguf_tensor_types(out) if target == "gguf" else None
    if as_json:
        emit_json({"out": str(out), "to": target, "dtype": dtype, "seconds": round(seconds, 3),
                   **({"tensor_types": types} if types is not None else {}),
                   "parity": [r.to_dict() for r in rows], "min_agreement": need, "ok": not failed})
    else:
        _print_export(target, dtype, out, seconds, types or {}, rows)
    if failed:
        err.print(f"bftcore: verification failed: {', '.join(r.reader for r in failed)} "
                  f"(token ids must match and argmax agreement be >= {100 * need:.0f}%)")
        raise CheckFailed()


def _checked_dtype(target: str, dtype: str | None, out: Path) -> str:
    """The weight type (default: f16 for GGUF, f32 for ONNX); BadInput where --dtype or --out cannot be."""
    if target == "onnx" and dtype not in (None, "f32"):
        raise BadInput(f"ONNX export writes F32 weights; --dtype {dtype} applies to GGUF only")
    if target == "gguf" and out.suffix != ".gguf":
        raise BadInput(f"--out {out}: a GGUF file name ends in .gguf")
    if target == "gguf" and out.is_dir():
        raise BadInput(f"--out {out} is a directory")
    if target == "onnx" and out.is_file():
        raise BadInput(f"--out {out} is a file; ONNX export writes a directory")
    return dtype or ("f16" if target == "gguf" else "f32")


def _print_export(target: str, dtype: str, out: Path, seconds: float, types: dict[str, Any],
                  rows: list[Any]) -> None:
    tensors = ", ".join(f"{k} {v}" for k, v in types.items())
    console.print(f"{target} {dtype}: {out} in {seconds:.1f} s" + (f" (tensors: {tensors})" if tensors else ""))
    if rows:
        console.print(export_parity_table(rows))
