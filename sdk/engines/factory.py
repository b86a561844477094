"""Pick and build the right engine from one model spec (what ``covip init --model`` stores)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from covip.sdk.errors import EngineError, ExportError, InputError
from covip.sdk.export_manifest import GGUF_QUANT_ORDER, has_manifest, read_manifest
from covip.sdk.models.tiny import resolve_tiny_name

log = logging.getLogger(__name__)

__all__ = ["make_engine", "describe_model_spec", "check_gguf_pair"]



def _gguf_pair(directory: Path) -> tuple[Path, Path | None] | None:
    """(text GGUF, mmproj GGUF or None) found in an export directory, or None when there is no GGUF."""
    ggufs = sorted(directory.glob("*.gguf"))
    if not ggufs:
        return None
    mmproj = [p for p in ggufs if "mmproj" in p.name.lower()]
    text = [p for p in ggufs if p not in mmproj]
    if not text:
        raise InputError(f"{directory} holds only mmproj GGUFs; the text model GGUF is missing")
    # prefer the least quantized file when several exist (the export manifest's order)
    order = GGUF_QUANT_ORDER
    text.sort(key=lambda p: next((n for n, q in enumerate(order) if q in p.name.lower()), len(order)))
    return text[0], (mmproj[0] if mmproj else None)


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_strings(path: Path, wanted: set[str]) -> dict[str, str]:
    """String metadata ``wanted`` from a GGUF header (pure Python; stops once all are found)."""
    import struct

    found: dict[str, str] = {}
    try:
        with path.open("rb") as f:
            def read(fmt: str) -> Any:
                size = struct.calcsize(fmt)
                data = f.read(size)
                if len(data) != size:
                    raise EOFError
                return struct.unpack(fmt, data)[0]

            def read_str() -> bytes:
                return f.read(read("<Q"))

            def skip(vtype: int) -> None:
                if vtype in _GGUF_SCALARS:
                    f.seek(struct.calcsize(_GGUF_SCALARS[vtype]), 1)
                elif vtype == 8:
                    f.seek(read("<Q"), 1)
                elif vtype == 9:
                    etype, n = read("<I"), read("<Q")
                    if etype in _GGUF_SCALARS:
                        f.seek(n * struct.calcsize(_GGUF_SCALARS[etype]), 1)
                    else:
                        for _ in range(n):
                            skip(etype)
                else:
                    raise ValueError(f"unknown GGUF value type {vtype}")

            if f.read(4) != b"GGUF" or read("<I") < 2:
                return found
            read("<Q")
            n_kv = read("<Q")
            for _ in range(min(n_kv, 1 << 20)):
                key = read_str().decode("utf-8", "replace")
                vtype = read("<I")
                if vtype == 8 and key in wanted:
                    found[key] = read_str().decode("utf-8", "replace")
                    if len(found) == len(wanted):
                        break
                else:
                    skip(vtype)
    except (OSError, EOFError, ValueError, struct.error):
        pass  # a damaged file: llama.cpp says so when it loads it
    return found


# text architecture (general.architecture) -> projector types (clip.projector_type) that belong to it
_PROJECTORS = {"qwen3vl": ("qwen3vl",), "qwen3vlmoe": ("qwen3vl",), "qwen2vl": ("qwen2vl", "qwen2.5vl")}


def check_gguf_pair(model_path: str | Path, mmproj_path: str | Path | None) -> None:
    """Raise :class:`EngineError` when an mmproj GGUF clearly belongs to another model than the text GGUF
    (another architecture's projector: libmtmd would load it and answer garbage when the widths agree)."""
    if mmproj_path is None:
        return
    text = _gguf_strings(Path(model_path), {"general.architecture", "general.name"})
    proj = _gguf_strings(Path(mmproj_path), {"clip.projector_type", "general.name"})
    arch, ptype = text.get("general.architecture"), proj.get("clip.projector_type")
    if not arch or not ptype or arch not in _PROJECTORS:
        return
    if not any(ptype.startswith(prefix) for prefix in _PROJECTORS[arch]):
        raise EngineError(
            f"the mmproj '{mmproj_path}' is a {ptype} projector ({proj.get('general.name', '?')}) but the text "
            f"model '{model_path}' is {arch} ({text.get('general.name', '?')}): they come from different "
            "models; use the mmproj converted from this model (covip export gguf writes both)")


def describe_model_spec(spec: str) -> str:
    """Which back end a spec selects: 'tiny', 'llama.cpp', 'onnx' or 'transformers'.

    An export directory (``covip_export.json``) selects by its manifest; a directory of bare GGUFs or a
    ``.gguf`` file selects llama.cpp."""
    if resolve_tiny_name(spec) is not None and not Path(spec).expanduser().exists():
        return "tiny"
    path = Path(spec).expanduser()
    if path.is_dir() and has_manifest(path):
        try:
            kind = read_manifest(path, verify="none").kind
        except ExportError:
            return "llama.cpp" if any(path.glob("*.gguf")) else "export"
        return {"gguf": "llama.cpp", "onnx": "onnx"}.get(kind, "export")
    if path.suffix == ".gguf" or (path.is_dir() and any(path.glob("*.gguf"))):
        return "llama.cpp"
    return "transformers"


def _engine_from_export(directory: Path, options: dict[str, Any]) -> Any:
    """Open an export directory by its manifest: GGUF text (``quant=``, default the most faithful) + mmproj
    (``mmproj_quant=``) -> LlamaCppEngine; ONNX graphs -> OnnxEngine. ``verify=`` "auto" (default: a file
    opened is hashed unless its size and modification time are the ones recorded when it was exported),
    "sha256" (always hashed), "size" or "none"."""
    quant = options.pop("quant", None)
    mmproj_quant = options.pop("mmproj_quant", None)
    verify = options.pop("verify", "auto")
    if verify not in ("auto", "sha256", "size", "none", True, False):
        raise InputError(f"verify must be 'auto', 'sha256', 'size' or 'none', not {verify!r}")
    verify = {True: "sha256", False: "none"}.get(verify, verify)
    manifest = read_manifest(directory, verify="none" if verify == "none" else "size")
    kind = manifest.kind
    if kind == "gguf":
        text = manifest.gguf_text(quant)
        mmproj = manifest.gguf_mmproj(mmproj_quant)
        chosen = [text] + ([mmproj] if mmproj is not None else [])
    elif kind == "onnx":
        if quant is not None:
            options["quant"] = quant  # the ONNX engine picks among its own graphs
        chosen = [f for f in manifest.files if f.kind.startswith("onnx-")]
    else:
        raise ExportError(f"{directory}: the manifest lists no model files")
    if verify in ("sha256", "auto"):
        from covip.sdk.export_manifest import sha256_file

        for f in chosen:
            if verify == "auto" and f.unchanged(manifest.path_of(f)):
                continue  # as exported: same size and modification time
            if sha256_file(manifest.path_of(f)) != f.sha256:
                raise ExportError(f"{directory}: file {f.path!r} does not match the sha256 in its manifest "
                                  "(corrupted or replaced); re-run the export")
    if manifest.llama_cpp_version and kind == "gguf":
        _warn_llama_version(manifest.llama_cpp_version)
    if kind == "gguf":
        options.setdefault("meaningless", manifest.meaningless)
        for key, value in (manifest.vision or {}).items():
            options.setdefault(key, value)  # the processor's image-token limits, recorded at export
        from covip.sdk.engines.llamacpp import LlamaCppEngine, LlamaCppEngineConfig

        mm = manifest.path_of(mmproj) if mmproj is not None else None
        check_gguf_pair(manifest.path_of(text), mm)
        return LlamaCppEngine(LlamaCppEngineConfig(model_path=str(manifest.path_of(text)),
                                                   mmproj_path=str(mm) if mm else None, **options))
    try:
        from covip.sdk.engines.onnx import OnnxEngine, OnnxEngineConfig
    except ImportError as exc:
        raise EngineError(f"{directory} is an ONNX export, but this covip has no ONNX engine ({exc}); "
                          "install covip[onnx]") from exc
    return OnnxEngine(OnnxEngineConfig(export_dir=str(directory), **options))


def _warn_llama_version(exported_with: str) -> None:
    try:
        import importlib.metadata

        installed = importlib.metadata.version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - only a warning
        return
    if installed != exported_with:
        log.warning("this export was converted with llama-cpp-python %s, the installed one is %s; if loading "
                    "fails, re-export or install the matching version", exported_with, installed)


def make_engine(spec: str, **options: Any) -> Any:
    """Build an engine: ``tiny`` (a random tiny Qwen3-VL via transformers), an export directory written by
    ``covip export gguf``/``onnx`` (opened by its manifest ``covip_export.json``; options ``quant=``,
    ``mmproj_quant=``, ``verify=``), a ``.gguf`` file or a directory with GGUF + mmproj files (llama.cpp),
    or a Hugging Face hub id / local HF directory (transformers)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("model spec is empty; use 'tiny', a hub id, a local HF dir or a GGUF export dir")
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir() and has_manifest(path):
        return _engine_from_export(path, dict(options))
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
        check_gguf_pair(model_path, mmproj)
        return LlamaCppEngine(LlamaCppEngineConfig(model_path=str(model_path),
                                                   mmproj_path=str(mmproj) if mmproj else None, **options))
    from covip.sdk.engines.transformers import TransformersEngine, TransformersEngineConfig

    return TransformersEngine(TransformersEngineConfig(model=spec, **options))
