"""A rule-based judge for TEMPLATED SYNTHETIC data only: no model, deterministic, instant.

It picks the option whose text is stated in the caption: after normalizing both (lowercase, every
non-alphanumeric character a space, whitespace collapsed), an option counts as stated when it occurs in
the caption as a whole-word substring. Exactly one of A/B/C stated -> that letter; none or several -> D.

A question is about someone when it names them (capitalized words after its first word: "Where did the user
take the photo of Frank-Ziggy?"). A caption that does not name them cannot answer it, whatever facts it states
(an LLM judge reading "Meet Button! ... the university rose garden" answers "cannot be determined" when asked
where the photo of Frank-Ziggy was taken): D. ``LexicalJudge(require_subject=False)`` (spec ``lexical-loose``)
matches the options only, as covip's first lexical judge did.

This is meaningful only when captions state facts with the very words of the options, which holds for the
synthetic generator's templated dialogues and questions. It is NOT a stand-in for an LLM judge on real
data (paraphrases, negations and "unlike X" all defeat it): use :class:`HttpJudge`,
:class:`LlamaCppJudge` or :class:`TransformersJudge` there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from covip.training.judges.base import Judge, JudgeItem, normalize_text

__all__ = ["LexicalJudge", "lexical_letter", "question_subjects"]

_WORD = re.compile(r"[A-Za-z][\w'-]*")


def question_subjects(question: str) -> list[str]:
    """The names a question asks about: its capitalized words after the first (``I`` aside), possessive dropped."""
    words = _WORD.findall(question or "")[1:]
    return [re.sub(r"'s$", "", w) for w in words if w[0].isupper() and w != "I"]


def lexical_letter(item: JudgeItem, *, require_subject: bool = True) -> str:
    """The letter :class:`LexicalJudge` answers for one item."""
    caption = f" {normalize_text(item.caption)} "
    if require_subject and any(f" {normalize_text(name)} " not in caption
                               for name in question_subjects(item.question.question)):
        return "D"  # the caption does not say who: it cannot answer a question about them
    stated = []
    for letter in ("A", "B", "C"):
        option = normalize_text(item.question.options[letter])
        if option and f" {option} " in caption:
            stated.append(letter)
    return stated[0] if len(stated) == 1 else "D"


class LexicalJudge(Judge):
    """Answers by normalized substring match of the option texts in a caption that names the question's subject
    (synthetic data only)."""

    def __init__(self, *, require_subject: bool = True) -> None:
        super().__init__()
        self.require_subject = require_subject
        self.model_id = "lexical-v2" if require_subject else "lexical-v1"  # v1: options only (covip 0.x runs)

    def __repr__(self) -> str:
        return "LexicalJudge()" if self.require_subject else "LexicalJudge(require_subject=False)"

    def _generate(self, prompts, seeds):  # pragma: no cover - complete() is overridden
        raise NotImplementedError

    def complete(self, items: Sequence[JudgeItem], style: str = "strict", pack: object = None) -> list[str]:
        """``\\boxed{X}`` for each item (the same format an LLM judge writes; the same in both styles)."""
        return [f"\\boxed{{{letter}}}" for letter in self.answer(items)]

    def answer(self, items: Sequence[JudgeItem]) -> list[str]:
        items = [it if isinstance(it, JudgeItem) else JudgeItem(*it) for it in items]
        self.stats.questions += len(items)
        return [lexical_letter(it, require_subject=self.require_subject) for it in items]
