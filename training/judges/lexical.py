"""A rule-based judge for TEMPLATED SYNTHETIC data only: no model, deterministic, instant.

It picks the option whose text is stated in the caption: after normalizing both (lowercase, every
non-alphanumeric character a space, whitespace collapsed), an option counts as stated when it occurs in
the caption as a whole-word substring. Exactly one of A/B/C stated -> that letter; none or several -> D.

This is meaningful only when captions state facts with the very words of the options, which holds for the
synthetic generator's templated dialogues and questions. It is NOT a stand-in for an LLM judge on real
data (paraphrases, negations and "unlike X" all defeat it): use :class:`HttpJudge`,
:class:`LlamaCppJudge` or :class:`TransformersJudge` there.
"""

from __future__ import annotations

from collections.abc import Sequence

from covip.training.judges.base import Judge, JudgeItem, normalize_text

__all__ = ["LexicalJudge", "lexical_letter"]


def lexical_letter(item: JudgeItem) -> str:
    """The letter :class:`LexicalJudge` answers for one item."""
    caption = f" {normalize_text(item.caption)} "
    stated = []
    for letter in ("A", "B", "C"):
        option = normalize_text(item.question.options[letter])
        if option and f" {option} " in caption:
            stated.append(letter)
    return stated[0] if len(stated) == 1 else "D"


class LexicalJudge(Judge):
    """Answers by normalized substring match of the option texts in the caption (synthetic data only)."""

    model_id = "lexical-v1"

    def __init__(self) -> None:
        super().__init__()

    def __repr__(self) -> str:
        return "LexicalJudge()"

    def _generate(self, prompts, seeds):  # pragma: no cover - complete() is overridden
        raise NotImplementedError

    def complete(self, items: Sequence[JudgeItem], style: str = "strict", pack: object = None) -> list[str]:
        """``\\boxed{X}`` for each item (the same format an LLM judge writes; the same in both styles)."""
        return [f"\\boxed{{{letter}}}" for letter in self.answer(items)]

    def answer(self, items: Sequence[JudgeItem]) -> list[str]:
        items = [it if isinstance(it, JudgeItem) else JudgeItem(*it) for it in items]
        self.stats.questions += len(items)
        return [lexical_letter(it) for it in items]
