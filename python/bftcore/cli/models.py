"""`bftcore models tiny`: a tiny model of a real family, for trying every stage without weights."""

from __future__ import annotations

from pathlib import Path

import click

from bftcore.cli.common import console, emit_json
from bftcore.families import FAMILIES, TinySize


@click.group()
def models() -> None:
    """Model directories made locally (no download)."""


@models.command("tiny")
@click.argument("family", type=click.Choice(list(FAMILIES)))
@click.option("--vocab", required=True, type=click.Path(path_type=Path),
              help="llama.cpp's vocabulary GGUF of the family (models/ggml-vocab-NAME.gguf in llama.cpp).")
@click.option("--template", type=click.Path(path_type=Path),
              help="The checkpoint's chat template (.jinja); Llama 2's is built in.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Writes OUT/base and OUT/aligned.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--hidden", type=click.IntRange(min=16), default=TinySize.hidden, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=TinySize.layers, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the two directories and their config as JSON.")
def tiny(family: str, vocab: Path, template: Path | None, out: Path, seed: int, hidden: int, layers: int,
         as_json: bool) -> None:
    """Write a base/aligned pair of FAMILY at a CPU size: the family's real config fields, vocabulary,
    special tokens and chat template, seeded random weights (aligned = base + a small delta).
    Success rates on random weights mean nothing; the pair is for running every stage.

    \b
    Example:
      bftcore models tiny llama-3.1 --vocab ggml-vocab-llama-bpe.gguf \\
          --template Llama-3.1-8B-Instruct.jinja --out tiny-llama31
      bftcore score --base tiny-llama31/base --aligned tiny-llama31/aligned corpus/ --out shards/
    """
    import json

    from bftcore.families import tiny_pair

    if not vocab.is_file():
        raise click.BadParameter(f"{vocab}: no such file", param_hint="--vocab")
    if hidden % 8:
        raise click.BadParameter(f"{hidden} is not a multiple of 8 (4 heads of an even width)", param_hint="--hidden")
    size = TinySize(hidden=hidden, layers=layers, heads=4, kv_heads=2, intermediate=2 * hidden)
    base, aligned = tiny_pair(family, vocab, out, template=template, seed=seed, size=size)
    config = json.loads((aligned / "config.json").read_text())
    if as_json:
        emit_json({"family": family, "base": str(base), "aligned": str(aligned), "config": config})
        return
    console.print(f"{family}: {base} and {aligned} ({config['vocab_size']} tokens, hidden {hidden}, "
                  f"{layers} layers)", markup=False, highlight=False)
