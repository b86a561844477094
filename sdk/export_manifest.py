"""Read the manifest of an export directory (``covip_export.json``) without the export package (no torch).

``covip export gguf`` / ``covip export onnx`` write one manifest per export directory; the SDK opens the
directory by it (:func:`covip.sdk.engines.make_engine`). The JSON::

    {"format": "covip-export", "version": 1,
     "source": {"model": ..., "adapter": ..., "base": ...},
     "covip_version": "0.1.0", "prompt_version": "covip-prompts-1",
     "chat_template": "...", "meaningless": false,
     "llama_cpp_version": "0.3.36",                       # GGUF exports only
     "vision": {"image_min_tokens": 4, "image_max_tokens": 4},  # GGUF: the processor's image-token limits
     "files": [{"path": "model-q8_0.gguf", "kind": "gguf-text", "quant": "q8_0",
                "sha256": "...", "bytes": 12345}, ...],
     "onnx": {...}}                                        # ONNX exports only, free-form

:func:`read_manifest` validates the format and version, that every listed file exists inside the
directory, and (unless ``verify="size"`` / ``"none"``) its sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from covip.sdk.errors import ExportError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "FILE_KINDS",
    "QUANTS",
    "GGUF_QUANT_ORDER",
    "ExportFile",
    "ExportManifest",
    "read_manifest",
    "has_manifest",
    "sha256_file",
    "MAX_IMAGE_TOKENS",
]

MANIFEST_NAME = "covip_export.json"
MANIFEST_FORMAT = "covip-export"
MANIFEST_VERSION = 1
FILE_KINDS = ("gguf-text", "gguf-mmproj", "onnx-vision", "onnx-embed", "onnx-decoder")
QUANTS = ("f32", "f16", "q8_0", "q4_0", "q4_k_m", "fp32", "int8", "int4")
#: GGUF text quants from most to least faithful: the default pick is the first one present.
GGUF_QUANT_ORDER = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")
#: The most image tokens one photo may be given (Qwen-VL's processors allow 16,384; libmtmd's default is 4,096):
#: the bound of a manifest's ``vision`` limits, of what the export records and of the llama.cpp engine's config.
MAX_IMAGE_TOKENS = 65536


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ExportFile:
    """One file of an export directory; ``path`` is relative to the directory."""

    path: str
    kind: str
    quant: str
    sha256: str
    bytes: int
    mtime_ns: int | None = None
    """The file's modification time when it was hashed: an open finds it unchanged by size + mtime and
    skips the hash (None in manifests written before covip recorded it: hashed at every open)."""

    @classmethod
    def from_dict(cls, d: Any, where: str = "") -> ExportFile:
        if not isinstance(d, dict):
            raise ExportError(f"{where}: a 'files' entry is not an object: {d!r}")
        missing = [k for k in ("path", "kind", "quant", "sha256", "bytes") if k not in d]
        if missing:
            raise ExportError(f"{where}: file entry {d.get('path', d)!r} lacks {', '.join(missing)}")
        if d["kind"] not in FILE_KINDS:
            raise ExportError(f"{where}: file {d['path']!r} has unknown kind {d['kind']!r} "
                              f"(known: {', '.join(FILE_KINDS)})")
        if d["quant"] not in QUANTS:
            raise ExportError(f"{where}: file {d['path']!r} has unknown quant {d['quant']!r} "
                              f"(known: {', '.join(QUANTS)})")
        rel = str(d["path"])
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ExportError(f"{where}: file path {rel!r} must be relative and inside the export directory")
        try:
            size = int(d["bytes"])
        except (TypeError, ValueError):
            raise ExportError(f"{where}: file {rel!r} has a bad 'bytes' value {d['bytes']!r}") from None
        mtime = d.get("mtime_ns")
        if mtime is not None and (isinstance(mtime, bool) or not isinstance(mtime, int)):
            raise ExportError(f"{where}: file {rel!r} has a bad 'mtime_ns' value {mtime!r}")
        return cls(path=rel, kind=str(d["kind"]), quant=str(d["quant"]), sha256=str(d["sha256"]), bytes=size,
                   mtime_ns=mtime)

    def unchanged(self, path: Path) -> bool:
        """True when ``path`` has the recorded size and modification time (so its hash need not be checked)."""
        st = path.stat()
        return self.mtime_ns is not None and st.st_size == self.bytes and st.st_mtime_ns == self.mtime_ns


@dataclass
class ExportManifest:
    """The parsed ``covip_export.json``. ``directory`` is where it was read from (not serialized)."""

    source: dict[str, Any] = field(default_factory=dict)
    covip_version: str = ""
    prompt_version: str = ""
    chat_template: str | None = None
    meaningless: bool = False
    files: list[ExportFile] = field(default_factory=list)
    llama_cpp_version: str | None = None
    onnx: dict[str, Any] | None = None
    vision: dict[str, int] | None = None
    """GGUF exports: the image-token limits of the model's processor (``image_min_tokens``,
    ``image_max_tokens``), which the llama.cpp engine gives libmtmd (its Qwen-VL defaults differ)."""
    format: str = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION
    directory: Path | None = field(default=None, compare=False, repr=False)

    # ---- queries -------------------------------------------------------------------------------
    def files_of(self, kind: str) -> list[ExportFile]:
        return [f for f in self.files if f.kind == kind]

    def path_of(self, entry: ExportFile) -> Path:
        if self.directory is None:
            raise ExportError("this manifest was not read from a directory; file paths are unknown")
        return self.directory / entry.path

    @property
    def kind(self) -> str:
        """'gguf' or 'onnx' (what the export holds; GGUF wins when a directory has both)."""
        if self.files_of("gguf-text"):
            return "gguf"
        if any(f.kind.startswith("onnx-") for f in self.files):
            return "onnx"
        return "empty"

    def gguf_quants(self) -> list[str]:
        """Text GGUF quants present, most faithful first."""
        qs = [f.quant for f in self.files_of("gguf-text")]
        return sorted(qs, key=lambda q: GGUF_QUANT_ORDER.index(q) if q in GGUF_QUANT_ORDER else 99)

    def gguf_text(self, quant: str | None = None) -> ExportFile:
        """The text GGUF of ``quant`` (default: the most faithful present)."""
        texts = self.files_of("gguf-text")
        if not texts:
            raise ExportError(f"{self.directory}: the export has no text GGUF")
        if quant is None:
            quant = self.gguf_quants()[0]
        for f in texts:
            if f.quant == quant.lower():
                return f
        raise ExportError(f"{self.directory}: no text GGUF of quant {quant!r}; "
                          f"available: {', '.join(self.gguf_quants())}")

    def gguf_mmproj(self, quant: str | None = None) -> ExportFile | None:
        mm = self.files_of("gguf-mmproj")
        if not mm:
            return None
        if quant is not None:
            for f in mm:
                if f.quant == quant.lower():
                    return f
            raise ExportError(f"{self.directory}: no mmproj GGUF of quant {quant!r}; "
                              f"available: {', '.join(f.quant for f in mm)}")
        order = ("f32", "f16", "q8_0")
        return sorted(mm, key=lambda f: order.index(f.quant) if f.quant in order else 99)[0]

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": self.format,
            "version": self.version,
            "source": dict(self.source),
            "covip_version": self.covip_version,
            "prompt_version": self.prompt_version,
            "chat_template": self.chat_template,
            "meaningless": bool(self.meaningless),
        }
        if self.llama_cpp_version is not None:
            d["llama_cpp_version"] = self.llama_cpp_version
        d["files"] = [asdict(f) for f in self.files]
        if self.onnx is not None:
            d["onnx"] = self.onnx
        if self.vision is not None:
            d["vision"] = dict(self.vision)
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> ExportManifest:
        if not isinstance(d, dict):
            raise ExportError(f"{where}: not a JSON object")
        if d.get("format") != MANIFEST_FORMAT:
            raise ExportError(f"{where}: format is {d.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        version = d.get("version")
        if not isinstance(version, int) or version < 1:
            raise ExportError(f"{where}: bad manifest version {version!r}")
        if version > MANIFEST_VERSION:
            raise ExportError(f"{where}: manifest version {version} is newer than this covip understands "
                              f"({MANIFEST_VERSION}); upgrade covip")
        files = d.get("files")
        if not isinstance(files, list):
            raise ExportError(f"{where}: 'files' is missing or not a list")
        return cls(
            source=dict(d.get("source") or {}),
            covip_version=str(d.get("covip_version", "")),
            prompt_version=str(d.get("prompt_version", "")),
            chat_template=d.get("chat_template"),
            meaningless=bool(d.get("meaningless", False)),
            files=[ExportFile.from_dict(f, where) for f in files],
            llama_cpp_version=d.get("llama_cpp_version"),
            onnx=d.get("onnx"),
            vision=_vision_limits(d.get("vision"), where),
            format=MANIFEST_FORMAT,
            version=version,
        )


def _vision_limits(v: Any, where: str) -> dict[str, int] | None:
    """The manifest's ``vision`` section checked: only positive integer image-token limits, min <= max."""
    if v is None:
        return None
    if not isinstance(v, dict) or set(v) - {"image_min_tokens", "image_max_tokens"}:
        raise ExportError(f"{where}: 'vision' must be an object with image_min_tokens/image_max_tokens, got {v!r}")
    for key, value in v.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_TOKENS:
            raise ExportError(f"{where}: vision.{key} must be an integer from 1 to {MAX_IMAGE_TOKENS:,}, got {value!r}")
    lo, hi = v.get("image_min_tokens"), v.get("image_max_tokens")
    if lo is not None and hi is not None and lo > hi:
        raise ExportError(f"{where}: vision.image_min_tokens ({lo}) exceeds vision.image_max_tokens ({hi})")
    return {k: int(x) for k, x in v.items()}


