"""Building the toy world on disk: data files, tokenizer, base and aligned models per architecture.

Layout of a built world (the cache keeps one per seed and key: settings, library versions and
the toy world's version number):

    world.json            settings, cache key, harmful phrases, statistics
    data/*.jsonl          prompt/response/label corpora (train, held-out, unseen style)
    tokenizers/gpt2/      byte-level BPE, GPT-2 pre-tokenizer (the Llama models')
    tokenizers/qwen2/     byte-level BPE, Qwen2 pre-tokenizer (the Qwen2 models')
    <arch>/base/          ordinary model directories that AutoModelForCausalLM loads
    <arch>/aligned/
    timings.json          seconds per stage (kept apart so the rest is byte-identical per seed)

Every stage is written to a temporary directory and renamed when complete, so an interrupted
build resumes at the first missing stage and a half-written stage is never taken for a finished one.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from filelock import FileLock

from bftcore import buckets
from bftcore.cache import cache_root, settings, stage_key
from bftcore.chat import prompt_ids, response_ids
from bftcore.errors import BadInput
from bftcore.files import atomic_dir, atomic_write, atomic_write_json, sweep_temps
from bftcore.models import load_model, load_tokenizer, save_model
from bftcore.progress import Progress
from bftcore.toy.language import RECOVERY_REFUSALS, REFUSALS, World
from bftcore.toy.models import ARCHS, new_model, toy_config
from bftcore.train import TrainConfig, TrainingSequence, train

SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
PAD, BOS, EOS = SPECIAL_TOKENS[:3]
# One turn is <|role|>content<|end|>; generation starts after <|assistant|>.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}{{ message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant' and continue_final_message) %}"
    "{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Each architecture gets the tokenizer style its family ships. Both are byte-level BPEs trained on
# the same texts; they differ in the pre-tokenizer. transformers (5.x) loads every `qwen2` model
# directory with its own Qwen2Tokenizer, which rebuilds the pipeline with Qwen's regex and NFC:
# a toy Qwen2 model must carry a tokenizer that this rebuild reproduces exactly.
TOKENIZER_STYLE = {"llama": "gpt2", "qwen2": "qwen2"}
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

@dataclass(frozen=True)
class ModelShape:
    """Hidden and intermediate sizes are multiples of 256 so llama.cpp's K-quants apply for real."""

    hidden: int = 256
    layers: int = 2
    intermediate: int = 512
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 512


@dataclass(frozen=True)
class SafetyData:
    """What the aligned model's safety SFT holds besides refusals and benign answers: recovery
    examples (a harmful prompt + the first k tokens of its harmful answer -> a recovery refusal on
    the same line) for a small share of the harmful training prompts, k = 1 + Geometric(`stop`),
    so the safety signal sits on the first tokens and weakens with depth, as in real safety data.
    The result is graded: prefill ASR rising with k, retention rising over tens of positions
    (docs/toy-world.md). `recovery_fraction` = 0 gives refusals only (a step at the first token)."""

    recovery_fraction: float = 0.05
    stop: float = 0.3


@dataclass(frozen=True)
class ToySettings:
    seed: int = 0
    steps: int = 8
    heldout_frac: float = 0.15
    vocab_size: int = 1024
    shape: ModelShape = field(default_factory=ModelShape)
    base_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, lr=2e-3))
    aligned_train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=3, lr=3e-4))
    safety: SafetyData = field(default_factory=SafetyData)
    # the deep world (`DEEP`, issue 18's comparison): 0, 0, False keep the default world as it was
    task_steps: int = 0  # steps of each harmful answer that only its own task has
    heldout_verbs: int = 0  # harmful verbs held out whole: prompts, answers and their verb steps
    unseen_in_base: bool = False  # the base model learns the unseen style; safety training never sees it
    lookalike: bool = False  # benign tasks on the harmful objects too ("paint the village well")

    def with_seed(self, seed: int) -> ToySettings:
        return replace(self, seed=seed)

    def key(self) -> str:
        """The cache key: these settings, the library versions and the toy world's version
        (`cache.VERSIONS["toy-world"]`, bumped when the generator's behaviour changes)."""
        return stage_key("toy-world", settings(self), length=12)


# The deep world of the comparison (benches/compare.py): answers of 22 steps (~270 tokens, beyond
# every method's trained prefixes), two steps per harmful task that no other task has (a held-out
# answer holds steps never seen in training), one harmful verb held out whole, the unseen style
# known to the base model only, and benign tasks on the harmful objects (the over-refusal test).
DEEP = ToySettings(steps=20, task_steps=2, heldout_verbs=1, unseen_in_base=True, lookalike=True)


def default_root(settings: ToySettings) -> Path:
    return cache_root() / "toy" / f"seed{settings.seed}-{settings.key()}"




