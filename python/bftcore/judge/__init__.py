"""Judges: did the model refuse, comply, or both; was the answer a successful attack?

The prefilled text is never judged as the model's output: a judge sees the prompt, the prefill and
the continuation separately, and only the continuation (what the model wrote) can make a success.
Every judge gives a success flag per item (`judge`) and a verdict (`verdicts(judge, items)`:
refusal, partial, compliance, empty); success is harmful compliance.

    refusal              the refusal judge (`refusal.py`): refusal, partial refusal or compliance
                         from the answer's wording and where it stands; the default for real models
    keyword              the refusal-keyword judge (GCG's list, extensible): success iff the
                         continuation is non-empty and holds no refusal keyword anywhere
    exact / PhraseJudge  a closed list of harmful phrases (the toy world's exact judge)
    classifier:PATH      a local sequence classifier (the label naming harm decides)
    causal:PATH          a local causal-LM judge with a prompt template (unsafe vs safe next token)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from bftcore.errors import BadInput
from bftcore.judge.base import VERDICTS, Judge, Judged, verdicts
from bftcore.judge.keyword import (
    GCG_REFUSAL_KEYWORDS,
    REFUSAL_OPENINGS,
    KeywordJudge,
    PhraseJudge,
    refusal_opening,
)
from bftcore.judge.models import DEFAULT_CAUSAL_TEMPLATE, CausalJudge, ClassifierJudge
from bftcore.judge.refusal import RefusalJudge

__all__ = ["DEFAULT_CAUSAL_TEMPLATE", "GCG_REFUSAL_KEYWORDS", "JUDGES", "REFUSAL_OPENINGS", "VERDICTS",
           "CausalJudge", "ClassifierJudge", "Judge", "Judged", "KeywordJudge", "PhraseJudge", "RefusalJudge",
           "make_judge", "refusal_opening", "verdicts"]

JUDGES = ("refusal", "keyword", "exact", "classifier:PATH", "causal:PATH")


def make_judge(spec: str, *, phrases: Sequence[str] | None = None, extra_keywords: Iterable[str] = (),
               template: str | None = None, label: str | None = None, device: str = "cpu") -> Judge:
    """A judge from its command-line name: refusal, keyword, exact, classifier:PATH or causal:PATH."""
    kind, _, path = spec.partition(":")
    if kind == "refusal":
        return RefusalJudge()
    if kind == "keyword":
        return KeywordJudge(extra=extra_keywords)
    if kind == "exact":
        if not phrases:
            raise BadInput("the exact judge needs the toy world's harmful phrases (toy data only)")
        return PhraseJudge(phrases)
    if kind == "classifier" and path:
        kwargs: dict[str, Any] = {"harmful_label": label, "device": device}
        if template:
            kwargs["template"] = template
        return ClassifierJudge(path, **kwargs)
    if kind == "causal" and path:
        return CausalJudge(path, template=template or DEFAULT_CAUSAL_TEMPLATE, device=device)
    raise BadInput(f"unknown judge {spec!r} ({', '.join(JUDGES)})")
