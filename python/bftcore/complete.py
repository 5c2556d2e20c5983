"""Targeted completion training (METHOD.md §2) and the baselines it is measured against.

    data     harmful prompts x with harmful responses h and a refusal s(x) (the aligned model's own
             refusal when the judge calls it one, else a template), plus benign pairs (x', y')
    methods  bft             ours: direct x -> s(x); recovery x, h_<=k -> s(x) with k drawn from the
                             buckets in proportion to the index's mean retention R̄ and weighted
                             w(k) = 1 + α·R̄(bucket(k)); the adaptive base-favored penalty inside the
                             prefix; hybrid-teacher distillation
             sft             refusal SFT: x -> s(x)
             qi-augment      Qi et al. recovery augmentation: k = 0 half the time, else U[1, 100];
                             α·CE(harmful) + (1 − α)·CE(benign), α = 0.2
             qi-constrained  Qi et al. token-wise constrained objective on the same examples
             derta           DeRTa: x, h_<k -> s(x) with k uniform over the response, and the
                             refusal's first token as the target at every harmful position
    loop     AdamW, warmup, cosine decay, accumulation, clipping, bf16 autocast on a GPU; the batch
             of a step is a pure function of (seed, step), so a checkpoint (weights, optimizer,
             step) resumes exactly; DDP under torchrun, each rank taking a slice of the global batch
             with losses normalised by the global counts (the same curve as one process).

Every method sees the same records in the same order, the same number of steps and the same batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs: `bftcore --help` stays fast
    import torch

from bftcore.buckets import DEFAULT_BUCKET_EDGES, bucket_of
from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import Record
from bftcore.errors import BadInput
from bftcore.progress import Progress

METHODS = ("bft", "sft", "qi-augment", "qi-constrained", "derta")
TEACHERS = ("hybrid", "suppressed", "off")
PENALTIES = ("linear", "l2", "off")
DEFAULT_REFUSALS = (
    "I cannot help with that request.",
    "I'm sorry, but I can't assist with that.",
)
CARD = "bftcore_complete.json"


@dataclass(frozen=True)
class CompleteConfig:
    method: str = "bft"
    steps: int = 200
    batch_size: int = 32  # global: records per optimizer step, over all ranks and micro-batches
    grad_accum: int = 1
    harmful_frac: float = 0.5  # share of each batch drawn from the harmful records
    lr: float = 3e-4
    warmup_frac: float = 0.05
    min_lr_frac: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    # bft
    direct_frac: float = 0.2  # harmful records trained as direct x -> s(x) (k = 0)
    alpha: float = 1.0  # position weight w(k) = 1 + alpha * R̄(bucket(k))
    lam: float = 1.0  # base-favored penalty weight
    penalty: str = "linear"
    beta: float = 0.5  # distillation weight
    teacher: str = "hybrid"
    gamma: float = 2.0  # suppressed teacher
    top_k: int = 20  # base top-k of the penalty
    max_prefix: int | None = None  # cap on k (default: the response length)
    # baselines
    qi_alpha: float = 0.2
    qi_max_prefix: int = 100
    # model
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    checkpoint_every: int = 50
    # how, not what: neither changes the weights a run converges to, so neither is in the key
    fsdp: bool = False  # under torchrun: FSDP2 (fully_shard per decoder layer) instead of DDP
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% slower

    def check(self) -> None:
        if self.method not in METHODS:
            raise BadInput(f"unknown method {self.method!r} (choose from {', '.join(METHODS)})")
        if self.teacher not in TEACHERS:
            raise BadInput(f"unknown teacher {self.teacher!r} (choose from {', '.join(TEACHERS)})")
        if self.penalty not in PENALTIES:
            raise BadInput(f"unknown penalty {self.penalty!r} (choose from {', '.join(PENALTIES)})")
        if self.steps < 1 or self.batch_size < 2 or self.grad_accum < 1:
            raise BadInput("--steps must be >= 1, --batch-size >= 2, --grad-accum >= 1")
        if not 0.0 < self.harmful_frac < 1.0:
            raise BadInput("--harmful-frac must lie strictly between 0 and 1")

    def key(self) -> str:
        """Hash of everything that decides the final weights (not checkpoint_every, fsdp or
        grad_checkpointing)."""
        d = asdict(self)
        for how in ("checkpoint_every", "fsdp", "grad_checkpointing"):
            d.pop(how)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---- data ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HarmfulItem:
    id: str
    prompt: list[int]
    response: list[int]  # the harmful response, no eos
    refusal: list[int]  # s(x), ending with eos
    refusal_source: str  # "self" (the aligned model's own) or "template"
    doc: int = -1  # the record's index in the harmful corpus (its doc_id in scored shards)


@dataclass(frozen=True)
class BenignItem:
    id: str
    prompt: list[int]
    response: list[int]  # ending with eos


@dataclass
class CompletionData:
    harmful: list[HarmfulItem]
    benign: list[BenignItem]

    def digest(self) -> str:
        h = hashlib.sha256()
        for it in self.harmful:
            h.update(json.dumps([it.id, it.prompt, it.response, it.refusal]).encode())
        for b in self.benign:
            h.update(json.dumps([b.id, b.prompt, b.response]).encode())
        return h.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {"harmful": len(self.harmful), "benign": len(self.benign),
                "self_refusals": sum(it.refusal_source == "self" for it in self.harmful),
                "template_refusals": sum(it.refusal_source == "template" for it in self.harmful),
                "hash": self.digest()}

    def save(self, path: Path) -> None:
        obj = {"harmful": [asdict(h) for h in self.harmful], "benign": [asdict(b) for b in self.benign]}
        _write_atomic(path, json.dumps(obj))

    @classmethod
    def load(cls, path: Path) -> CompletionData:
        obj = json.loads(path.read_text())
        return cls([HarmfulItem(**h) for h in obj["harmful"]], [BenignItem(**b) for b in obj["benign"]])


def build_data(harmful: Sequence[Record], benign: Sequence[Record], aligned_gen: Any, *,
               refuses: Any, templates: Sequence[str] = DEFAULT_REFUSALS, max_length: int = 512,
               max_new_tokens: int = 64, progress: Progress | None = None) -> CompletionData:
    """Token-level training data. `refuses(text) -> bool` is the judge that decides whether the
    aligned model's own answer to a clean harmful prompt is a refusal (then it is s(x)); otherwise
    a template refusal (chosen by a hash of the record id) stands in."""
    from bftcore.generate import Decoding
    from bftcore.progress import counter

    tok = aligned_gen.tokenizer
    if not templates:
        raise BadInput("at least one template refusal is needed")
    usable = [r for r in harmful if r.response]
    if not usable:
        raise BadInput("no harmful records with a response: completion needs harmful responses "
                       "(the harmful prefixes it trains recovery from)")
    if not [r for r in benign if r.response]:
        raise BadInput("no benign records with a response: completion needs benign anchor pairs")
    prompts = [prompt_ids(tok, r.messages()) for r in usable]
    outs = aligned_gen.generate(prompts, Decoding(max_new_tokens),
                                on_batch=counter(progress, "self-distilled refusals", len(prompts)))
    items: list[HarmfulItem] = []
    doc_ids = {id(r): i for i, r in enumerate(harmful)}
    for r, p, o in zip(usable, prompts, outs):
        text = str(tok.decode(o, skip_special_tokens=True)).strip()
        if text and refuses(text):
            refusal, source = list(o) + [tok.eos_token_id], "self"
        else:
            pick = int(hashlib.sha256(r.id.encode()).hexdigest(), 16) % len(templates)
            refusal, source = response_ids(tok, templates[pick]), "template"
        resp = response_ids(tok, r.response or "", eos=False)
        if len(p) + 1 + len(refusal) > max_length:
            continue
        resp = resp[: max(1, max_length - len(p) - len(refusal))]
        items.append(HarmfulItem(r.id, p, resp, refusal, source, doc_ids[id(r)]))
    anchors = []
    for r in benign:
        if r.response:
            p, y = prompt_ids(tok, r.messages()), response_ids(tok, r.response)
            if len(p) + len(y) <= max_length:
                anchors.append(BenignItem(r.id, p, y))
    if not items or not anchors:
        raise BadInput(f"no training pairs fit --max-length {max_length}")
    return CompletionData(items, anchors)


# ---- the index's retention profile ---------------------------------------------------------
@dataclass(frozen=True)
class RetentionProfile:
    """R̄ per position bucket on harmful responses, from an index (`Index.curves()`)."""

    edges: tuple[int, ...]
    mean_retain: tuple[float, ...]  # 0 where the index has no tokens
    counts: tuple[int, ...]

    @classmethod
    def from_index(cls, index: Any, label: str = "harmful") -> RetentionProfile:
        if label not in index.labels:
            raise BadInput(f"{index.path}: no {label!r} label; the index must be built on harmful "
                           "responses to guide completion")
        rows = [r for r in index.curves().iter_rows(named=True) if r["label"] == label]
        return cls(tuple(index.edges), tuple(float(r["mean_retain"] or 0.0) for r in rows),
                   tuple(int(r["count"]) for r in rows))

    @classmethod
    def uniform(cls, edges: Sequence[int] = DEFAULT_BUCKET_EDGES) -> RetentionProfile:
        return cls(tuple(edges), tuple(1.0 for _ in edges), tuple(1 for _ in edges))

    def rbar(self, pos: int) -> float:
        return self.mean_retain[bucket_of(max(1, pos), list(self.edges))] if pos > 0 else 0.0

    def draw_k(self, rng: random.Random, length: int, cap: int | None = None) -> int:
        """A prefix length in [1, length]: a bucket with probability ∝ R̄ (buckets with data
        that this response reaches), then uniform inside it."""
        top = min(length, cap) if cap else length
        choices, weights = [], []
        for b, lo in enumerate(self.edges):
            hi = self.edges[b + 1] - 1 if b + 1 < len(self.edges) else top
            if lo <= top and self.counts[b] > 0 and self.mean_retain[b] > 0:
                choices.append((lo, min(hi, top)))
                weights.append(self.mean_retain[b])
        if not choices:
            return rng.randint(1, max(1, top))
        lo, hi = rng.choices(choices, weights)[0]
        return rng.randint(lo, hi)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "mean_retain": [round(r, 6) for r in self.mean_retain],
                "counts": list(self.counts)}


# ---- examples ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One training sequence: prompt + prefix (harmful, no loss) + target.

    kind: direct | recovery | benign. `rto` marks DeRTa's refusal-token targets at every prefix
    position. `clean` is the teacher's sequence for the hybrid teacher (prompt + target).
    """

    kind: str
    prompt: list[int]
    prefix: list[int]
    target: list[int]
    weight: float = 1.0
    rto: int | None = None  # the refusal token predicted at each prefix position (DeRTa)
    doc: int = -1  # the harmful record's doc id (base statistics from scored shards)

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.prefix + self.target

    @property
    def harmful(self) -> bool:
        return self.kind != "benign"


