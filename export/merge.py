"""Turn what training produced into the one HF checkpoint directory the converters read.

:func:`resolve_checkpoint` accepts

* a merged HF checkpoint directory (``config.json`` + weights + processor): used as is;
* a LoRA adapter directory (``adapter_config.json``): merged into its base (``--base``, else the adapter's
  ``base_model_name_or_path``) with peft's ``merge_and_unload``;
* a GSPO run directory (``covip train gspo --output DIR``): its ``merged/`` checkpoint, else its
  ``adapter/`` merged as above;
* ``tiny`` / ``tiny-qwen3-vl`` / ``tiny-qwen2.5-vl``: the built-in tiny random-weight models;
* a Hugging Face hub id (downloaded or reachable): loaded and saved locally.

A merged checkpoint gets the processor (tokenizer, image processor, chat template) of the adapter
directory when it has one, else of the base; a tiny base's ``covip_tiny.json`` marker goes with it, so
everything downstream knows the weights are random.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError

__all__ = ["ResolvedCheckpoint", "resolve_checkpoint", "merge_lora", "read_chat_template", "read_pixel_limits",
           "PixelLimits", "TINY_MARKER"]

log = logging.getLogger(__name__)

TINY_MARKER = "covip_tiny.json"


@dataclass
class ResolvedCheckpoint:
    """A local HF checkpoint directory ready for conversion, and where it came from."""

    path: Path
    source: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] | None = None  # the covip_tiny.json marker, when the weights are random
    temporary: bool = False  # path lives in a work directory the caller cleans up

    @property
    def meaningless(self) -> bool:
        return self.tiny is not None and bool(self.tiny.get("meaningless", True))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_checkpoint(d: Path) -> bool:
    return (d / "config.json").is_file() and (any(d.glob("*.safetensors")) or any(d.glob("*.bin")))


def read_chat_template(model_dir: str | os.PathLike[str]) -> str | None:
    """The chat template saved with a checkpoint (``chat_template.jinja``/``.json``, else the tokenizer's)."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    data = _read_json(d / "chat_template.json")
    if data and isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    data = _read_json(d / "processor_config.json")
    if data and isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    data = _read_json(d / "tokenizer_config.json")
    if data and isinstance(data.get("chat_template"), str):
        return data["chat_template"]
    return None


@dataclass(frozen=True)
class PixelLimits:
    """A Qwen-VL image processor's photo size limits: ``min_pixels``/``max_pixels`` (None when unset) and the
    side of one merged image token, ``factor`` = patch x merge (a photo of N pixels gives N / factor^2 tokens)."""

    min_pixels: int | None
    max_pixels: int | None
    factor: int


def read_pixel_limits(model_dir: str | os.PathLike[str]) -> PixelLimits | None:
    """The image processor's limits saved with a checkpoint (``processor_config.json``'s ``image_processor``, else
    ``preprocessor_config.json``; ``size.shortest_edge``/``longest_edge`` are pixel counts in Qwen-VL's
    processors, as ``min_pixels``/``max_pixels`` are). None when there is no such config or it is unreadable."""
    d = Path(model_dir)
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        data = _read_json(d / name)
        data = data.get(key) if key and data else data
        if not isinstance(data, dict) or "patch_size" not in data:
            continue
        size = data.get("size") if isinstance(data.get("size"), dict) else {}
        lo = size.get("shortest_edge") or size.get("min_pixels") or data.get("min_pixels")  # older processors:
        hi = size.get("longest_edge") or size.get("max_pixels") or data.get("max_pixels")  # size.min/max_pixels
        try:
            factor = int(data["patch_size"]) * int(data.get("merge_size", 2))
            limits = PixelLimits(int(lo) if lo else None, int(hi) if hi else None, factor)
        except (TypeError, ValueError):
            log.warning("%s: unreadable image processor limits %r", d / name, data)
            return None
        if factor < 1 or any(v is not None and v < 1 for v in (limits.min_pixels, limits.max_pixels)):
            log.warning("%s: image processor limits out of range %r", d / name, data)
            return None
        return limits
    return None


def _model_info(d: Path) -> dict[str, Any]:
    cfg = _read_json(d / "config.json") or {}
    return {"architecture": (cfg.get("architectures") or [None])[0], "model_type": cfg.get("model_type")}


def _resolve_base(base: str, *, what: str) -> tuple[str, Path | None]:
    """(from_pretrained source, local directory or None) for a base given as a path, tiny name or hub id."""
    from covip.sdk.models.tiny import build_tiny_vlm, resolve_tiny_name

    p = Path(base).expanduser()
    if p.is_dir():
        return str(p), p
    if resolve_tiny_name(base) is not None:
        built = build_tiny_vlm(resolve_tiny_name(base))
        return str(built), built
    if p.is_absolute() or base.startswith((".", "~")):
        raise ExportError(f"the base model of {what} is {base!r}, which does not exist here; pass --base with "
                          "the base model's directory or hub id")
    return base, None


def merge_lora(adapter_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, base: str | None = None,
               dtype: str = "auto") -> ResolvedCheckpoint:
    """Merge a peft LoRA adapter into its base with ``merge_and_unload`` and ``save_pretrained`` the result
    (model + processor + chat template) into ``out_dir``.

    ``base``: the base model (directory, tiny name or hub id); None reads ``base_model_name_or_path`` from
    ``adapter_config.json``. ``dtype``: the saved dtype, ``auto`` = the base's (the merge itself runs in
    float32).
    """
    from covip.sdk.support import require

    torch = require("torch", feature="LoRA merge", extra="export")
    tf = require("transformers", feature="LoRA merge", extra="export")
    peft = require("peft", feature="LoRA merge", extra="train")
    adapter = Path(adapter_dir).expanduser()
    acfg = _read_json(adapter / "adapter_config.json")
    if acfg is None:
        raise ExportError(f"{adapter} is not a peft adapter directory (adapter_config.json missing or unreadable)")
    base_name = base or acfg.get("base_model_name_or_path")
    if not base_name:
        raise ExportError(f"{adapter}/adapter_config.json names no base model; pass --base")
    source, base_dir = _resolve_base(str(base_name), what=f"the adapter {adapter}")
    out = Path(out_dir)
    log.info("merging LoRA adapter %s into %s", adapter, source)
    from covip.sdk.support import quiet_progress

    try:
        with quiet_progress(tf):
            model = tf.AutoModelForImageTextToText.from_pretrained(source, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot load the base model {source!r} of {adapter} ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); pass --base") from exc
    saved_dtype = getattr(model.config, "dtype", None) or getattr(model.config, "torch_dtype", None)
    try:
        merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ExportError(f"cannot apply the adapter {adapter} to {source!r} ({type(exc).__name__}: "
                          f"{str(exc)[:300]}); is it the adapter of this base?") from exc
    if dtype != "float32":
        target = saved_dtype if dtype == "auto" else dtype
        if isinstance(target, str):
            target = getattr(torch, target.replace("torch.", ""), None)
        if isinstance(target, torch.dtype) and target != torch.float32:
            merged = merged.to(target)
    merged.config.use_cache = True
    proc_src = str(adapter) if (adapter / "tokenizer_config.json").is_file() else source
    try:
        processor = tf.AutoProcessor.from_pretrained(proc_src)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"cannot load the processor of {proc_src!r} ({exc}); the export needs the "
                          "tokenizer and chat template") from exc
    out.mkdir(parents=True, exist_ok=True)
    with quiet_progress(tf):
        merged.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    if read_chat_template(out) is None and getattr(processor, "chat_template", None):
        (out / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    tiny = _carry_tiny_marker(base_dir, out, suffix="merged")
    src = {"model": str(adapter), "adapter": str(adapter), "base": str(base_name), "merged": True,
           **_model_info(out)}
    return ResolvedCheckpoint(path=out, source=src, tiny=tiny)


def _carry_tiny_marker(base_dir: Path | None, out: Path, *, suffix: str) -> dict[str, Any] | None:
    marker = _read_json(base_dir / TINY_MARKER) if base_dir is not None else None
    if marker is None:
        return None
    digest = hashlib.sha256()
    for weights in sorted(out.glob("*.safetensors")):
        with open(weights, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    name = str(marker.get("name", "tiny"))
    marker = dict(marker, name=name if name.endswith(f"-{suffix}") else f"{name}-{suffix}",
                  build_sha256=digest.hexdigest(), derived_from=marker.get("build_sha256"),
                  note="A tiny random-weight model with a LoRA adapter merged in: everything it writes is "
                       "meaningless.")
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return marker


def resolve_checkpoint(model: str | os.PathLike[str], *, base: str | None = None,
                       work_dir: str | os.PathLike[str] | None = None) -> ResolvedCheckpoint:
    """A local merged HF checkpoint for ``model`` (see the module docstring for what ``model`` may be).

    Merges (or downloads) into ``work_dir`` (a new temporary directory when None; ``temporary`` is then
    True and the caller removes ``path.parent``)."""
    from covip.sdk.models.tiny import build_tiny_vlm, resolve_tiny_name

    spec = os.fspath(model)
    p = Path(spec).expanduser()

    def _work() -> tuple[Path, bool]:
        if work_dir is not None:
            w = Path(work_dir)
            w.mkdir(parents=True, exist_ok=True)
            return w, False
        return Path(tempfile.mkdtemp(prefix="covip-merge-")), True

    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            w, tmp = _work()
            r = merge_lora(p, w / "merged", base=base)
            r.temporary = tmp
            return r
        if _is_checkpoint(p):
            if base is not None:
                log.warning("--base %s ignored: %s is a full checkpoint, not an adapter", base, p)
            tiny = _read_json(p / TINY_MARKER)
            adapter = p.parent / "adapter" if p.name == "merged" and (p.parent / "adapter").is_dir() else None
            prov = _read_json(p / "covip_gspo.json") or {}
            src = {"model": str(p), "adapter": str(adapter) if adapter else None,
                   "base": prov.get("base_model"), "merged": adapter is not None, **_model_info(p)}
            return ResolvedCheckpoint(path=p, source=src, tiny=tiny)
        if _is_checkpoint(p / "merged"):  # a GSPO run directory
            r = resolve_checkpoint(p / "merged", base=base, work_dir=work_dir)
            r.source["run_dir"] = str(p)
            return r
        if (p / "adapter" / "adapter_config.json").is_file():
            r = resolve_checkpoint(p / "adapter", base=base, work_dir=work_dir)
            r.source["run_dir"] = str(p)
            return r
        raise ExportError(f"{p} is neither an HF checkpoint (config.json + weights), a LoRA adapter "
                          "(adapter_config.json) nor a GSPO run directory (merged/ or adapter/)")
    name = resolve_tiny_name(spec)
    if name is not None:
        built = build_tiny_vlm(name)
        return ResolvedCheckpoint(path=built, source={"model": name, "adapter": None, "base": None,
                                                      "merged": False, **_model_info(built)},
                                  tiny=_read_json(built / TINY_MARKER))
    if p.is_absolute() or spec.startswith((".", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ExportError(f"{spec} does not exist: give an HF checkpoint directory, a LoRA adapter directory, a "
                          "GSPO run directory, 'tiny' or a hub id")
    # a hub id: load and save locally so the converter can read plain files
    from covip.sdk.support import require

    tf = require("transformers", feature="exporting a hub model", extra="export")
    w, tmp = _work()
    out = w / "hub"
    try:
        model_obj = tf.AutoModelForImageTextToText.from_pretrained(spec, dtype="auto")
        processor = tf.AutoProcessor.from_pretrained(spec)
    except (OSError, ValueError, KeyError) as exc:
        if tmp:
            shutil.rmtree(w, ignore_errors=True)
        raise ExportError(f"cannot load {spec!r} ({type(exc).__name__}: {str(exc)[:300]}); give a local "
                          "checkpoint directory or a hub id that is downloaded or reachable") from exc
    model_obj.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return ResolvedCheckpoint(path=out, source={"model": spec, "adapter": None, "base": None, "merged": False,
                                                **_model_info(out)}, temporary=tmp)
