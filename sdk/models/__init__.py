"""Model presets and builders: tiny real architectures with random weights for tests and offline runs.

Importing this package never imports torch; :func:`build_tiny_vlm` does, when called. Also here:
:mod:`covip.sdk.models.hub` (``covip pull``: Hugging Face checkpoints ahead of time) and
:mod:`covip.sdk.models.cache` (``covip models``: what this machine holds, with sizes).
"""

from __future__ import annotations

from covip.sdk.models.tiny import TINY_MARKER, TINY_MODELS, build_tiny_vlm, read_tiny_marker, tiny_preset

__all__ = ["TINY_MODELS", "TINY_MARKER", "build_tiny_vlm", "read_tiny_marker", "tiny_preset"]
