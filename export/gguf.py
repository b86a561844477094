"""``covip export gguf``: a tuned VLM -> GGUF text model (one file per quant) + mmproj, with a manifest.

Pipeline (:func:`export_gguf`):

1. resolve the input to one merged HF checkpoint (:mod:`covip.export.merge`: LoRA merged with peft's
   ``merge_and_unload`` when given an adapter or a GSPO run directory);
2. convert the text model (``--outtype`` f32 or f16: the base the quants are made from) and the vision
   projector (``--mmproj-type`` f32, f16 or q8_0) with llama.cpp's own converter of the installed
   llama-cpp-python (:mod:`covip.export.converter`);
3. quantize the text GGUF from Python with llama-cpp-python's ``llama_model_quantize`` binding: f16, q8_0,
   q4_0, q4_k_m. k-quants pack rows in super-blocks of 256 values; a tensor whose row size is not a multiple
   of 256 falls back to another type (q5_0/q8_0), so on models where most rows are like that (the tiny
   models: hidden size 64) q4_k_m would not be q4_k_m at all: it is skipped, and the result says why;
4. write ``covip_export.json`` (:mod:`covip.export.manifest`) with hashes of every file;
5. verify (:mod:`covip.export.verify`): greedy tokens of the f32/f16 text GGUF equal the HF model's for
   a text-only and an image prompt, and quantized files' top-1 agreement. A failed parity check raises
   :class:`~covip.sdk.errors.ExportError` and leaves no output directory.

Everything is built in a temporary sibling of the output directory and renamed into place at the end.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError

__all__ = [
    "image_token_limits",
    "GGUF_QUANTS",
    "MMPROJ_TYPES",
    "GgufExportResult",
    "export_gguf",
    "quantize_gguf",
    "kquant_incompatibility",
    "parse_quants",
]

log = logging.getLogger(__name__)

#: quant name -> llama_ftype of llama.cpp (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_M)
GGUF_QUANTS: dict[str, int] = {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
MMPROJ_TYPES = ("f32", "f16", "q8_0")
KQUANTS = ("q4_k_m",)
QK_K = 256
#: skip a k-quant when at least this share of the weight tensors would fall back to another type
KQUANT_SKIP_SHARE = 0.5


@dataclass
class GgufExportResult:
    """What :func:`export_gguf` wrote: the directory, its manifest, skipped quants and the verify report."""

    out_dir: Path
    manifest: Any  # covip.sdk.export_manifest.ExportManifest
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verify: Any = None  # covip.export.verify.VerifyReport or None

    def to_dict(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "manifest": self.manifest.to_dict(), "skipped": self.skipped,
                "notes": self.notes, "verify": self.verify.to_dict() if self.verify is not None else None}


def parse_quants(quants: str | Iterable[str]) -> list[str]:
    """``"f16,q8_0"`` or a list -> validated, de-duplicated, lower-case quant names."""
    items = quants.split(",") if isinstance(quants, str) else list(quants)
    out: list[str] = []
    for q in items:
        q = q.strip().lower().replace("-", "_")
        if not q:
            continue
        if q not in GGUF_QUANTS:
            raise ExportError(f"unknown GGUF quant {q!r}; choose from {', '.join(GGUF_QUANTS)}")
        if q not in out:
            out.append(q)
    if not out:
        raise ExportError(f"no GGUF quant given; choose from {', '.join(GGUF_QUANTS)}")
    return out


def kquant_incompatibility(gguf_path: str | os.PathLike[str]) -> tuple[int, int, list[str]]:
    """(weight tensors whose row size is not a multiple of 256, weight tensors, a few of their names+sizes).

    Those are the tensors a k-quant (q4_k_m, ...) cannot use and llama.cpp quantizes with a fallback type."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    bad, total, examples = 0, 0, []
    for t in reader.tensors:
        if len(t.shape) < 2 or not t.name.endswith(".weight"):
            continue
        total += 1
        row = int(t.shape[0])
        if row % QK_K:
            bad += 1
            if len(examples) < 3:
                examples.append(f"{t.name} (row {row})")
    return bad, total, examples