def step_records(data: CompletionData, cfg: CompleteConfig, step: int) -> tuple[list[int], list[int]]:
    """The harmful and benign record indices of one optimizer step: pure in (seed, step), drawn
    epoch by epoch from seeded permutations, the same for every method."""
    n_h = max(1, round(cfg.batch_size * cfg.harmful_frac))
    n_b = cfg.batch_size - n_h

    def draw(n: int, size: int, stream: int) -> list[int]:
        out = []
        for j in range(step * size, step * size + size):  # the j-th draw of this stream
            epoch, at = divmod(j, n)
            perm = list(range(n))
            random.Random(f"{cfg.seed}:{stream}:{epoch}").shuffle(perm)
            out.append(perm[at])
        return out

    return draw(len(data.harmful), n_h, 0) if data.harmful else [], \
        draw(len(data.benign), n_b, 1) if data.benign else []


def make_examples(data: CompletionData, cfg: CompleteConfig, profile: RetentionProfile,
                  step: int) -> list[Example]:
    """The global batch of one step for the configured method."""
    hs, bs = step_records(data, cfg, step)
    rng = random.Random(f"{cfg.seed}:examples:{step}")
    out: list[Example] = []
    for i in hs:
        it = data.harmful[i]
        n = len(it.response)
        if cfg.method == "sft":
            out.append(Example("direct", it.prompt, [], it.refusal))
        elif cfg.method in ("qi-augment", "qi-constrained"):
            k = 0 if rng.random() < 0.5 else min(n, rng.randint(1, cfg.qi_max_prefix))
            out.append(Example("recovery" if k else "direct", it.prompt, it.response[:k], it.refusal))
        elif cfg.method == "derta":
            k = rng.randint(0, n)
            out.append(Example("recovery" if k else "direct", it.prompt, it.response[:k], it.refusal,
                               rto=it.refusal[0]))
        else:  # bft
            if rng.random() < cfg.direct_frac:
                out.append(Example("direct", it.prompt, [], it.refusal))
            else:
                k = profile.draw_k(rng, n, cfg.max_prefix)
                out.append(Example("recovery", it.prompt, it.response[:k], it.refusal,
                                   weight=1.0 + cfg.alpha * profile.rbar(k), doc=it.doc))
    for i in bs:
        b = data.benign[i]
        out.append(Example("benign", b.prompt, [], b.response))
    return out


