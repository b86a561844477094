"""Test helper: the tiny models converted to GGUF (+ mmproj) with llama.cpp's own converter.

The conversion itself is :func:`covip.export.converter.convert_tiny_to_gguf` (cached under the covip cache);
this module keeps the names the tests import.
"""

from __future__ import annotations

from covip.export.converter import ConverterUnavailable, convert_tiny_to_gguf, converter_dir, covip_cache

__all__ = ["covip_cache", "converter_dir", "convert_tiny_to_gguf", "ConverterUnavailable"]
