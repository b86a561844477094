"""covip.export: LoRA merge, GGUF (and ONNX) export, quantization, manifests and parity checks.

Heavy dependencies (torch, transformers, peft, llama-cpp-python) load only when a function runs; the names
below are imported lazily from their modules::

    from covip.export import export_gguf, verify_export
    result = export_gguf("runs/tiny", "exports/tiny", quants="f16,q8_0")
    print(result.verify.summary())

Modules: :mod:`~covip.export.merge` (checkpoint/adapter -> merged HF dir), :mod:`~covip.export.converter`
(llama.cpp's converter from the llama-cpp-python sdist), :mod:`~covip.export.gguf` (convert + quantize +
manifest), :mod:`~covip.export.manifest` (``covip_export.json``), :mod:`~covip.export.verify` (parity),
:mod:`~covip.export.cli` (``covip export``).
"""

from __future__ import annotations

from covip.sdk.support import lazy_exports

_LAZY = {
    "export_gguf": "covip.export.gguf",
    "GgufExportResult": "covip.export.gguf",
    "verify_export": "covip.export.verify",
    "register_verifier": "covip.export.verify",
    "VerifyReport": "covip.export.verify",
    "resolve_checkpoint": "covip.export.merge",
    "merge_lora": "covip.export.merge",
    "converter_dir": "covip.export.converter",
    "ExportManifest": "covip.export.manifest",
    "new_manifest": "covip.export.manifest",
    "add_files": "covip.export.manifest",
    "write_manifest": "covip.export.manifest",
    "read_manifest": "covip.export.manifest",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
