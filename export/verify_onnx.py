"""The ONNX verifier of ``covip export verify`` (registered by :mod:`covip.export.onnx` on import).

For each decoder quantization in the export (fp32, int8, int4) an :class:`~covip.sdk.engines.onnx.OnnxEngine`
opens the export with that quant (vision / embedding graphs of the same quant, else fp32) and runs the HF
reference's prompts *teacher-forced*: its own chat template, tokenizer, numpy preprocessing and RoPE
positions, then the HF greedy tokens one by one. :func:`covip.export.verify.check_case` compares the prompt
ids and the logits at every position, so fp32 parity means: same prompt ids, and arg-max equal to the HF
token everywhere (= the same greedy tokens), with the logit max-abs-diff reported.

Both sides see the same pixels: the image prompt's picture is made at the export's fixed image size, and the
HF processor is told not to resize it (:func:`covip.export.verify.hf_reference`). When the reference was
made with another image size (``covip export verify`` picks 3 x patch x merge), the image prompts are run
on HF again at the export's size. The numpy preprocessing is also compared with the HF image processor's
``pixel_values`` for that image: any difference fails the fp32 check.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from covip.sdk.errors import CovipError, ExportError

__all__ = ["onnx_cases", "verify_onnx", "check_preprocessing"]

log = logging.getLogger(__name__)

PIXEL_TOLERANCE = 1e-6
LOGIT_NOTE_THRESHOLD = 1e-3


def onnx_cases(model_dir: str | os.PathLike[str], image_size: int) -> list[Any]:
    """The verification prompts (:func:`covip.export.verify.default_cases`) with the image made at
    ``image_size`` (the export's fixed size)."""
    from covip.export.verify import PromptCase, default_cases, test_image

    out = []
    for case in default_cases(model_dir):
        if case.image is not None:
            case = PromptCase(case.name, case.text, test_image(image_size))
        out.append(case)
    return out


def check_preprocessing(model_dir: str | os.PathLike[str], spec: Any, image: Any) -> float:
    """Max |numpy pixel_values - HF processor pixel_values| for ``image`` at the export's fixed size."""
    import numpy as np

    from covip.sdk.support import preprocess_image, require, set_pixels

    tf = require("transformers", feature="export verification", extra="export")
    processor = tf.AutoProcessor.from_pretrained(str(model_dir))
    ip = processor.image_processor
    n = spec.height * spec.width
    set_pixels(ip, n, n)
    out = ip(images=[image], return_tensors="pt")
    theirs = out["pixel_values"].float().numpy()
    grid = [int(x) for x in out["image_grid_thw"].reshape(-1).tolist()]
    ours = preprocess_image(image, spec)
    if grid != list(spec.grid) or theirs.shape != ours.shape:
        raise ExportError(f"the HF processor made grid {grid} / {theirs.shape} for a {spec.width}x{spec.height} "
                          f"image, the export expects {list(spec.grid)} / {ours.shape}")
    return float(np.max(np.abs(theirs - ours)))


def _reference_at_size(ref: Any, size: int) -> list[Any]:
    """ref.cases with every image case at ``size`` x ``size`` (re-running HF for those that are not)."""
    from covip.export.verify import PromptCase, hf_reference, test_image

    redo = [c for c in ref.cases if c.case.image is not None and c.case.image.size != (size, size)]
    if not redo:
        return list(ref.cases)
    log.info("re-running the HF reference's image prompts at the export's image size %dx%d", size, size)
    fresh = hf_reference(ref.model_dir, cases=[PromptCase(c.case.name, c.case.text, test_image(size))
                                               for c in redo], max_new_tokens=ref.max_new_tokens)
    by_name = {c.case.name: c for c in fresh.cases}
    return [by_name.get(c.case.name, c) if any(c is r for r in redo) else c for c in ref.cases]


def _graph_bytes(manifest: Any, path: str) -> int:
    """Bytes of a graph plus its external-data file (``<name>.data``) when it has one."""
    return sum(f.bytes for f in manifest.files if f.path in (path, path + ".data"))


def _ratio(manifest: Any, entry: Any) -> float | None:
    """Size of a quantized decoder against the fp32 one (None for the fp32 decoder itself)."""
    if entry.quant == "fp32":
        return None
    base = [f for f in manifest.files_of(entry.kind) if f.quant == "fp32" and f.path.endswith(".onnx")]
    return _graph_bytes(manifest, entry.path) / _graph_bytes(manifest, base[0].path) if base else None


def verify_onnx(manifest: Any, ref: Any, opts: Any) -> list[Any]:
    """One :class:`~covip.export.verify.FileCheck` per decoder graph of the export (see the module doc)."""
    from covip.export.verify import FileCheck, check_case
    from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig
    from covip.sdk.support import ImageSpec

    section = manifest.onnx or {}
    spec = ImageSpec.from_dict(section["image"]) if section.get("image") else None
    cases = _reference_at_size(ref, spec.width) if spec is not None else list(ref.cases)
    pixel_diff: float | None = None
    pixel_error: str | None = None
    if spec is not None:
        image = next((c.case.image for c in cases if c.case.image is not None), None)
        if image is not None:
            try:
                pixel_diff = check_preprocessing(ref.model_dir, spec, image)
            except (CovipError, OSError, ValueError) as exc:
                pixel_error = f"preprocessing check failed: {exc}"
            if pixel_diff is not None and pixel_diff > PIXEL_TOLERANCE:
                pixel_error = (f"the numpy image preprocessing differs from the HF processor by up to "
                               f"{pixel_diff:.3g}")
    checks: list[Any] = []
    for entry in manifest.files_of("onnx-decoder"):
        if not entry.path.endswith(".onnx") or (opts.quants and entry.quant not in opts.quants):
            continue
        fc = FileCheck(path=entry.path, kind=entry.kind, quant=entry.quant, bytes=_graph_bytes(manifest, entry.path),
                       size_ratio=_ratio(manifest, entry), min_top1=opts.min_top1)
        try:
            cfg = OnnxEngineConfig(export_dir=Path(manifest.directory), quant=entry.quant, provider="cpu",
                                   verify="none")
            with OnnxEngine(cfg) as engine:
                companions = [v for k, v in engine.files.items() if k != "decoder"]
                fc.companion = ", ".join(companions) or None
                for case in cases:
                    if case.case.image is not None and not engine.multimodal:
                        continue
                    prompt, logits = engine._teacher_forced(case.case.messages(), case.tokens)
                    note = ""
                    if case.case.image is not None and pixel_diff is not None:
                        note = f"pixel_values max diff vs HF {pixel_diff:.3g}"
                    res = check_case(case, logits, prompt, note=note)
                    if entry.quant == "fp32" and res.max_abs_diff > LOGIT_NOTE_THRESHOLD:
                        res.note = (res.note + "; " if res.note else "") + \
                            f"logits differ by {res.max_abs_diff:.3g} (> {LOGIT_NOTE_THRESHOLD:g})"
                    fc.cases.append(res)
            if entry.quant == "fp32" and pixel_error:
                fc.error = pixel_error
        except CovipError as exc:
            fc.error = str(exc)
        checks.append(fc)
    return checks