# ---- batches -------------------------------------------------------------------------------
@dataclass
class Batch:
    ids: torch.Tensor  # [B, L] student input, right-padded
    mask: torch.Tensor
    tgt_row: torch.Tensor  # target positions (row, col) and what they predict
    tgt_col: torch.Tensor
    tgt_tok: torch.Tensor
    tgt_weight: torch.Tensor
    tgt_pos: torch.Tensor  # 1-based response position of each target token (prefix counted)
    tgt_harmful: torch.Tensor  # bool: the example is harmful (direct or recovery)
    tgt_recovery: torch.Tensor  # bool: target after a harmful prefix
    pre_row: torch.Tensor  # prefix positions: contexts (x, h_<t), t = 1..k
    pre_col: torch.Tensor
    pre_pos: torch.Tensor
    pre_tok: torch.Tensor  # h_t (what the prefix position predicts) or the RTO refusal token
    pre_doc: torch.Tensor  # the example's doc id (for base statistics from scored shards)
    clean_ids: torch.Tensor  # [B, L'] teacher sequences prompt + target
    clean_mask: torch.Tensor
    clean_col: torch.Tensor  # column of each target position in the clean sequence


def collate(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    import torch

    width = max(len(e.ids) for e in examples)
    cwidth = max(len(e.prompt) + len(e.target) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    cids = torch.full((len(examples), cwidth), pad_id, dtype=torch.long)
    cmask = torch.zeros_like(cids)
    t: dict[str, list[Any]] = {k: [] for k in ("row", "col", "tok", "w", "pos", "harm", "rec", "ccol")}
    p: dict[str, list[int]] = {k: [] for k in ("row", "col", "pos", "tok", "doc")}
    for r, e in enumerate(examples):
        seq, P, K = e.ids, len(e.prompt), len(e.prefix)
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
        clean = e.prompt + e.target
        cids[r, :len(clean)] = torch.tensor(clean)
        cmask[r, :len(clean)] = 1
        for j, tok in enumerate(e.target):
            t["row"].append(r)
            t["col"].append(P + K + j - 1)
            t["tok"].append(tok)
            t["w"].append(e.weight)
            t["pos"].append(K + j + 1)
            t["harm"].append(e.harmful)
            t["rec"].append(e.kind == "recovery")
            t["ccol"].append(P + j - 1)
        for j in range(K):
            p["row"].append(r)
            p["col"].append(P + j - 1)
            p["pos"].append(j + 1)
            p["tok"].append(e.rto if e.rto is not None else e.prefix[j])
            p["doc"].append(e.doc)

    def lt(x: list[Any], dtype: torch.dtype = torch.long) -> torch.Tensor:
        return torch.tensor(x, dtype=dtype, device=device)

    return Batch(ids.to(device), mask.to(device), lt(t["row"]), lt(t["col"]), lt(t["tok"]),
                 lt(t["w"], torch.float32), lt(t["pos"]), lt(t["harm"], torch.bool),
                 lt(t["rec"], torch.bool), lt(p["row"]), lt(p["col"]), lt(p["pos"]), lt(p["tok"]),
                 lt(p["doc"]), cids.to(device), cmask.to(device), lt(t["ccol"]))


def term_counts(examples: Sequence[Example], method: str) -> dict[str, int]:
    """How many positions each loss term of a method averages over (known before any forward:
    the normaliser shared by every micro-batch and rank of a step)."""
    tgt = sum(len(e.target) for e in examples)
    harm = sum(len(e.target) for e in examples if e.harmful)
    pre = sum(len(e.prefix) for e in examples)
    if method == "qi-augment":
        return {"ce_harmful": harm, "ce_benign": tgt - harm}
    if method == "derta":
        return {"ce": tgt + pre}
    if method == "qi-constrained":
        return {"constrained": tgt}
    if method == "bft":
        return {"ce": tgt, "penalty": pre, "kd": tgt}
    return {"ce": tgt}


# ---- base statistics from scored shards ----------------------------------------------------
class ShardBaseStats:
    """The base model's top-k at every harmful response position, read from the Parquet shards
    that `bftcore score` / `bftcore index` wrote for the same harmful corpus: the penalty then needs
    no base model in memory or in the step."""

    def __init__(self, shard_dir: Path, harmful: Sequence[Record], data: CompletionData,
                 tokenizer_hash: str, top_k: int) -> None:
        import numpy as np
        import pyarrow.parquet as pq

        from bftcore.score import corpus_hash
        from bftcore.shards import shard_paths

        manifest_path = Path(shard_dir) / "manifest.json"
        if not manifest_path.is_file():
            raise BadInput(f"{shard_dir}: not a directory of scored shards (no manifest.json)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("corpus_hash") != corpus_hash(harmful):
            raise BadInput(f"{shard_dir}: scored from another corpus; score exactly the --data files")
        if manifest.get("tokenizer_hash") != tokenizer_hash:
            raise BadInput(f"{shard_dir}: scored with another tokenizer")
        if int(manifest.get("k", 0)) < top_k:
            raise BadInput(f"{shard_dir}: holds the base top-{manifest.get('k')}, the penalty needs {top_k}")
        want = {it.doc: it.response for it in data.harmful}
        self.stats: dict[int, tuple[Any, Any]] = {}
        for path in shard_paths(Path(shard_dir)):
            t = pq.read_table(path, columns=["doc_id", "pos", "token", "topk_token", "topk_lp_base"])
            docs = t.column("doc_id").to_numpy()
            order = np.lexsort((t.column("pos").to_numpy(), docs))
            tokens = t.column("token").to_numpy()[order]
            ids = np.stack(t.column("topk_token").to_numpy(zero_copy_only=False))[order, :top_k]
            lps = np.stack(t.column("topk_lp_base").to_numpy(zero_copy_only=False))[order, :top_k]
            docs = docs[order]
            for d in np.unique(docs):
                if int(d) in want:
                    sel = docs == d
                    resp = want[int(d)]
                    if tokens[sel][: len(resp)].tolist() != resp[: int(sel.sum())]:
                        raise BadInput(f"{shard_dir}: doc {d} was scored with other response tokens")
                    self.stats[int(d)] = (ids[sel], lps[sel])
        missing = [d for d in want if d not in self.stats]
        if missing:
            raise BadInput(f"{shard_dir}: {len(missing)} harmful records have no scored rows "
                           f"(first: doc {missing[0]})")

    def lookup(self, docs: torch.Tensor, positions: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(top-k ids, top-k base log-probs) at the 1-based positions of each doc's response."""
        import numpy as np
        import torch

        ids, lps = [], []
        for d, pos in zip(docs.tolist(), positions.tolist()):
            i, lp = self.stats[d]
            if pos > len(i):
                raise BadInput(f"doc {d} has {len(i)} scored positions, the prefix needs {pos}")
            ids.append(i[pos - 1, :top_k])
            lps.append(lp[pos - 1, :top_k])
        return (torch.tensor(np.array(ids, dtype=np.int64), device=docs.device),
                torch.tensor(np.array(lps, dtype=np.float32), device=docs.device))


# ---- the trainer ---------------------------------------------------------------------------
class Trainer:
    """Holds the trainee, the frozen references and the optimizer; `step_loss` is the method."""

    def __init__(self, model: Any, reference: Any, base: Any, cfg: CompleteConfig,
                 profile: RetentionProfile, pad_id: int, *, ddp: Any = None,
                 base_stats: ShardBaseStats | None = None) -> None:
        import torch

        self.model, self.reference, self.base = model, reference, base
        self.cfg, self.profile, self.pad_id = cfg, profile, pad_id
        self.ddp = ddp  # the DDP-wrapped trainee under torchrun (its forward syncs gradients)
        self.base_stats = base_stats  # the base top-k from scored shards, instead of `base`
        self.device = next(model.parameters()).device
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        self.rbar = torch.tensor([0.0, *profile.mean_retain], device=self.device)  # index 0: k = 0
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}],
                                     lr=cfg.lr, betas=(0.9, 0.95))

    def _rbar(self, pos: torch.Tensor) -> torch.Tensor:
        import torch

        edges = torch.tensor(self.profile.edges, device=self.device)
        b = torch.searchsorted(edges, pos, right=True)  # 1 + bucket index for pos >= 1
        return self.rbar[b]

    def _reference_logp(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor,
                        cols: torch.Tensor) -> torch.Tensor:
        """The frozen aligned model's log-probs at (rows, cols): a frozen copy, or the LoRA
        trainee with its adapter disabled (no second copy in memory)."""
        import torch

        with torch.no_grad(), self.autocast:
            if self.reference is not None:
                logits = self.reference(input_ids=ids, attention_mask=mask).logits
            else:
                with self.model.disable_adapter():
                    logits = self.model(input_ids=ids, attention_mask=mask).logits
            return torch.log_softmax(logits[rows, cols].float(), -1)

    def _base_logp(self, b: Batch, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The frozen base model's log-probs at (rows, cols), online: only the rows that need it,
        cut after their last needed column (causal attention: the rest cannot change them)."""
        import torch

        used, local = torch.unique(rows, return_inverse=True)
        width = int(cols.max()) + 1
        with torch.no_grad(), self.autocast:
            logits = self.base(input_ids=b.ids[used, :width], attention_mask=b.mask[used, :width]).logits
            return torch.log_softmax(logits[local, cols].float(), -1)

    def micro_loss(self, b: Batch, norm: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """The method's loss on one micro-batch, each term as Σ over its positions / its global
        count (so micro-batches and ranks add up to the global mean)."""
        import torch

        from bftcore import losses

        cfg = self.cfg
        fwd = self.ddp if self.ddp is not None else self.model
        with self.autocast:
            logits = fwd(input_ids=b.ids, attention_mask=b.mask).logits
        tl = logits[b.tgt_row, b.tgt_col]
        terms: dict[str, torch.Tensor] = {}

        def total(mean: torch.Tensor, n: int, name: str) -> torch.Tensor:
            return mean * n / norm[name] if norm[name] else mean * 0.0

        n_t = int(b.tgt_tok.numel())
        if cfg.method == "sft":
            terms["ce"] = total(losses.position_weighted_ce(tl, b.tgt_tok, torch.ones_like(b.tgt_weight)),
                                n_t, "ce")
        elif cfg.method == "qi-augment":
            h = b.tgt_harmful
            terms["ce_harmful"] = cfg.qi_alpha * total(
                losses.position_weighted_ce(tl[h], b.tgt_tok[h], b.tgt_weight[h] * 0 + 1), int(h.sum()),
                "ce_harmful")
            terms["ce_benign"] = (1 - cfg.qi_alpha) * total(
                losses.position_weighted_ce(tl[~h], b.tgt_tok[~h], b.tgt_weight[~h] * 0 + 1),
                int((~h).sum()), "ce_benign")
        elif cfg.method == "derta":
            pl_ = logits[b.pre_row, b.pre_col]
            all_l = torch.cat([tl, pl_])
            all_t = torch.cat([b.tgt_tok, b.pre_tok])
            terms["ce"] = total(losses.position_weighted_ce(all_l, all_t, torch.ones_like(all_t, dtype=torch.float32)),
                                int(all_t.numel()), "ce")
        elif cfg.method == "qi-constrained":
            ref = self._reference_logp(b.ids, b.mask, b.tgt_row, b.tgt_col)
            ref_lp = ref.gather(-1, b.tgt_tok[:, None]).squeeze(-1)
            terms["constrained"] = total(
                losses.constrained_sft(tl, b.tgt_tok, ref_lp, losses.qi_betas(b.tgt_pos)), n_t, "constrained")
        else:  # bft
            terms["ce"] = total(losses.position_weighted_ce(tl, b.tgt_tok, b.tgt_weight), n_t, "ce")
            n_p = int(b.pre_row.numel())
            if cfg.penalty != "off" and cfg.lam > 0 and n_p:
                if self.base_stats is not None:
                    top_ids, top_lp = self.base_stats.lookup(b.pre_doc, b.pre_pos, cfg.top_k)
                else:
                    top_lp, top_ids = torch.topk(self._base_logp(b, b.pre_row, b.pre_col), cfg.top_k, dim=-1)
                scale = cfg.lam * self._rbar(b.pre_pos)
                terms["penalty"] = total(losses.base_favored_penalty(
                    logits[b.pre_row, b.pre_col], top_ids, top_lp, scale, squared=cfg.penalty == "l2"),
                    n_p, "penalty")
            if cfg.teacher != "off" and cfg.beta > 0 and n_t:
                if cfg.teacher == "hybrid":
                    # the aligned model on the clean context: for benign and direct targets that
                    # is the same context; for recovery targets it is the prompt without the prefix
                    teacher = self._reference_logp(b.clean_ids, b.clean_mask, b.tgt_row, b.clean_col)
                else:
                    lpa = self._reference_logp(b.ids, b.mask, b.tgt_row, b.tgt_col)
                    teacher = losses.suppressed_teacher(lpa, self._base_logp(b, b.tgt_row, b.tgt_col),
                                                        cfg.gamma)
                terms["kd"] = cfg.beta * total(losses.distill_kl(teacher, tl), n_t, "kd")
        loss = sum(terms.values(), torch.zeros((), device=self.device))
        return loss, {k: float(v.detach()) for k, v in terms.items()}


# ---- checkpoints ---------------------------------------------------------------------------
def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _gathered_state(trainer: Trainer) -> tuple[dict[str, Any], dict[str, Any]]:
    """FSDP2: the trainable weights and the optimizer state as full tensors on rank 0's CPU
    (a collective: every rank calls it; the other ranks get empty dicts)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, opt_state = get_state_dict(trainer.model, trainer.opt,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    return {n: v for n, v in model_state.items() if n in trainable}, dict(opt_state)


def save_checkpoint(path: Path, trainer: Trainer, step: int, log: list[dict[str, Any]], key: str,
                    rank: int = 0) -> None:
    """Rank 0 writes (temp file and rename); under FSDP2 every rank takes part in gathering."""
    import torch

    if trainer.cfg.fsdp:
        model_state, opt_state = _gathered_state(trainer)
    elif rank == 0:
        model_state, opt_state = _trainable_state(trainer.model), trainer.opt.state_dict()
    if rank != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save({"step": step, "key": key, "model": model_state, "optimizer": opt_state, "log": log}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, trainer: Trainer, key: str) -> tuple[int, list[dict[str, Any]]]:
    """(step, log) of a matching checkpoint, loaded into the trainer; (0, []) when there is none.
    A checkpoint of other settings or data is refused rather than silently mixed."""
    import torch

    if not path.is_file():
        return 0, []
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged checkpoint is bad input, not a crash
        raise BadInput(f"{path}: unreadable checkpoint ({e.__class__.__name__}); delete it to start over") from e
    if ck.get("key") != key:
        raise BadInput(f"{path}: a checkpoint of other settings or data; use a new --out or delete it")
    if trainer.cfg.fsdp:  # full tensors in the file; each rank keeps its own shard of them
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(trainer.model, trainer.opt, model_state_dict=ck["model"], optim_state_dict=ck["optimizer"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
        return int(ck["step"]), list(ck["log"])
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for n, v in ck["model"].items():
            params[n].copy_(v.to(params[n].device))
    trainer.opt.load_state_dict(ck["optimizer"])
    return int(ck["step"]), list(ck["log"])


# ---- the loop ------------------------------------------------------------------------------
@dataclass
class RunResult:
    out: Path
    steps: int
    resumed_from: int
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def _dist() -> tuple[int, int]:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def train_loop(trainer: Trainer, data: CompletionData, work: Path, key: str, *,
               progress: Progress | None = None, stop_after: int | None = None) -> RunResult:
    """Run (or resume) the configured number of steps; checkpoints go to `work/checkpoint.pt`."""
    import torch

    from bftcore.train import lr_at

    cfg = trainer.cfg
    rank, world = _dist()
    ck = work / "checkpoint.pt"
    start, log = load_checkpoint(ck, trainer, key)
    live = work / "train_log.jsonl"  # one line per step, for watching a long run (tail -f)
    if rank == 0:  # steps after the last checkpoint were lost with the run: the log restarts there
        _write_atomic(live, "".join(json.dumps(e) + "\n" for e in log))
    t0 = time.perf_counter()
    trainer.model.train()
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg.steps, _as_train_cfg(cfg))
        for g in trainer.opt.param_groups:
            g["lr"] = lr
        examples = make_examples(data, cfg, trainer.profile, step)
        norm = {k: float(v) for k, v in term_counts(examples, cfg.method).items()}
        mine = examples[rank::world]  # this rank's slice of the global batch
        per_micro = math.ceil(len(mine) / cfg.grad_accum)
        terms: dict[str, float] = {}
        micro = [mine[s:s + per_micro] for s in range(0, len(mine), per_micro)]
        for i, part in enumerate(micro):
            b = collate(part, trainer.pad_id, trainer.device)
            sync = i == len(micro) - 1  # reduce gradients over ranks once, after the last micro-batch
            if cfg.fsdp:
                trainer.model.set_requires_gradient_sync(sync)
            ctx = trainer.ddp.no_sync() if trainer.ddp is not None and not sync else contextlib.nullcontext()
            with ctx:
                loss, parts = trainer.micro_loss(b, norm)
                # DDP and FSDP average gradients over ranks; each term is already a share of the global
                # mean, so scale back up by the world size
                (loss * world).backward()
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + v
        if world > 1:
            vec = torch.tensor([terms.get(k, 0.0) for k in sorted(norm)], dtype=torch.float64)
            torch.distributed.all_reduce(vec)
            terms = dict(zip(sorted(norm), vec.tolist()))
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in trainer.model.parameters() if p.requires_grad], cfg.grad_clip)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor, the norm over every rank's shard
            grad_norm = grad_norm.full_tensor()
        trainer.opt.step()
        trainer.opt.zero_grad(set_to_none=True)
        entry = {"step": step + 1, "lr": lr, "loss": sum(terms.values()), "grad_norm": float(grad_norm),
                 **dict(sorted(terms.items()))}
        log.append(entry)
        if rank == 0:
            with live.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        if progress is not None:
            progress(f"completion ({cfg.method})", step + 1, cfg.steps)
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(ck, trainer, done, log, key, rank)
        if stop_after is not None and done >= stop_after:
            break
    trainer.model.eval()
    return RunResult(work.parent, len(log), start, log, time.perf_counter() - t0)


def _as_train_cfg(cfg: CompleteConfig) -> Any:
    from bftcore.train import TrainConfig

    return TrainConfig(lr=cfg.lr, warmup_frac=cfg.warmup_frac, min_lr_frac=cfg.min_lr_frac)


# ---- the whole job -------------------------------------------------------------------------
def complete(base: str | Path | None, aligned: str | Path, data: CompletionData, out: Path,
             cfg: CompleteConfig, *, profile: RetentionProfile | None = None, device: str = "cpu",
             merge: bool = False, progress: Progress | None = None, stop_after: int | None = None,
             index_path: str | None = None, base_stats: ShardBaseStats | None = None) -> RunResult:
    """Train and write `out` (an ordinary model directory with a run card). Resumes from
    `out/../.<name>.work/checkpoint.pt` when interrupted; the work directory goes when done."""
    import torch

    from bftcore.models import atomic_dir, load_model, load_tokenizer, tokenizer_hash

    cfg.check()
    needs_base = cfg.method == "bft" and ((cfg.penalty != "off" and base_stats is None)
                                          or cfg.teacher == "suppressed")
    if cfg.method == "bft" and profile is None:
        raise BadInput("--method bft needs --index (the base-favored-token index of harmful responses)")
    if needs_base and base is None:
        raise BadInput("--method bft needs --base (the base model's preferences drive the penalty)")
    profile = profile or RetentionProfile.uniform()
    rank, world = _dist()
    if cfg.fsdp and world < 2:
        raise BadInput("--fsdp shards the model over ranks: run it under torchrun with 2 or more processes")
    if cfg.batch_size < world * cfg.grad_accum:
        raise BadInput(f"--batch-size {cfg.batch_size} is smaller than ranks x --grad-accum "
                       f"({world} x {cfg.grad_accum}): some micro-batches would be empty")
    torch.manual_seed(cfg.seed)
    aligned = Path(aligned)
    tok = load_tokenizer(aligned)
    model = load_model(aligned, device=device)
    if cfg.grad_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    reference = None
    if cfg.lora:
        model = _with_lora(model, cfg)
    elif cfg.method in ("bft", "qi-constrained"):
        reference = load_model(aligned, device=device)  # the frozen aligned model
        reference.requires_grad_(False)
    base_model = None
    if needs_base:
        base_tok = load_tokenizer(Path(base))  # type: ignore[arg-type]
        if tokenizer_hash(base_tok) != tokenizer_hash(tok):
            raise BadInput("the base and aligned models do not share a tokenizer")
        base_model = load_model(Path(base), device=device)  # type: ignore[arg-type]
        base_model.requires_grad_(False)
    ddp = None
    if cfg.fsdp:  # the frozen teachers are sharded too: three full 8B copies per GPU would not fit
        for m in (model, reference, base_model):
            if m is not None:
                _fsdp_shard(m)
    elif world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    trainer = Trainer(model, reference, base_model, cfg, profile, pad, ddp=ddp, base_stats=base_stats)
    key = hashlib.sha256(f"{cfg.key()}:{data.digest()}:{profile.to_dict()}:{world}:"
                         f"{base_stats is not None}".encode()).hexdigest()[:16]
    work = work_dir(out)
    with _exclusive(work, rank):
        result = train_loop(trainer, data, work, key, progress=progress, stop_after=stop_after)
    if cfg.fsdp and len(result.log) >= cfg.steps:
        model = _unsharded(model, aligned, cfg, rank)
    if len(result.log) < cfg.steps or rank != 0:
        return result
    card = run_card(cfg, data, profile, result, base=base, aligned=aligned, index_path=index_path,
                    device=device, world=world,
                    base_statistics="scored shards" if base_stats is not None else "online")
    with atomic_dir(out) as tmp:
        if cfg.lora and merge:
            model = model.merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        for f in sorted(aligned.iterdir()):
            if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges",
                                                  "chat_template")):
                (tmp / f.name).write_bytes(f.read_bytes())
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "train_log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in result.log))
        (tmp / "RUN_CARD.md").write_text(card_markdown(card))
    for f in work.glob("*"):
        f.unlink()
    work.rmdir()
    return result


