"""The two scoring protocols of ``covip eval``: the authors' (``paper``, the default) and covip's ``strict`` one.

``paper`` follows the CoViP authors' public evaluation code (oyt9306/CoViP, ``evaluation/`` and
``downstream/``) rule for rule, quirks included, so that numbers are comparable with the paper's tables:

* **CapEval judge**: the judge may reason, then boxes its letter. The box read is the *first*
  ``\\boxed{...}`` up to its first closing brace; with no box the answer is D. A question counts as right
  when the expected letter occurs in that box (case-sensitive substring), so a hedged ``\\boxed{A or D}``
  is right for A and also for a negative question (expected D).
* **LSD**: the predicted place is the text of the *last* ``//boxed{...}`` (two forward slashes, as the
  authors' question asks for it); without one, the text after the last ``//`` (the piece before it when the
  last is empty); otherwise the empty string. F1 over the *sets* of lowercased whitespace tokens
  (punctuation kept; both empty = 1, one empty = 0).
* **LAR**: a judge compares the answer with the record's ``last_action``; correct when its verdict contains
  ``correct`` in any case (so "Incorrect" also counts, as in the authors' check).
* **ITR**: correct when the raw answer contains the dataset's placeholder name (case-sensitive; the
  authors' data use ``SKS``).

``strict`` is covip's own reading: the judge must reply with a lone boxed letter (hedges and unparsable
output count as D), LSD reads the first ``\\boxed{}`` with token normalization, LAR wants
``\\boxed{Correct}``, ITR matches whole words case-insensitively. It is harder to game and suits training
rewards and regression tests; it is not comparable with the paper.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from covip.sdk.errors import InputError
from covip.training.data.downstream import PAPER_ITR_PLACEHOLDER

__all__ = [
    "PROTOCOLS",
    "DEFAULT_PROTOCOL",
    "check_protocol",
    "paper_judge_box",
    "paper_judge_right",
    "paper_lsd_extract",
    "paper_lsd_f1",
    "paper_lsd_score",
    "paper_lar_correct",
    "paper_itr_score",
    "PAPER_ITR_PLACEHOLDER",
]

PROTOCOLS = ("paper", "strict")
DEFAULT_PROTOCOL = "paper"

_JUDGE_BOX = re.compile(r"\\boxed\{(.*?)\}", re.DOTALL)
_SLASH_BOX = re.compile(r"//boxed\{([^}]*)\}")


def check_protocol(protocol: str) -> str:
    """``protocol`` lowercased, or an :class:`InputError` naming the choices."""
    p = str(protocol).strip().lower()
    if p not in PROTOCOLS:
        raise InputError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    return p


def paper_judge_box(text: str | None) -> str:
    """What the authors read from a CapEval judge output: the first box's text (to its first ``}``), else D."""
    found = _JUDGE_BOX.findall(text or "")
    return found[0] if found else "D"


def paper_judge_right(text: str | None, expected: str) -> bool:
    """The authors' CapEval rule: the expected letter occurs in the box (a substring test)."""
    return str(expected) in paper_judge_box(text)


def paper_lsd_extract(answer: str | None) -> str:
    """The place the authors' LSD scorer reads from an answer (see the module doc)."""
    text = answer or ""
    boxes = _SLASH_BOX.findall(text)
    if boxes:
        return boxes[-1].strip()
    if "//" in text:
        pieces = text.split("//")
        return pieces[-1].strip() or pieces[-2].strip()
    return ""


def paper_lsd_f1(prediction: str, reference: str) -> float:
    """F1 over the sets of lowercased whitespace tokens (both empty: 1.0; one empty: 0.0)."""
    p, g = set(prediction.lower().split()), set(reference.lower().split())
    if not p and not g:
        return 1.0
    common = len(p & g)
    if not p or not g or not common:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def paper_lsd_score(answer: str | None, references: Sequence[str]) -> tuple[float, bool]:
    """(best paper F1 against the references, whether the answer had a ``//boxed{}``)."""
    place = paper_lsd_extract(answer)
    return max(paper_lsd_f1(place, ref) for ref in references), bool(_SLASH_BOX.search(answer or ""))


def paper_lar_correct(verdict: str | None) -> bool:
    """The authors' LAR rule: the judge's verdict contains ``correct`` (any case)."""
    return "correct" in (verdict or "").lower()


def paper_itr_score(answer: str | None, placeholders: Sequence[str]) -> bool:
    """The authors' ITR rule: the raw answer contains the placeholder (case-sensitive substring)."""
    return any(p and p in (answer or "") for p in placeholders)
