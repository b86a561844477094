"""covip.training.judges: the frozen judge behind r_caps, with pluggable back ends.

A judge sees only a caption and one multiple-choice question (options A/B/C, D = cannot be determined)
and answers ``\\boxed{X}``; ``Judge.answer(items)`` returns one letter per item (unparsable = D).

Back ends: :class:`HttpJudge` (OpenAI-compatible server: vLLM, llama.cpp's server),
:class:`LlamaCppJudge` (local GGUF), :class:`TransformersJudge` (local Hugging Face model),
:class:`LexicalJudge` (string matching, valid ONLY for templated synthetic data).
:func:`make_judge` builds one from a spec string. Heavy back ends import lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from covip.training.judges.base import (
    CANNOT_DETERMINE_TEXT,
    JUDGE_PROMPT_VERSION,
    JUDGE_SYSTEM_PROMPT,
    MCQA,
    AnswerCache,
    Judge,
    JudgeItem,
    JudgeStats,
    judge_messages,
    normalize_text,
)
from covip.training.judges.factory import JUDGE_SPEC_HELP, make_judge
from covip.training.judges.lexical import LexicalJudge, lexical_letter

if TYPE_CHECKING:
    from covip.training.judges.http import HttpJudge, HttpJudgeConfig
    from covip.training.judges.local import (
        LlamaCppJudge,
        LlamaCppJudgeConfig,
        TransformersJudge,
        TransformersJudgeConfig,
    )

__all__ = [
    "MCQA",
    "JudgeItem",
    "Judge",
    "JudgeStats",
    "AnswerCache",
    "CANNOT_DETERMINE_TEXT",
    "JUDGE_PROMPT_VERSION",
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_SPEC_HELP",
    "judge_messages",
    "normalize_text",
    "make_judge",
    "LexicalJudge",
    "lexical_letter",
    "HttpJudge",
    "HttpJudgeConfig",
    "LlamaCppJudge",
    "LlamaCppJudgeConfig",
    "TransformersJudge",
    "TransformersJudgeConfig",
]

_LAZY = {
    "HttpJudge": "http",
    "HttpJudgeConfig": "http",
    "LlamaCppJudge": "local",
    "LlamaCppJudgeConfig": "local",
    "TransformersJudge": "local",
    "TransformersJudgeConfig": "local",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"covip.training.judges.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'covip.training.judges' has no attribute {name!r}")
