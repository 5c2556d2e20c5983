"""The base model's top-k from scored shards: the penalty without the base model in the step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bftcore.complete.data import CompletionData
from bftcore.corpus import Record
from bftcore.errors import BadInput

if TYPE_CHECKING:
    import torch


class ShardBaseStats:
    """The base model's top-k at every harmful response position, read from the scored shards
    that `bftcore score` / `bftcore index` wrote for the same harmful corpus: the penalty then needs
    no base model in memory or in the step."""

    def __init__(self, shard_dir: Path, harmful: Sequence[Record], data: CompletionData,
                 tokenizer_hash: str, top_k: int) -> None:
        import numpy as np

        from bftcore.score import corpus_hash
        from bftcore.shards import read_shard_table, shard_paths

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
            t = read_shard_table(path, ["doc_id", "pos", "token", "topk_token", "topk_lp_base"])
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