def _with_lora(model: Any, cfg: CompleteConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                    target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lc)


def _fsdp_shard(model: Any) -> None:
    """FSDP2: one parameter group per decoder layer (the classes transformers names in
    `_no_split_modules`), then the rest (embeddings, final norm, head) at the root."""
    from torch.distributed.fsdp import fully_shard

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    blocks = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in blocks]
    if not layers:
        raise BadInput(f"--fsdp: {type(inner).__name__} names no decoder-layer class to shard by")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)


def _unsharded(model: Any, aligned: Path, cfg: CompleteConfig, rank: int) -> Any:
    """FSDP2 after training: the full weights gathered onto rank 0's CPU and loaded into a
    plain copy of the model, which is what gets written (a collective; None on other ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from bftcore.models import load_model

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    plain = load_model(aligned, device="cpu")
    if cfg.lora:
        plain = _with_lora(plain, cfg)
    plain.load_state_dict(full)
    return plain


@contextlib.contextmanager
def _exclusive(work: Path, rank: int) -> Any:
    """One run per output directory: a second one would write over the first's checkpoints."""
    if rank != 0:
        yield
        return
    from filelock import FileLock, Timeout

    work.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(work) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise BadInput(f"another run is training into {work.parent / work.name[1:-5]}") from e
    try:
        yield
    finally:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def work_dir(out: Path) -> Path:
    """Where an unfinished run keeps its data and checkpoint (beside `out`, removed when done)."""
    return out.with_name(f".{out.name}.work")


