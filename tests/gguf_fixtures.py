"""Test helper: convert a tiny HF model to GGUF (+ mmproj) with llama.cpp's own converter.

The converter itself comes from :mod:`covip.export.converter` (the llama-cpp-python sdist of the installed
version, fetched once with ``pip download`` into ``<cache>/llama-cpp-sdist/<version>``). Conversions are
cached here: a model directory's name carries its build hash, so ``<cache>/gguf/<dir name>-llama-<version>/``
is reused while both stay the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from covip.export.converter import ConverterUnavailable, convert_hf_to_gguf, converter_dir, covip_cache
from covip.export.converter import llama_cpp_version as _llama_version

__all__ = ["covip_cache", "converter_dir", "convert_tiny_to_gguf", "ConverterUnavailable"]

_TINY_MARKER = "covip_tiny.json"


def convert_tiny_to_gguf(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None,
                         *, outtype: str = "f32") -> tuple[Path, Path]:
    """Convert an HF VLM directory to ``(text GGUF, mmproj GGUF)``; reuses an earlier conversion.

    A ``covip_tiny.json`` marker in ``hf_dir`` is copied next to the GGUFs and the GGUF's
    ``general.name`` becomes ``covip-<tiny name>``, so the llama.cpp engine knows the model is meaningless.
    """
    hf = Path(hf_dir)
    if out_dir is None:
        out_dir = covip_cache() / "gguf" / f"{hf.name}-llama-{_llama_version()}"
    out = Path(out_dir)
    text_path = out / f"{hf.name}-{outtype}.gguf"
    mmproj_path = out / f"mmproj-{hf.name}-{outtype}.gguf"
    if text_path.is_file() and mmproj_path.is_file():
        return text_path, mmproj_path
    conv = converter_dir()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gguf-", dir=out))
    try:
        marker = hf / _TINY_MARKER
        name = None
        if marker.is_file():
            name = json.loads(marker.read_text()).get("name", hf.name)
            name = name if name.startswith("covip-") else f"covip-{name}"
            shutil.copy2(marker, out / _TINY_MARKER)
        convert_hf_to_gguf(hf, tmp / text_path.name, outtype=outtype, model_name=name, converter=conv)
        convert_hf_to_gguf(hf, tmp / mmproj_path.name, outtype=outtype, mmproj=True, converter=conv)
        os.replace(tmp / mmproj_path.name, mmproj_path)
        os.replace(tmp / text_path.name, text_path)  # last: its presence means the pair is complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return text_path, mmproj_path
