"""The index's retention profile: where on harmful responses the aligned model kept the base."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bftcore.buckets import DEFAULT_BUCKET_EDGES, bucket_of
from bftcore.errors import BadInput


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

    def draw_k(self, rng: random.Random, length: int, cap: int | None = None, *, per_position: bool = False) -> int:
        """A prefix length in [1, length]: a bucket with probability ∝ R̄ (buckets with data
        that this response reaches), then uniform inside it. `per_position`: a bucket with
        probability ∝ R̄ × the positions of it this response reaches, so each position t is drawn
        ∝ R̄(t) (deep positions as often as shallow ones where the aligned model kept as much)."""
        top = min(length, cap) if cap else length
        choices, weights = [], []
        for b, lo in enumerate(self.edges):
            hi = self.edges[b + 1] - 1 if b + 1 < len(self.edges) else top
            if lo <= top and self.counts[b] > 0 and self.mean_retain[b] > 0:
                choices.append((lo, min(hi, top)))
                weights.append(self.mean_retain[b] * ((min(hi, top) - lo + 1) if per_position else 1))
        if not choices:
            return rng.randint(1, max(1, top))
        lo, hi = rng.choices(choices, weights)[0]
        return rng.randint(lo, hi)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "mean_retain": [round(r, 6) for r in self.mean_retain],
                "counts": list(self.counts)}