def quantize_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str], quant: str, *,
                  nthread: int | None = None) -> Path:
    """Quantize a text GGUF with llama.cpp's ``llama_model_quantize`` (native log routed to logging)."""
    from covip.sdk.support import error_mark, last_native_error, native_lib

    if quant not in GGUF_QUANTS:
        raise ExportError(f"unknown GGUF quant {quant!r}; choose from {', '.join(GGUF_QUANTS)}")
    llama, _ = native_lib()
    params = llama.llama_model_quantize_default_params()
    params.ftype = GGUF_QUANTS[quant]
    params.nthread = nthread or max(1, (os.cpu_count() or 2))
    mark = error_mark()
    rc = llama.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0 or not Path(dst).is_file():
        raise ExportError(f"llama.cpp could not quantize {src} to {quant} (code {rc}: "
                          f"{last_native_error(mark) or 'no reason given'})")
    return Path(dst)


def image_token_limits(model_dir: str | os.PathLike[str]) -> dict[str, int] | None:
    """The image-token limits of a Qwen-VL checkpoint's processor, ``{"image_min_tokens", "image_max_tokens"}``:
    its min/max pixels over the area of one merged token ((patch x merge)^2). libmtmd applies its own
    limits to Qwen-VL (at least 8 tokens), so without these a small photo reaches the GGUF model in a
    layout the model never saw. None when the checkpoint has no such processor config."""
    from covip.export.merge import read_pixel_limits
    from covip.sdk.export_manifest import MAX_IMAGE_TOKENS

    px = read_pixel_limits(model_dir)
    if px is None:
        return None
    area = px.factor ** 2
    out = {}
    if px.min_pixels:  # each clamped into 1..MAX_IMAGE_TOKENS first, then min <= max
        out["image_min_tokens"] = min(MAX_IMAGE_TOKENS, max(1, px.min_pixels // area))
    if px.max_pixels:
        out["image_max_tokens"] = min(MAX_IMAGE_TOKENS, max(1, px.max_pixels // area))
    if len(out) == 2 and out["image_min_tokens"] > out["image_max_tokens"]:
        out["image_max_tokens"] = out["image_min_tokens"]  # a processor keeps at least min_pixels
    return out or None


def _gguf_model_name(ck: Any) -> str | None:
    if ck.tiny is not None:
        name = str(ck.tiny.get("name", "tiny"))
        return name if name.startswith("covip-") else f"covip-{name}"
    p = Path(str(ck.source.get("run_dir") or ck.source.get("model") or ck.path))
    if p.name in ("merged", "adapter", "hub") and p.parent.name:
        p = p.parent
    return p.name or None


def _progress(total: int, enabled: bool) -> Any:
    from covip.sdk.progress import progress_bar

    return progress_bar(total=total, desc="covip export gguf", unit="step", enabled=bool(enabled), leave=False)


def export_gguf(model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                quants: str | Sequence[str] = ("f16", "q8_0"), outtype: str | None = None,
                mmproj_type: str = "f16", base: str | None = None,
                converter: str | os.PathLike[str] | None = None, verify: bool = True,
                verify_tokens: int = 16, overwrite: bool = False, progress: bool = True) -> GgufExportResult:
    """Export ``model`` (merged checkpoint, LoRA adapter, GSPO run dir, 'tiny', hub id) to ``out``.

    ``quants``: text GGUF quants to keep (f32, f16, q8_0, q4_0, q4_k_m). ``outtype``: what the converter
    writes and the quants are made from (f32 or f16; default f32, or f16 when f32 is not wanted and the
    model is large: set it explicitly to save disk). ``mmproj_type``: f32, f16 or q8_0. ``verify``: run the
    parity checks (raises :class:`ExportError` when f32/f16 parity fails; nothing is written then).
    """
    from covip.export.converter import convert_hf_to_gguf, converter_dir, llama_cpp_version
    from covip.export.manifest import add_files, new_manifest, publish_export, write_manifest
    from covip.export.merge import read_chat_template, resolve_checkpoint

    wanted = parse_quants(quants)
    outtype = (outtype or "f32").lower()
    if outtype not in ("f32", "f16"):
        raise ExportError(f"--outtype must be f32 or f16, not {outtype!r}")
    if outtype == "f16" and "f32" in wanted:
        raise ExportError("an f32 GGUF cannot be made from an f16 conversion; use --outtype f32")
    mmproj_type = mmproj_type.lower()
    if mmproj_type not in MMPROJ_TYPES:
        raise ExportError(f"--mmproj-type must be one of {', '.join(MMPROJ_TYPES)}, not {mmproj_type!r}")
    dest = Path(out).expanduser().absolute()
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())) and not overwrite:
        raise ExportError(f"{dest} exists and is not empty; pass --overwrite or choose another --out")

    conv = converter_dir(converter)  # fail early (offline, no cache) before any heavy work
    version = llama_cpp_version()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    result: GgufExportResult | None = None
    bar = _progress(3 + len(wanted) + (1 if verify else 0), progress)
    try:
        stage = work / "out"
        stage.mkdir()
        bar.set_postfix_str("resolving / merging the checkpoint")
        ck = resolve_checkpoint(model, base=base, work_dir=work / "merge")
        bar.update(1)
        name = _gguf_model_name(ck)

        base_rel = f"model-{outtype}.gguf"
        mm_rel = f"mmproj-{mmproj_type}.gguf"
        bar.set_postfix_str(f"converting the text model ({outtype}) and the vision projector ({mmproj_type})")
        with ThreadPoolExecutor(max_workers=2) as pool:  # two converter processes side by side
            jobs = [pool.submit(convert_hf_to_gguf, ck.path, stage / base_rel, outtype=outtype, model_name=name,
                                converter=conv),
                    pool.submit(convert_hf_to_gguf, ck.path, stage / mm_rel, outtype=mmproj_type, mmproj=True,
                                model_name=name, converter=conv)]
            for job in jobs:
                job.result()
                bar.update(1)

        skipped: dict[str, str] = {}
        notes: list[str] = []
        entries = [(base_rel, "gguf-text", outtype), (mm_rel, "gguf-mmproj", mmproj_type)]
        for q in wanted:
            bar.set_postfix_str(f"quantizing to {q}")
            if q == outtype:
                bar.update(1)
                continue
            if q in KQUANTS:
                bad, total, examples = kquant_incompatibility(stage / base_rel)
                if total and bad / total >= KQUANT_SKIP_SHARE:
                    skipped[q] = (f"{bad} of {total} weight tensors have a row size that is not a multiple of "
                                  f"{QK_K} (e.g. {', '.join(examples)}), so llama.cpp would quantize them with "
                                  f"fallback types and the file would not be {q}; use q4_0 or q8_0 for this model")
                    log.warning("skipping %s: %s", q, skipped[q])
                    bar.update(1)
                    continue
                if bad:
                    notes.append(f"{q}: {bad} of {total} weight tensors (e.g. {', '.join(examples)}) use a "
                                 "fallback type (row size not a multiple of 256)")
            rel = f"model-{q}.gguf"
            quantize_gguf(stage / base_rel, stage / rel, q)
            entries.append((rel, "gguf-text", q))
            bar.update(1)

        if ck.tiny is not None:
            import json

            (stage / "covip_tiny.json").write_text(json.dumps(ck.tiny, indent=2, sort_keys=True) + "\n")
        source = dict(ck.source)
        source["model"] = str(model) if not Path(os.fspath(model)).exists() else str(
            Path(os.fspath(model)).expanduser().absolute())
        manifest = new_manifest(source=source, chat_template=read_chat_template(ck.path),
                                meaningless=ck.meaningless, llama_cpp_version=version,
                                vision=image_token_limits(ck.path))
        add_files(manifest, stage, entries)
        write_manifest(stage, manifest)

        report = None
        if verify:
            from covip.export.verify import verify_export

            bar.set_postfix_str("verifying parity with the HF model")
            report = verify_export(stage, ck.path, max_new_tokens=verify_tokens, progress=False)
            bar.update(1)
            if not report.parity_ok:
                raise ExportError("GGUF parity check failed; nothing was written to "
                                  f"{dest}:\n{report.summary()}")
            if not report.passed:
                log.warning("quantized GGUFs agree poorly with the HF model:\n%s", report.summary())

        if outtype not in wanted:  # the conversion base was only the source of the quants (and the check)
            (stage / base_rel).unlink()
            manifest.files = [f for f in manifest.files if f.path != base_rel]
            write_manifest(stage, manifest)
            for fc in report.files if report is not None else []:
                if fc.path == base_rel:
                    fc.path = f"{base_rel} (conversion base, not kept)"

        publish_export(stage, dest, work, manifest, report)
        result = GgufExportResult(out_dir=dest, manifest=manifest, skipped=skipped, notes=notes, verify=report)
        return result
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
