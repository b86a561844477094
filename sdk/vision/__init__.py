"""Image embeddings: the :class:`Embedder` interface, its config, and :func:`make_embedder`.

Importing this package never imports torch or open_clip; they load when an embedder is built.
"""

from __future__ import annotations

from typing import Any

from covip.sdk.errors import InputError
from covip.sdk.vision.base import MINI_MODEL, TINY_MODEL, Embedder, EmbedderConfig
from covip.sdk.vision.openclip import OpenClipEmbedder

__all__ = ["Embedder", "EmbedderConfig", "OpenClipEmbedder", "make_embedder", "parse_embedder_spec"]

_SCHEMAS = ("hf-hub:", "local-dir:")


def parse_embedder_spec(spec: str) -> EmbedderConfig:
    """Parse 'tiny', 'mini', 'ViT-B-32' or 'ViT-B-32/laion2b_s34b_b79k' (model/pretrained) into a config."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(
            f"embedder spec must be a non-empty string like 'tiny' or 'ViT-B-32/laion2b_s34b_b79k', got {spec!r}"
        )
    text = spec.strip()
    if text.lower() in (TINY_MODEL, MINI_MODEL):
        return EmbedderConfig(model=text.lower())
    if text.startswith(_SCHEMAS) or "/" not in text:
        return EmbedderConfig(model=text)
    model, pretrained = text.split("/", 1)
    if not model or not pretrained:
        raise InputError(f"embedder spec {spec!r} must look like 'MODEL' or 'MODEL/PRETRAINED'")
    return EmbedderConfig(model=model, pretrained=pretrained)


def make_embedder(spec: str | EmbedderConfig | Embedder = TINY_MODEL, **overrides: Any) -> Embedder:
    """Build an embedder from a spec string or config; keyword overrides (None = not given) win."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(spec, EmbedderConfig):
        config = spec.with_overrides(given)
    elif isinstance(spec, str):
        config = parse_embedder_spec(spec).with_overrides(given)
    elif isinstance(spec, Embedder):
        if any(v is not None for v in overrides.values()):
            raise InputError("make_embedder() got an already-built embedder and options to change it")
        return spec
    else:
        raise InputError(
            f"make_embedder() takes a spec string, an EmbedderConfig or an Embedder, not {type(spec).__name__}"
        )
    return OpenClipEmbedder(config)