def prepare_data(out: Path, build: Any) -> CompletionData:
    """The run's training data: built once by rank 0 (`build()` generates the self-distilled
    refusals) and kept in the work directory, so a resumed or multi-rank run reuses it."""
    import torch

    rank, _ = _dist()
    path = work_dir(out) / "data.json"
    if rank == 0 and not path.is_file():
        build().save(path)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return CompletionData.load(path)


def run_card(cfg: CompleteConfig, data: CompletionData, profile: RetentionProfile, result: RunResult,
             **extra: Any) -> dict[str, Any]:
    first, last = result.log[0], result.log[-1]
    tail = result.log[-10:]
    terms = [k for k in last if k not in ("step", "lr", "loss", "grad_norm")]
    return {
        "bftcore_complete": 1,
        "config": asdict(cfg),
        "key": cfg.key(),
        "data": data.summary(),
        "retention_profile": profile.to_dict(),
        "models": {k: str(v) for k, v in extra.items() if k in ("base", "aligned")},
        "index": extra.get("index_path"),
        "base_statistics": extra.get("base_statistics"),
        "device": extra.get("device"),
        "world_size": extra.get("world"),
        "seconds_this_run": round(result.seconds, 2),
        "resumed_from_step": result.resumed_from,
        "loss_first": first["loss"],
        "loss_final_mean10": sum(e["loss"] for e in tail) / len(tail),
        "terms_final_mean10": {k: sum(e.get(k, 0.0) for e in tail) / len(tail) for k in terms},
        "log": result.log,
    }


