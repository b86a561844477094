"""The SDK's public seam for the training and export packages, the benchmarks, and extension authors.

The training and export packages and the benchmark scripts use SDK internals only through the names here (a
repository test forbids importing another package's underscore modules or names), so the SDK can reorganize
its private modules freely. Light names are imported at once; the engine helpers, which pull in transformers
or llama.cpp, load on first use.

* :func:`require`: import an optional dependency or raise :class:`~covip.sdk.errors.MissingExtraError` naming
  the ``pip install`` line.
* :class:`ConfigMixin`: the typed-dataclass helpers every config uses (overrides, YAML/JSON, field help).
* :func:`parse_overrides`, ``Overrides``: the one override form every config's ``with_overrides`` takes.
* :func:`lazy_exports`: a package's names imported on first use (PEP 562), so importing it stays light.
* :func:`pick_device`: ``"auto"`` -> ``"cuda"``/``"mps"``/``"cpu"``.
* :func:`quiet_progress`: hide transformers' "Loading weights" bar unless covip logs at INFO.
* :func:`set_pixels`: bound a Qwen-VL image processor's pixels (min/max).
* :func:`template_messages`: covip messages in the shape HF chat templates take (what the engines render).
* :func:`preprocess_image`, :class:`ImageSpec`: the ONNX engine's image preprocessing.
* :class:`Media`, :func:`item_tokens`: llama.cpp multimodal chunks and their token counts.
* :func:`native_lib`, :func:`error_mark`, :func:`last_native_error`: llama.cpp's native library handle and
  the native log lines it wrote since a mark (for error messages).
* :mod:`covip.sdk.files` (not re-exported here): atomic writes and private files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from covip.sdk._config import ConfigMixin, Overrides, lazy_exports, parse_overrides, pick_device
from covip.sdk._extras import require

if TYPE_CHECKING:  # loaded on first use (see __getattr__): they import transformers or llama.cpp
    from covip.sdk.engines._hf_util import quiet_progress, set_pixels, template_messages
    from covip.sdk.engines._llamacpp_util import Media, error_mark, item_tokens, last_native_error, native_lib
    from covip.sdk.engines._onnx_util import ImageSpec, preprocess_image

__all__ = ["require", "ConfigMixin", "Overrides", "parse_overrides", "lazy_exports", "pick_device", "quiet_progress", "set_pixels",
           "template_messages", "preprocess_image", "ImageSpec",
           "Media", "item_tokens", "native_lib", "error_mark", "last_native_error"]

_LAZY = {
    "quiet_progress": "covip.sdk.engines._hf_util",
    "set_pixels": "covip.sdk.engines._hf_util",
    "template_messages": "covip.sdk.engines._hf_util",
    "preprocess_image": "covip.sdk.engines._onnx_util",
    "ImageSpec": "covip.sdk.engines._onnx_util",
    "Media": "covip.sdk.engines._llamacpp_util",
    "item_tokens": "covip.sdk.engines._llamacpp_util",
    "native_lib": "covip.sdk.engines._llamacpp_util",
    "error_mark": "covip.sdk.engines._llamacpp_util",
    "last_native_error": "covip.sdk.engines._llamacpp_util",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
