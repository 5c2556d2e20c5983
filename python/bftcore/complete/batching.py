"""What one optimizer step trains on: its records, its examples, and their padded batch.

The records of a step are a pure function of (seed, step), the same for every method; a method
turns each harmful record into one example (methods.py); `collate` gathers the positions each
loss term reads, so the losses never touch padding.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bftcore.complete.config import FINETUNE_ATTACKS, CompleteConfig
from bftcore.complete.data import CompletionData

if TYPE_CHECKING:  # torch is imported where it runs: `bftcore --help` stays fast
    import torch


@dataclass(frozen=True)
class CompletionExample:
    """One training sequence: prompt + prefix (harmful, no loss) + target.

    kind: direct | recovery | benign. `rto` marks DeRTa's refusal-token targets at every prefix
    position.
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
    n_h = cfg.batch_size if cfg.method in FINETUNE_ATTACKS else max(1, round(cfg.batch_size * cfg.harmful_frac))
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


@dataclass
class Batch:
    """A micro-batch: the student sequences, the clean teacher sequences (prompt + target, for
    the hybrid teacher), and the (row, column) of every position a loss term reads."""

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


def collate(examples: Sequence[CompletionExample], pad_id: int, device: torch.device) -> Batch:
    """Right-pad the examples; a position at column c predicts the token at c + 1."""
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

