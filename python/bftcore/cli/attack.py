"""`bftcore attack`: the attack suite on any target (`backends.open_target` opens it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bftcore.cli.common import (
    console,
    corpus_options,
    dtype_option,
    emit_json,
    judge_options,
    open_judge,
    options_to,
    progress_bars,
    rows_table,
    thinking_option,
)
from bftcore.errors import BadInput


def _int_list(value: str, option: str = "--k") -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError as e:
        raise BadInput(f"{option} must be comma-separated integers, got {value!r}") from e
    if not ks or min(ks) < 1:
        raise BadInput(f"{option} needs positive integers")
    return ks


def _attack_config(ks: str, samples: int, temperature: float, top_p: float, max_new_tokens: int,
                   seed: int, thinking: bool, deep_ks: str, deep_tail: int, shots: str,
                   restart_refusal: str) -> Any:
    from bftcore.attack import AttackConfig

    if not restart_refusal.strip():
        raise BadInput("--restart-refusal needs some text")
    return AttackConfig(ks=_int_list(ks), max_new_tokens=max_new_tokens, seed=seed, samples=samples,
                        temperature=temperature, top_p=top_p, thinking=thinking,
                        deep_ks=_int_list(deep_ks, "--deep-k"), deep_tail=deep_tail,
                        shots=_int_list(shots, "--shots"), restart_refusal=restart_refusal.strip())


@click.command()
@click.argument("model")
@click.option("--attack", "attacks", default="direct,prefill", show_default=True,
              help="Comma-separated: direct, prefill, prefill-sampled, rank-prefill, rap, rap-oracle, deep-prefill, "
                   "restart, many-shot, refusal-margin, over-refusal, benign-prefill, completion, decoding-exploit.")
@click.option("--k", "ks", default="5,10,20,40", show_default=True, help="Prefill lengths (tokens).")
@click.option("--deep-k", "deep_ks", default="64,128,256", show_default=True, help="deep-prefill's depths (tokens).")
@click.option("--deep-tail", type=click.IntRange(min=1), default=16, show_default=True,
              help="deep-prefill's last row forces the whole response but this many tokens.")
@click.option("--shots", default="1,2,4", show_default=True,
              help="many-shot: earlier compliant harmful exchanges in the context (as many as fit).")
@click.option("--restart-refusal", default="I cannot help with that.", show_default=True,
              help="restart: the refusal put between the harmful prefix and the next step marker.")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(exists=True, path_type=Path),
              help="Prompts (and harmful responses, for prefilling); repeatable.")
@click.option("--judge", "judge_spec", default="refusal", show_default=True,
              help="refusal, keyword, exact (toy world), classifier:PATH or causal:PATH (see `bftcore judge`).")
@click.option("--backend", type=click.Choice(["auto", "torch", "llamacpp", "onnx", "server"]), default="auto",
              show_default=True, help="auto: llamacpp for a .gguf file, onnx for an export directory, "
              "server for an http:// URL, else torch.")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, path_type=Path),
              help="With --backend server: the served GGUF file (or a tokenizer directory).")
@click.option("--in-flight", type=click.IntRange(min=1), default=8, show_default=True,
              help="With --backend server: requests open at once (a batching server fills its slots with them).")
@click.option("--name", help="Model name in the rows (default: the directory's name).")
@click.option("--tag", default="", help="Suffix for the attack names in the rows (e.g. the data's style).")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N records.")
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True, help="Samples per prompt (prefill-sampled).")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), default=0.9, show_default=True)
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.6, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--benign", type=click.Path(exists=True, path_type=Path), help="Benign prompt/response file: perplexity.")
@click.option("--kl-to", "kl_to", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --benign: mean per-token KL(model || this model) on the benign responses (e.g. the aligned model).")
@judge_options
@click.option("--lm-eval", "lm_eval_tasks", help="Comma-separated lm-eval-harness tasks (torch backend).")
@click.option("--lm-eval-include", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A directory of local lm-eval task files (YAML with local data), added to the harness's own.")
@click.option("--contrast-base", type=click.Path(path_type=Path),
              help="Decode with contrastive suppression of this base model's favored tokens (inference-time variant).")
@click.option("--contrast-gamma", type=click.FloatRange(min=0), default=2.0, show_default=True)
@click.option("--ada-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Any-Depth Alignment (inference-time defense): re-insert the assistant header every N generated "
                   "tokens and end the answer where the model then refuses; 0: off.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@dtype_option("The torch backend's model and --contrast-base; a GGUF or ONNX target has its own types.")
@thinking_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write results.parquet, samples.parquet, results.md, asr_vs_k.png here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the rows.")
@corpus_options
@options_to("cfg", _attack_config, "ks", "samples", "temperature", "top_p", "max_new_tokens", "seed", "thinking",
            "deep_ks", "deep_tail", "shots", "restart_refusal")
def attack(model: str, attacks: str, data: tuple[Path, ...], judge_spec: str, backend: str,
           tokenizer_path: Path | None, in_flight: int, name: str | None, tag: str, limit: int | None, cfg: Any,
           benign: Path | None, kl_to: Path | None, refusal_keywords: Path | None, judge_template: Path | None,
           judge_label: str | None, toy_seed: int, lm_eval_tasks: str | None, lm_eval_include: Path | None,
           contrast_base: Path | None,
           contrast_gamma: float, ada_every: int, device: str, dtype: str, out: Path | None, as_json: bool, read: Any) -> None:
    """Attack a model and report each attack's success rate (x/n, 95% Wilson interval).

    Prefilling forces the first k tokens of each record's harmful response as the start of the
    answer; the forced text is never judged as the model's output. Under torchrun every
    generation is split over the ranks (one GPU each) and rank 0 reports the rows one process gives.

    \b
    Example:
      bftcore attack aligned/ --attack direct,prefill,rank-prefill --k 5,10,20,40 \\
          --data harmful.jsonl --judge refusal --out results/
      bftcore attack hardened-q8_0.gguf --backend llamacpp --attack prefill --data harmful.jsonl
      bftcore attack http://127.0.0.1:8000 --backend server --tokenizer hardened-q8_0.gguf \\
          --attack prefill --data harmful.jsonl --in-flight 16
      torchrun --nproc-per-node 8 -m bftcore attack aligned/ --attack rap --data harmful.jsonl --device cuda
    """
    from bftcore import attack as atk
    from bftcore import dist
    from bftcore.backends import detect_backend, open_target
    from bftcore.corpus import read_corpus
    from bftcore.models import resolve_device

    names = _attack_names(attacks)
    kind = detect_backend(model) if backend == "auto" else backend
    _check_torch_only(kind, benign, lm_eval_tasks, contrast_base, dtype, lm_eval_include)
    if kl_to is not None and not benign:
        raise BadInput("--kl-to measures on the --benign responses: give --benign too")
    rank, world = dist.init()  # under torchrun: the ranks share each generation, rank 0 reports
    dev = dist.local_device(str(resolve_device(device)))
    records = read_corpus(data, read)[0][:limit]
    judge, openers = open_judge(judge_spec, toy_seed, refusal_keywords, judge_template, judge_label, dev)
    gen, arch = open_target(model, kind, device=dev, tokenizer=tokenizer_path, contrast_base=contrast_base,
                            contrast_gamma=contrast_gamma, dtype=dtype, in_flight=in_flight)
    label = name or (model if kind == "server" else Path(model).resolve().name)
    model_gen = gen  # perplexity and KL read the model itself
    if world > 1:
        gen = dist.RankSplitGenerator(gen)
    if ada_every:
        from bftcore.anydepth import AnyDepthConfig, AnyDepthGenerator
        from bftcore.judge import refusal_opening

        gen = AnyDepthGenerator(gen, refusal_opening([*atk.REFUSAL_OPENINGS, *openers]),
                                AnyDepthConfig(every=ada_every), thinking=cfg.thinking)
    result = atk.AttackResult()
    with progress_bars() as bar:
        suite = atk.Suite(gen, judge, cfg, model=label, arch=arch, openers=openers, progress=bar)
        for a in names:
            result.extend(suite.run(a, records, tag=tag))
    if ada_every:
        result.measures.append({"model": label, "arch": arch, "attack": "any-depth", "metric": "ada-reassessed",
                                "value": gen.reassessed, "tokens": 0})
    if rank != 0:
        return
    result.measures += _measures(model_gen, label, arch, model, benign, lm_eval_tasks, dev, cfg.thinking, kl_to,
                                 dtype, lm_eval_include)
    if out:
        atk.write_results(result, out)
    _print_attack(result, judge.name, len(records), label, out, as_json)


def _attack_names(attacks: str) -> list[str]:
    from bftcore.attack import ATTACKS

    names = [a.strip() for a in attacks.split(",") if a.strip()]
    unknown = [a for a in names if a not in ATTACKS]
    if unknown or not names:
        raise BadInput(f"unknown attack {', '.join(unknown) or '(none)'} (known: {', '.join(ATTACKS)})")
    return names


def _task_names(spec: str) -> list[str]:
    return [t.strip() for t in spec.split(",") if t.strip()]


def _check_torch_only(kind: str, benign: Path | None, lm_eval_tasks: str | None,
                      contrast_base: Path | None, dtype: str, lm_eval_include: Path | None) -> None:
    """What only the PyTorch backend measures or sets, refused before anything loads."""
    from bftcore.backends import check_dtype

    check_dtype(kind, dtype)
    if kind != "torch" and (contrast_base is not None or benign or lm_eval_tasks):
        raise BadInput(f"--contrast-base, --benign and --lm-eval need the torch backend, not {kind}")
    if lm_eval_tasks:
        from bftcore.attack import lm_eval_tasks as known_tasks

        known_tasks(_task_names(lm_eval_tasks), lm_eval_include)


def _measures(gen: Any, label: str, arch: str, model: str, benign: Path | None,
              lm_eval_tasks: str | None, device: str, thinking: bool, kl_to: Path | None = None,
              dtype: str = "auto", lm_eval_include: Path | None = None) -> list[dict[str, Any]]:
    """Capability beside the attacks: perplexity on benign responses, the KL divergence to a
    reference model on them, lm-eval-harness tasks."""
    from bftcore import attack as atk
    from bftcore.corpus import read_corpus
    from bftcore.models import check_same_tokenizer, load_model, load_tokenizer
    from bftcore.precision import torch_dtype

    out = []
    if benign:
        records = read_corpus([benign])[0]
        out.append(atk.perplexity(gen, records, model=label, arch=arch, thinking=thinking))
        if kl_to is not None:
            check_same_tokenizer(gen.tokenizer, load_tokenizer(kl_to))
            reference = load_model(kl_to, device=device, dtype=torch_dtype(dtype, device))
            out.append(atk.kl_to_reference(gen, reference, records, model=label, arch=arch,
                                           reference_name=kl_to.resolve().name, thinking=thinking))
    if lm_eval_tasks:
        out += atk.lm_eval(Path(model), _task_names(lm_eval_tasks), device,
                           include=lm_eval_include, label=label, arch=arch)
    return out


def _print_attack(result: Any, judge: str, records: int, label: str, out: Path | None, as_json: bool) -> None:
    if as_json:
        emit_json({"rows": [r.to_dict() for r in result.rows], "measures": result.measures,
                   "judge": judge, "records": records, "out": str(out) if out else None})
        return
    console.print(rows_table(result.rows, f"attacks on {label} ({records} records, judge {judge})"))
    for m in result.measures:
        if m["metric"] == "perplexity":
            console.print(f"  perplexity on benign responses: {m['value']:.3f} ({m['tokens']} tokens)")
        elif str(m["metric"]).startswith("kl-to-"):
            console.print(f"  KL(model || {m['metric'][6:]}) on benign responses: {m['value']:.4f} nats/token")
    if out:
        console.print(f"  results in {out}")