def has_manifest(directory: str | os.PathLike[str]) -> bool:
    return (Path(directory).expanduser() / MANIFEST_NAME).is_file()


def read_manifest(directory: str | os.PathLike[str],
                  verify: Literal["sha256", "size", "none"] | bool = "sha256") -> ExportManifest:
    """Parse and check ``<directory>/covip_export.json``.

    ``verify``: ``"sha256"`` (default; also ``True``) checks every file's size and hash, ``"size"`` only
    sizes (fast), ``"none"`` (also ``False``) only that the files exist. Raises :class:`ExportError`
    naming the file and what is wrong.
    """
    if verify is True:
        verify = "sha256"
    elif verify is False:
        verify = "none"
    d = Path(directory).expanduser()
    path = d / MANIFEST_NAME
    if not path.is_file():
        raise ExportError(f"{d} is not a covip export directory: {MANIFEST_NAME} is missing "
                          "(make one with `covip export gguf` or `covip export onnx`)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} cannot be read as JSON ({exc}); re-run the export") from exc
    m = ExportManifest.from_dict(raw, where=str(path))
    m.directory = d
    for f in m.files:
        p = d / f.path
        if not p.is_file():
            raise ExportError(f"{d}: file {f.path!r} listed in {MANIFEST_NAME} is missing; re-run the export")
        size = p.stat().st_size
        if verify != "none" and size != f.bytes:
            raise ExportError(f"{d}: file {f.path!r} is {size} bytes, the manifest says {f.bytes} "
                              "(truncated or replaced?); re-run the export")
        if verify == "sha256":
            digest = sha256_file(p)
            if digest != f.sha256:
                raise ExportError(f"{d}: file {f.path!r} has sha256 {digest[:16]}..., the manifest says "
                                  f"{f.sha256[:16]}... (corrupted or replaced); re-run the export")
    return m
