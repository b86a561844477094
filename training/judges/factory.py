"""``make_judge(spec)``: one string names a judge back end (CLI flags, config files)."""

from __future__ import annotations

from typing import Any

from covip.sdk.errors import InputError
from covip.training.judges.base import Judge

__all__ = ["make_judge", "JUDGE_SPEC_HELP"]

JUDGE_SPEC_HELP = (
    "'lexical' (synthetic data only; 'lexical-loose': options only, not who the caption names), "
    "'http://host:port/v1#model-name' (OpenAI-compatible server; '#model-name' optional: the server's first "
    "model), 'gguf:/path/model.gguf' (llama.cpp), "
    "'hf:model-id-or-dir' (transformers; 'hf:tiny' = random-weight tiny VLM for tests)"
)


def make_judge(spec: str | Judge, **overrides: Any) -> Judge:
    """Build a judge from a spec string (see :data:`JUDGE_SPEC_HELP`); ``overrides`` set config fields.

    ``make_judge("http://127.0.0.1:8000/v1#Qwen/Qwen3-30B-A3B-Instruct-2507", concurrency=32,
    cache_path="judge.sqlite")``. A :class:`Judge` instance is returned unchanged.
    """
    if isinstance(spec, Judge):
        if overrides:
            raise InputError("make_judge: overrides cannot be applied to an already built judge")
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a judge spec must be a non-empty string: {JUDGE_SPEC_HELP}")
    spec = spec.strip()
    if spec in ("lexical", "lexical-loose"):
        if overrides:
            raise InputError(f"the lexical judge takes no options, got {sorted(overrides)}")
        from covip.training.judges.lexical import LexicalJudge

        return LexicalJudge(require_subject=spec == "lexical")
    if spec.startswith(("http://", "https://")):
        from covip.training.judges.http import HttpJudge, HttpJudgeConfig

        url, _, model = spec.partition("#")
        return HttpJudge(HttpJudgeConfig(base_url=url, model=model or None), **overrides)
    if spec.startswith("gguf:"):
        from covip.training.judges.local import LlamaCppJudge, LlamaCppJudgeConfig

        return LlamaCppJudge(LlamaCppJudgeConfig(model_path=_rest(spec, "gguf:")), **overrides)
    if spec.startswith("hf:"):
        from covip.training.judges.local import TransformersJudge, TransformersJudgeConfig

        return TransformersJudge(TransformersJudgeConfig(model=_rest(spec, "hf:")), **overrides)
    raise InputError(f"unknown judge spec {spec!r}; use {JUDGE_SPEC_HELP}")


def _rest(spec: str, prefix: str) -> str:
    rest = spec[len(prefix):].strip()
    if not rest:
        raise InputError(f"the judge spec {spec!r} names nothing after {prefix!r}")
    return rest