class ToyWorld:
    """A toy world on disk (built or not yet): paths to its parts and the language behind them."""

    def __init__(self, root: Path, settings: ToySettings) -> None:
        self.root = root
        self.settings = settings
        self.world = World(settings.seed, steps=settings.steps, heldout_frac=settings.heldout_frac,
                           task_steps=settings.task_steps, heldout_verbs=settings.heldout_verbs,
                           lookalike=settings.lookalike)

    def tokenizer_dir(self, arch: str = "llama") -> Path:
        return self.root / "tokenizers" / TOKENIZER_STYLE[arch]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def model_dir(self, arch: str, role: str) -> Path:
        return self.root / arch / role

    def info(self) -> dict[str, Any]:
        return json.loads((self.root / "world.json").read_text())

    def summary(self, archs: list[str]) -> dict[str, Any]:
        """What `toy build --json` and `demo --json` say about the world."""
        info = self.info()
        return {"root": str(self.root), "seed": info["seed"], "key": info["key"], "line": self.describe(),
                "tasks": info["tasks"],
                "stats": info["stats"], "data": str(self.data_dir),
                "models": {a: {r: str(self.model_dir(a, r)) for r in ("base", "aligned")} for a in archs}}

    def describe(self) -> str:
        """One line: the seed and key, the tasks, answer lengths, harmful-only tokens, the path."""
        info = self.info()
        st, t = info["stats"]["gpt2"], info["tasks"]
        return (f"toy world seed {info['seed']} ({info['key']}): "
                f"{t['harmful']['train'] + t['harmful']['heldout']} harmful and "
                f"{t['benign']['train'] + t['benign']['heldout']} benign tasks "
                f"({t['harmful']['heldout']} + {t['benign']['heldout']} held out), "
                f"answers {st['harmful']['length_min']}-{st['harmful']['length_max']} tokens, "
                f"{st['harmful_only_tokens']} harmful-only tokens; at {self.root}")

    def is_built(self, arch: str) -> bool:
        return all(p.is_dir() for p in (self.tokenizer_dir(arch), self.data_dir,
                                        self.model_dir(arch, "base"), self.model_dir(arch, "aligned")))

    # ---- stages ------------------------------------------------------------------------
    def build(self, archs: list[str], *, device: str = "cpu", progress: Progress | None = None,
              rebuild: bool = False) -> ToyWorld:
        """Build what is missing (everything, with `rebuild`); an interrupted build resumes at
        its first missing stage."""
        for arch in archs:
            if arch not in ARCHS:
                raise BadInput(f"unsupported architecture {arch!r} (supported: {', '.join(ARCHS)})")
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root) + ".lock"):
            sweep_temps(self.root)  # left by an interrupted build
            for style in sorted(set(TOKENIZER_STYLE.values())):
                if rebuild or not (self.root / "tokenizers" / style).is_dir():
                    self._timed(f"tokenizer/{style}", functools.partial(self._build_tokenizer, style))
            if rebuild or not (self.data_dir.is_dir() and (self.root / "world.json").is_file()):
                self._timed("data", self._build_data)
            for arch in archs:
                for role in ("base", "aligned"):
                    if rebuild or not self.model_dir(arch, role).is_dir():
                        self._timed(f"{arch}/{role}",
                                    functools.partial(self._build_model, arch, role, device, progress))
        return self

    def _timed(self, stage: str, fn: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        fn()
        path = self.root / "timings.json"
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[stage] = round(time.perf_counter() - t0, 2)
        atomic_write(path, json.dumps(timings, indent=2, sort_keys=True) + "\n")

    def _build_tokenizer(self, style: str) -> None:
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        if style == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.settings.vocab_size, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
        tok.train_from_iterator(self.world.all_texts(), trainer)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": None,
            "extra_special_tokens": SPECIAL_TOKENS[3:],
            "model_max_length": self.settings.shape.max_positions,
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }
        with atomic_dir(self.root / "tokenizers" / style) as tmp:
            tok.save(str(tmp / "tokenizer.json"))
            (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def _build_data(self) -> None:
        w = self.world
        info = {
            "seed": self.settings.seed,
            "key": self.settings.key(),
            "settings": settings(self.settings),  # the new options only where they are set
            "tasks": {f: {s: len(w.select(f, s)) for s in ("train", "heldout")}
                      for f in ("harmful", "benign")},
            "harmful_phrases": w.harmful_phrases,
            "refusals": REFUSALS,
            "recovery_refusals": RECOVERY_REFUSALS,
            "stats": {style: response_stats(w, load_tokenizer(self.root / "tokenizers" / style))
                      for style in sorted(set(TOKENIZER_STYLE.values()))},
        }
        atomic_write_json(self.root / "world.json", info)
        splits: tuple[Literal["train", "heldout"], ...] = ("train", "heldout")
        with atomic_dir(self.data_dir) as tmp:
            for family in ("harmful", "benign"):
                for split in splits:
                    rows = [{"id": e.id, "prompt": e.prompt, "response": e.response,
                             "label": family, "task": e.task.text, "split": split}
                            for e in w.examples(family, split)]
                    _write_jsonl(tmp / f"{family}_{split}.jsonl", rows)
            for split in splits:
                rows = [{"id": e.id, "prompt": e.prompt,
                         "response": w.unseen_answer(e.task, e.phrasing),
                         "label": "harmful", "task": e.task.text, "split": split,
                         "style": "unseen"}
                        for e in w.examples("harmful", split)]
                _write_jsonl(tmp / f"harmful_unseen_{split}.jsonl", rows)

    def _build_model(self, arch: str, role: str, device: str, progress: Progress | None) -> None:
        s, w = self.settings, self.world
        tokenizer = load_tokenizer(self.tokenizer_dir(arch))
        if role == "base":  # helpful answers to every training prompt, harmful and benign
            pairs = [(e.prompt, e.response) for f in ("harmful", "benign")
                     for e in w.examples(f, "train")]
            if s.unseen_in_base:  # the capability in a second style, which no safety data covers
                pairs += [(e.prompt, w.unseen_answer(e.task, e.phrasing)) for e in w.examples("harmful", "train")]
            shape = s.shape
            config = toy_config(
                arch, vocab_size=len(tokenizer), hidden=shape.hidden, layers=shape.layers,
                intermediate=shape.intermediate, heads=shape.heads, kv_heads=shape.kv_heads,
                max_positions=shape.max_positions, bos_id=tokenizer.bos_token_id,
                eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
            )
            model = new_model(config, seed=s.seed).to(device)
            cfg = replace(s.base_train, seed=s.seed)
        else:  # safety SFT: refusals and answers, and a few recovery examples at shallow depths
            pairs = [(e.prompt, w.refusal(e.task, e.phrasing)) for e in w.examples("harmful", "train")]
            pairs += [(e.prompt, e.response) for e in w.examples("benign", "train")]
            model = load_model(self.model_dir(arch, "base"), device=device)
            cfg = replace(s.aligned_train, seed=s.seed + 1)
        examples = [TrainingSequence.prompt_target(prompt_ids(tokenizer, p), response_ids(tokenizer, r))
                    for p, r in pairs]
        recovery = self.recovery_examples(tokenizer) if role == "aligned" else []
        label = f"training {arch} {role}"
        losses = train(model, examples + [x for x, _ in recovery], cfg, pad_id=tokenizer.pad_token_id,
                       on_step=(lambda i, n, _: progress(label, i, n)) if progress else None)
        card = {"bftcore_toy": {"arch": arch, "role": role, "seed": s.seed, "key": s.key(),
                                "examples": len(examples) + len(recovery), "train": cfg.to_dict(),
                                "recovery_depths": sorted(k for _, k in recovery),
                                "final_loss": round(float(np.mean(losses[-10:])), 6)}}
        save_model(model.to("cpu"), self.tokenizer_dir(arch), self.model_dir(arch, role),
                   extra={"bftcore_toy.json": json.dumps(card, indent=2) + "\n"})

    def recovery_examples(self, tokenizer: Any) -> list[tuple[TrainingSequence, int]]:
        """The aligned model's recovery examples with their depth k (`SafetyData`). The same
        prompts and k for every architecture: k is drawn before it is capped at the answer."""
        s, w = self.settings, self.world
        rng = random.Random(f"bftcore-toy-recovery-{s.seed}")
        out = []
        for e in w.examples("harmful", "train"):
            chosen, k = rng.random() < s.safety.recovery_fraction, 1
            while rng.random() >= s.safety.stop:
                k += 1
            if not chosen:
                continue
            answer = response_ids(tokenizer, e.response, eos=False)
            k = min(k, len(answer) - 1)
            out.append((TrainingSequence.prompt_target(
                prompt_ids(tokenizer, e.prompt) + answer[:k],
                response_ids(tokenizer, w.recovery(e.task, e.phrasing, inline=True))), k))
        return out


def response_stats(w: World, tokenizer: Any) -> dict[str, Any]:
    """Token statistics of the canonical answers, counted per position bucket by the Rust core."""
    vocab = len(tokenizer)
    counts: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"buckets": buckets.bucket_labels()}
    texts = {
        "harmful": [w.answer(t) for t in w.tasks if t.family == "harmful"],
        "benign": [w.answer(t) for t in w.tasks if t.family == "benign"],
        "refusal": REFUSALS + RECOVERY_REFUSALS,
    }
    for name, items in texts.items():
        ids = [response_ids(tokenizer, r, eos=False) for r in items]
        lengths = [len(x) for x in ids]
        flat = np.fromiter((t for x in ids for t in x), dtype=np.uint32)
        table = buckets.token_bucket_counts(flat, buckets.response_positions(lengths), vocab)
        counts[name] = table.sum(axis=0)
        out[name] = {"responses": len(items), "tokens": int(flat.size),
                     "length_min": min(lengths), "length_max": max(lengths),
                     "length_mean": round(float(np.mean(lengths)), 2),
                     "tokens_per_bucket": table.sum(axis=1).tolist(),
                     "distinct_tokens": int((counts[name] > 0).sum())}
    only = (counts["harmful"] > 0) & (counts["benign"] == 0) & (counts["refusal"] == 0)
    out["harmful_only_tokens"] = int(only.sum())
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def toy_world(seed: int = 0, out: str | Path | None = None,
              settings: ToySettings | None = None) -> ToyWorld:
    """The toy world of a seed: in the cache by default, or in `out`."""
    s = (settings or ToySettings()).with_seed(seed)
    return ToyWorld(Path(out) if out is not None else default_root(s), s)
