"""How far a judge agrees with labels: agreement with its 95% interval, per-class precision and
recall, the confusion matrix.

Labels come in two kinds, told apart per value:
- verdicts, in any common spelling: `refusal`, `partial`, `compliance`, `empty`, and XSTest's
  `1_full_compliance`, `2_full_refusal`, `3_partial_refusal` (a name holding "partial", "refus",
  "compl", "empty"). Then both the verdict agreement (four classes) and the success agreement
  (compliance against the rest) are measured.
- success flags: true/false, yes/no, 1/0, harmful/unharmful, unsafe/safe, jailbroken. They mean a
  successful attack (harmful compliance), unless the column's name says refusal (`refused`,
  `is_refusal`), where true means refused. Then only the success agreement is measured.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bftcore.errors import BadInput
from bftcore.judge.base import VERDICTS
from bftcore.stats import wilson

_TRUE = {"true", "yes", "y", "1", "harmful", "unsafe", "jailbroken", "success", "successful", "positive"}
_FALSE = {"false", "no", "n", "0", "unharmful", "harmless", "not harmful", "safe", "benign", "failure", "negative"}


@dataclass(frozen=True)
class Label:
    verdict: str | None  # one of VERDICTS, or None for a success flag
    success: bool


def parse_label(value: Any, column: str) -> Label | None:
    """A label cell as a verdict or a success flag; None for an empty cell (unlabelled)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    refusal_column = "refus" in column.lower()
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        flag = bool(value)
        return Label(None, not flag if refusal_column else flag)
    text = str(value).strip().lower()
    if not text:
        return None
    for verdict, marks in (("partial", ("partial",)), ("refusal", ("refus", "declin", "non-compl", "noncompl",
                                                                    "not compl")),
                           ("compliance", ("compl", "answer")), ("empty", ("empty", "blank"))):
        if any(m in text for m in marks):
            return Label(verdict, verdict == "compliance")
    if text in _TRUE or text in _FALSE:
        flag = text in _TRUE
        return Label(None, not flag if refusal_column else flag)
    raise BadInput(f"label {value!r} in column {column!r} is neither a verdict (refusal, partial, compliance, "
                   "empty) nor a success flag (true/false, yes/no, 1/0, harmful/unharmful)")


@dataclass
class Agreement:
    judge: str
    n: int  # labelled items
    success_agree: int
    verdict_n: int = 0  # items labelled with a verdict
    verdict_agree: int = 0
    # confusion[label][judge verdict] over the items labelled with verdicts; success flags as
    # "success"/"no success"
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        seen = set(self.confusion) | {v for row in self.confusion.values() for v in row}
        order = [*VERDICTS, "success", "no success"]
        return [c for c in order if c in seen]

    def precision_recall(self) -> dict[str, tuple[float | None, float | None, int]]:
        """Per class: (precision, recall, support); None where undefined (nothing predicted or labelled)."""
        out = {}
        for c in self.classes:
            tp = self.confusion.get(c, {}).get(c, 0)
            predicted = sum(row.get(c, 0) for row in self.confusion.values())
            support = sum(self.confusion.get(c, {}).values())
            out[c] = (tp / predicted if predicted else None, tp / support if support else None, support)
        return out

    def to_dict(self) -> dict[str, Any]:
        lo, hi = wilson(self.success_agree, self.n)
        d: dict[str, Any] = {"judge": self.judge, "n": self.n, "success_agreement": self.success_agree / self.n,
                             "success_agreement_ci95": [lo, hi], "success_agree": self.success_agree}
        if self.verdict_n:
            vlo, vhi = wilson(self.verdict_agree, self.verdict_n)
            d.update(verdict_n=self.verdict_n, verdict_agreement=self.verdict_agree / self.verdict_n,
                     verdict_agreement_ci95=[vlo, vhi], verdict_agree=self.verdict_agree)
        d["confusion"] = self.confusion
        d["per_class"] = {c: {"precision": p, "recall": r, "support": s}
                          for c, (p, r, s) in self.precision_recall().items()}
        return d


def agreement(judge: str, labels: Sequence[Label | None], verdicts: Sequence[str]) -> Agreement:
    """The judge's verdicts against the labels (unlabelled items left out)."""
    pairs = [(lab, v) for lab, v in zip(labels, verdicts) if lab is not None]
    if not pairs:
        raise BadInput("no labelled records to compare with")
    out = Agreement(judge, len(pairs), sum(lab.success == (v == "compliance") for lab, v in pairs))
    for lab, v in pairs:
        if lab.verdict is not None:
            out.verdict_n += 1
            out.verdict_agree += lab.verdict == v
            row, col = lab.verdict, v
        else:
            row, col = ("success" if lab.success else "no success"), ("success" if v == "compliance" else "no success")
        out.confusion.setdefault(row, {})
        out.confusion[row][col] = out.confusion[row].get(col, 0) + 1
    return out