def card_markdown(card: dict[str, Any]) -> str:
    cfg = card["config"]
    lines = [f"# bftcore completion run: method `{cfg['method']}`", "",
             f"- models: base `{card['models'].get('base')}`, aligned `{card['models'].get('aligned')}`",
             f"- index: `{card['index']}`",
             (f"- data: {card['data']['harmful']} harmful ({card['data']['self_refusals']} self-distilled "
              f"refusals, {card['data']['template_refusals']} template), {card['data']['benign']} benign; "
              f"hash `{card['data']['hash']}`"),
             (f"- steps {cfg['steps']}, batch {cfg['batch_size']} (accumulation {cfg['grad_accum']}), "
              f"lr {cfg['lr']}, seed {cfg['seed']}, world size {card['world_size']}, device {card['device']}"),
             (f"- loss: {card['loss_first']:.4f} at step 1, {card['loss_final_mean10']:.4f} "
              "(mean of the last 10 steps)"),
             "", "| term | final (mean of last 10 steps) |", "| --- | --- |"]
    lines += [f"| {k} | {v:.5f} |" for k, v in card["terms_final_mean10"].items()]
    lines += ["", "## Settings", "", "| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in cfg.items()]
    return "\n".join(lines) + "\n"


def with_method(cfg: CompleteConfig, method: str) -> CompleteConfig:
    return replace(cfg, method=method)
