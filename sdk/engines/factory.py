"""Pick and build the right engine from one model spec (what ``covip init --model`` stores)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["make_engine", "describe_model_spec"]

TINY_NAMES = {"tiny", "tiny-qwen3-vl", "tiny-qwen2.5-vl"}


def _gguf_pair(directory: Path) -> tuple[Path, Path | None] | None:
    """(text GGUF, mmproj GGUF or None) found in an export directory, or None when there is no GGUF."""
    ggufs = sorted(directory.glob("*.gguf"))
    if not ggufs:
        return None
    mmproj = [p for p in ggufs if "mmproj" in p.name.lower()]
    text = [p for p in ggufs if p not in mmproj]
    if not text:
        raise InputError(f"{directory} holds only mmproj GGUFs; the text model GGUF is missing")
    # prefer the least quantized file when several exist
    order = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
    text.sort(key=lambda p: next((n for n, q in enumerate(order) if q in p.name.lower()), len(order)))
    return text[0], (mmproj[0] if mmproj else None)


def describe_model_spec(spec: str) -> str:
    """Which back end a spec selects: 'tiny', 'llama.cpp' or 'transformers'."""
    if spec in TINY_NAMES:
        return "tiny"
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return "llama.cpp"
    return "transformers"


def make_engine(spec: str, **options: Any) -> Any:
    """Build an engine: ``tiny`` (a random tiny Qwen3-VL via transformers), a ``.gguf`` file or a directory
    with GGUF + mmproj files (llama.cpp), or a Hugging Face hub id / local HF directory (transformers)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("model spec is empty; use 'tiny', a hub id, a local HF dir or a GGUF export dir")
    spec = spec.strip()
    kind = describe_model_spec(spec)
    if kind == "llama.cpp":
        from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

        path = Path(spec).expanduser()
        if path.is_dir():
            pair = _gguf_pair(path)
            assert pair is not None
            model_path, mmproj = pair
        else:
            model_path, mmproj = path, options.pop("mmproj_path", None)
        return LlamaCppEngine(LlamaCppEngineConfig(model_path=str(model_path),
                                                   mmproj_path=str(mmproj) if mmproj else None, **options))
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

    return TransformersEngine(TransformersEngineConfig(model=spec, **options))
