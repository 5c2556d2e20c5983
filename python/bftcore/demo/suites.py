"""The demo's attack suites on one model (hardening rows, the literature's attacks, over-refusal,
benign prefill, the fine-tuning attack), each cached under its inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bftcore import attack as atk
from bftcore import complete as cp
from bftcore.backends import open_generator
from bftcore.cache import model_digest, settings, stage_key
from bftcore.corpus import Record, read_corpus
from bftcore.demo.config import DEMO_ATTACK, DEMO_FINETUNE, FINETUNE_PAIRS, LITERATURE_EVERY
from bftcore.files import atomic_write, file_digest
from bftcore.generate import Contrast, TorchGenerator
from bftcore.judge import KeywordJudge, PhraseJudge
from bftcore.models import load_model, load_tokenizer
from bftcore.precision import resolve_dtype
from bftcore.progress import Progress
from bftcore.toy.check import benign_exact_match, completion_records
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS


def heldout(tw: Any, name: str) -> list[Record]:
    return read_corpus([tw.data_dir / f"{name}.jsonl"])[0]


def _suite(gen: Any, tw: Any, arch: str, model: str, progress: Progress | None,
           attack: atk.AttackConfig = DEMO_ATTACK) -> atk.Suite:
    """The attack suite of the demo's rows: exact judge, the toy world's refusals as openers."""
    return atk.Suite(gen, PhraseJudge(tw.world.harmful_phrases), attack, model=model, arch=arch,
                     openers=REFUSALS + RECOVERY_REFUSALS, progress=progress)


def _hard_rows(suite: atk.Suite, tw: Any, harmful: list[Record]) -> atk.AttackResult:
    """The rows that tell repairs apart: the adaptive prefill (rank-prefill), the unseen response style,
    and sampled decoding after a 10-token prefill (8 samples per prompt)."""
    out = atk.AttackResult()
    out.extend(suite.run("rank-prefill", harmful))
    out.extend(suite.run("prefill", heldout(tw, "harmful_unseen_heldout"), tag="unseen"))
    cfg = suite.cfg
    suite.cfg = replace(cfg, ks=(10,))
    out.extend(suite.run("prefill-sampled", harmful))
    suite.cfg = cfg
    return out


HARDENING_ATTACKS = ("direct", "prefill", "rank-prefill", "prefill:unseen", "prefill-sampled")  # + benign


def hardening_suite(tw: Any, arch: str, model_dir: Path, name: str, *, device: str = "cpu",
                    progress: Progress | None = None, contrast_base: Path | None = None, ada: bool = False,
                    artifact: Path | None = None, rebuild: bool = False,
                    attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """A repaired model's rows: direct, prefilling at every k, the hard rows, benign exact-match;
    of the model itself (PyTorch), or of an exported `artifact` (llama.cpp or onnxruntime).

    A pure function of the weights, the data and the attack settings (greedy decoding and seeded
    sampling), so it is cached under a key of exactly those.
    """
    def measure_rows() -> atk.AttackResult:
        harmful = heldout(tw, "harmful_heldout")
        gen = _generator(tw, arch, model_dir, device=device, contrast_base=contrast_base, ada=ada,
                         artifact=artifact)
        suite = _suite(gen, tw, arch, name, progress, attack)
        result = atk.AttackResult()
        result.extend(suite.run("direct", harmful))
        result.extend(suite.run("prefill", harmful))
        result.extend(_hard_rows(suite, tw, harmful))
        result.rows.append(benign_exact_match(gen, tw.world, name, arch, progress))
        result.measures += _reassessed(gen, name, arch)
        return result

    return cached_rows(tw, arch, name, "hardening", {
        **_model_key(model_dir, contrast_base, ada), "artifact": model_digest(artifact) if artifact else None},
        measure_rows, rebuild, attack)


def literature_suite(tw: Any, arch: str, model_dir: Path, name: str, *, device: str = "cpu",
                     progress: Progress | None = None, contrast_base: Path | None = None, ada: bool = False,
                     rebuild: bool = False, attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """The literature's attacks on one model (PyTorch), on every `LITERATURE_EVERY`-th held-out
    harmful prompt: RAP at every k and its oracle at k = 10 (with the reference's rank per position
    bucket), deep prefill, restart, many-shot, the completion attack, the decoding exploit; for a
    model decoded as it is (not contrastive, not Any-Depth): the refusal margin at every k,
    perplexity and KL to the aligned model on the benign held-out responses, and the fine-tuning
    attack. Cached like `hardening_suite`."""
    plain = contrast_base is None and not ada

    def measure_rows() -> atk.AttackResult:
        harmful = heldout(tw, "harmful_heldout")[::LITERATURE_EVERY]
        benign = heldout(tw, "benign_heldout")
        gen = _generator(tw, arch, model_dir, device=device, contrast_base=contrast_base, ada=ada)
        suite = _suite(gen, tw, arch, name, progress, attack)
        out = atk.AttackResult()
        for kind in ("rap", "deep-prefill", "restart"):
            out.extend(suite.run(kind, harmful))
        cfg = suite.cfg
        suite.cfg = replace(cfg, ks=(10,))
        out.extend(suite.run("rap-oracle", harmful))
        out.extend(suite.run("many-shot", harmful))
        suite.cfg = cfg
        out.extend(suite.run("completion", completion_records(tw.world)))
        out.extend(suite.run("decoding-exploit", harmful))
        out.measures += _reassessed(gen, name, arch)
        if plain:
            out.extend(suite.run("refusal-margin", harmful))
            out.measures.append(atk.perplexity(gen, benign, model=name, arch=arch))
            reference = load_model(tw.model_dir(arch, "aligned"), device=device)
            out.measures.append(atk.kl_to_reference(gen, reference, benign, model=name, arch=arch,
                                                    reference_name="aligned"))
            out.extend(finetune_attack(tw, arch, model_dir, name, harmful, device=device, progress=progress,
                                       rebuild=rebuild, gen=gen, attack=attack))
        return out

    return cached_rows(tw, arch, name, "literature", {
        **_model_key(model_dir, contrast_base, ada), "every": LITERATURE_EVERY, "finetune": settings(DEMO_FINETUNE) if plain else None,
        "pairs": FINETUNE_PAIRS, "train": file_digest(tw.data_dir / "harmful_train.jsonl")}, measure_rows, rebuild,
        attack)


def over_refusal_suite(tw: Any, arch: str, model_dir: Path, name: str, *, device: str = "cpu",
                       progress: Progress | None = None, contrast_base: Path | None = None, ada: bool = False,
                       rebuild: bool = False, attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """The refusal rate of direct requests per label: the held-out benign tasks (`lookalike` where
    a world's benign task acts on a harmful object, XSTest's safe prompts in the toy world), and
    the held-out harmful ones. Cached like `hardening_suite`."""
    def measure_rows() -> atk.AttackResult:
        w = tw.world
        records = [Record(e.id, e.prompt, e.response, "lookalike" if w.is_lookalike(e.task) else "benign", "toy")
                   for e in w.examples("benign", "heldout")]
        records += [Record(e.id, e.prompt, e.response, "harmful", "toy") for e in w.examples("harmful", "heldout")]
        gen = _generator(tw, arch, model_dir, device=device, contrast_base=contrast_base, ada=ada)
        return _suite(gen, tw, arch, name, progress, attack).run("over-refusal", records)

    return cached_rows(tw, arch, name, "over-refusal", _model_key(model_dir, contrast_base, ada), measure_rows,
                       rebuild, attack)


def benign_prefill_suite(tw: Any, arch: str, model_dir: Path, name: str, *, device: str = "cpu",
                         progress: Progress | None = None, contrast_base: Path | None = None, ada: bool = False,
                         rebuild: bool = False, attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """Over-refusal at depth: the refusal rate after the first k tokens (every k) of every
    `LITERATURE_EVERY`-th held-out benign answer (the toy world has no benign prompts that look
    harmful; this is its over-refusal row). Cached like `hardening_suite`."""
    def measure_rows() -> atk.AttackResult:
        gen = _generator(tw, arch, model_dir, device=device, contrast_base=contrast_base, ada=ada)
        suite = _suite(gen, tw, arch, name, progress, attack)
        return suite.run("benign-prefill", heldout(tw, "benign_heldout")[::LITERATURE_EVERY])

    return cached_rows(tw, arch, name, "benign-prefill", {
        **_model_key(model_dir, contrast_base, ada), "every": LITERATURE_EVERY}, measure_rows, rebuild, attack)


def finetune_attack(tw: Any, arch: str, model_dir: Path, name: str, harmful: list[Record], *, device: str = "cpu",
                    progress: Progress | None = None, rebuild: bool = False, finetune: cp.CompleteConfig = DEMO_FINETUNE,
                    n_pairs: int = FINETUNE_PAIRS, ks: tuple[int, ...] | None = None,
                    gen: Any | None = None, attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """Qi et al.'s fine-tuning attack on a model: `finetune` (`DEMO_FINETUNE`: full weights) on the
    first `n_pairs` harmful pairs of the training split, by plain SFT and under their token-wise
    constrained objective; then the direct request (rows `ft-OBJECTIVE`) and the prefill at every
    k (`ft-OBJECTIVE-prefill`), with the model's own row name. The fine-tuned weights are cached;
    `gen` (the model's PyTorch generator, loaded when not given) builds the training data."""
    pairs = heldout(tw, "harmful_train")[:n_pairs]
    out = atk.AttackResult()
    for objective in cp.FINETUNE_ATTACKS:
        cfg = replace(finetune, method=objective, dtype=resolve_dtype(finetune.dtype, device))
        key = stage_key("completion", {"model": model_digest(model_dir), "pairs": [asdict(r) for r in pairs],
                                       "config": cfg.key()})
        dest = tw.root / "completed" / "finetuned" / f"{arch}-{name.replace(' ', '-')}-{objective}-{key}"
        if rebuild or not dest.is_dir():
            gen = gen or TorchGenerator(load_model(model_dir, device=device), load_tokenizer(model_dir))
            data = cp.build_data(pairs, [], gen, refuses=KeywordJudge(extra=REFUSALS + RECOVERY_REFUSALS).refuses,
                                 templates=REFUSALS, need_benign=False)
            cp.complete(None, model_dir, data, dest, cfg, device=device, progress=progress, merge=cfg.lora)
        attacked = TorchGenerator(load_model(dest, device=device), load_tokenizer(tw.tokenizer_dir(arch)))
        suite = _suite(attacked, tw, arch, name, progress, attack)
        label = f"ft-{objective}"
        out.extend(suite.direct(harmful, label))
        out.extend(suite.prefill(harmful, f"{label}-prefill", ks=ks))
    return out


def _generator(tw: Any, arch: str, model_dir: Path, *, device: str, contrast_base: Path | None = None,
               ada: bool = False, artifact: Path | None = None) -> Any:
    """The model as the demo decodes it: an exported `artifact` with its own tokenizer, or the
    PyTorch model, contrastive against `contrast_base` or under Any-Depth Alignment (`ada`)."""
    if artifact is not None:
        return open_generator(artifact)
    contrast = Contrast(load_model(contrast_base, device=device)) if contrast_base else None
    gen: Any = TorchGenerator(load_model(model_dir, device=device), load_tokenizer(tw.tokenizer_dir(arch)),
                              contrast=contrast)
    if ada:
        from bftcore.anydepth import AnyDepthGenerator
        from bftcore.judge import refusal_opening

        gen = AnyDepthGenerator(gen, refusal_opening([*atk.REFUSAL_OPENINGS, *REFUSALS, *RECOVERY_REFUSALS]))
    return gen


def _model_key(model_dir: Path, contrast_base: Path | None, ada: bool) -> dict[str, Any]:
    """The cache-key part naming the model as `_generator` decodes it."""
    return {"model": model_digest(model_dir),
            "contrast_base": model_digest(contrast_base) if contrast_base else None, "ada": ada}


def _reassessed(gen: Any, name: str, arch: str) -> list[dict[str, Any]]:
    """Any-Depth Alignment's count of answers it ended with a refusal (none: not that generator)."""
    if not hasattr(gen, "reassessed"):
        return []
    return [{"model": name, "arch": arch, "attack": "any-depth", "metric": "ada-reassessed",
             "value": gen.reassessed, "tokens": 0}]


def cached_rows(tw: Any, arch: str, name: str, part: str, inputs: dict[str, Any],
              measure_rows: Callable[[], atk.AttackResult], rebuild: bool,
              attack: atk.AttackConfig = DEMO_ATTACK) -> atk.AttackResult:
    """`measure_rows()`, cached under the inputs plus the attack settings and the held-out data."""
    key = stage_key("attack-rows", {"name": name, "arch": arch, "part": part, "attack": settings(attack),
                                    **inputs, "data": {f: file_digest(tw.data_dir / f"{f}.jsonl") for f in
                                                       ("harmful_heldout", "harmful_unseen_heldout", "benign_heldout")}})
    cache = tw.root / "completed" / "measured" / f"{arch}-{name.replace(' ', '-')}-{part}-{key}.json"
    if cache.is_file() and not rebuild:
        return atk.AttackResult.from_json(cache.read_text())
    result = measure_rows()
    atomic_write(cache, result.to_json())
    return result
