"""The training data of a completion run: harmful records with their refusal s(x), benign pairs.

s(x) is the aligned model's own answer to the clean prompt when the judge calls it a refusal
(self-distilled), else a template refusal. Built once by rank 0 and kept beside the output, so a
resumed or multi-rank run trains on the same tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bftcore import dist
from bftcore.chat import prompt_ids, response_ids
from bftcore.corpus import Record
from bftcore.errors import BadInput
from bftcore.files import atomic_write, json_digest
from bftcore.progress import Progress

DEFAULT_REFUSALS = (
    "I cannot help with that request.",
    "I'm sorry, but I can't assist with that.",
)


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
        return json_digest([[[h.id, h.prompt, h.response, h.refusal] for h in self.harmful],
                            [[b.id, b.prompt, b.response] for b in self.benign]])[:16]

    def refusal_openers(self) -> tuple[int, ...]:
        """The first token of every s(x), once each (the refusal openers the rank penalty guards)."""
        return tuple(sorted({h.refusal[0] for h in self.harmful if h.refusal}))

    def summary(self) -> dict[str, Any]:
        return {"harmful": len(self.harmful), "benign": len(self.benign),
                "self_refusals": sum(it.refusal_source == "self" for it in self.harmful),
                "template_refusals": sum(it.refusal_source == "template" for it in self.harmful),
                "hash": self.digest()}

    def save(self, path: Path) -> None:
        obj = {"harmful": [asdict(h) for h in self.harmful], "benign": [asdict(b) for b in self.benign]}
        atomic_write(path, json.dumps(obj))

    @classmethod
    def load(cls, path: Path) -> CompletionData:
        obj = json.loads(path.read_text())
        return cls([HarmfulItem(**h) for h in obj["harmful"]], [BenignItem(**b) for b in obj["benign"]])


def build_data(harmful: Sequence[Record], benign: Sequence[Record], aligned_gen: Any, *,
               refuses: Callable[[str], bool], templates: Sequence[str] = DEFAULT_REFUSALS,
               max_length: int = 512, max_new_tokens: int = 64,
               progress: Progress | None = None, thinking: bool = False,
               need_benign: bool = True) -> CompletionData:
    """Token-level training data. `refuses(text) -> bool` is the judge that decides whether the
    aligned model's own answer to a clean harmful prompt is a refusal (then it is s(x)); otherwise
    a template refusal (chosen by a hash of the record id) stands in. `thinking`: prompts rendered
    with the template's thinking block on (`chat.prompt_ids`)."""
    from bftcore.generate import Decoding
    from bftcore.progress import counter

    tok = aligned_gen.tokenizer
    if not templates:
        raise BadInput("at least one template refusal is needed")
    usable = [r for r in harmful if r.response]
    if not usable:
        raise BadInput("no harmful records with a response: completion needs harmful responses "
                       "(the harmful prefixes it trains recovery from)")
    if need_benign and not [r for r in benign if r.response]:
        raise BadInput("no benign records with a response: completion needs benign anchor pairs")
    prompts = [prompt_ids(tok, r.messages(), thinking=thinking) for r in usable]
    outs = aligned_gen.generate(prompts, Decoding(max_new_tokens),
                                on_batch=counter(progress, "self-distilled refusals", len(prompts)))
    items: list[HarmfulItem] = []
    doc_ids = {id(r): i for i, r in enumerate(harmful)}
    for r, p, o in zip(usable, prompts, outs):
        text = str(tok.decode(o, skip_special_tokens=True)).strip()
        if text and refuses(text):
            refusal, source = list(o) + [tok.eos_token_id], "self"
        else:
            refusal, source = response_ids(tok, templates[_template_of(r.id, len(templates))]), "template"
        resp = response_ids(tok, r.response or "", eos=False)
        if len(p) + 1 + len(refusal) > max_length:
            continue
        resp = resp[: max(1, max_length - len(p) - len(refusal))]
        items.append(HarmfulItem(r.id, p, resp, refusal, source, doc_ids[id(r)]))
    anchors = []
    for r in benign:
        if r.response:
            p, y = prompt_ids(tok, r.messages(), thinking=thinking), response_ids(tok, r.response)
            if len(p) + len(y) <= max_length:
                anchors.append(BenignItem(r.id, p, y))
    if not items or (need_benign and not anchors):
        raise BadInput(f"no training pairs fit --max-length {max_length}")
    return CompletionData(items, anchors)


def _template_of(record_id: str, n: int) -> int:
    """A record's template refusal: fixed by its id, spread over the templates (a pick, not an
    identity: the same formula as ever, so the data built for a corpus never changes)."""
    return int(hashlib.sha256(record_id.encode()).hexdigest(), 16) % n


def work_dir(out: Path) -> Path:
    """Where an unfinished run keeps its data and checkpoint (beside `out`, removed when done)."""
    return out.with_name(f".{out.name}.work")


def prepare_data(out: Path, build: Callable[[], CompletionData]) -> CompletionData:
    """The run's training data: built once by rank 0 (`build()` generates the self-distilled
    refusals) and kept in the work directory, so a resumed or multi-rank run reuses it."""
    path = work_dir(out) / "data.json"
    if dist.rank_world()[0] == 0 and not path.is_file():
        build().save(path)
    dist.barrier()
    return CompletionData.load(path)
