"""Write the manifest of an export directory (``covip_export.json``).

The data classes and the reader live in the SDK (:mod:`covip.sdk.export_manifest`), so a laptop with only
the SDK can open an export; this module adds the writing side::

    m = new_manifest(source={"model": "...", "adapter": None}, chat_template=tpl, meaningless=False,
                     llama_cpp_version="0.3.36")
    add_files(m, out_dir, [("model-f16.gguf", "gguf-text", "f16"), ("mmproj-f16.gguf", "gguf-mmproj", "f16")])
    write_manifest(out_dir, m)      # atomic
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from covip.sdk.errors import ExportError
from covip.sdk.export_manifest import (
    FILE_KINDS,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    QUANTS,
    ExportFile,
    ExportManifest,
    has_manifest,
    read_manifest,
    sha256_file,
)
from covip.sdk.files import atomic_write_bytes

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "FILE_KINDS",
    "QUANTS",
    "ExportFile",
    "ExportManifest",
    "new_manifest",
    "file_entry",
    "add_files",
    "write_manifest",
    "publish_export",
    "read_manifest",
    "has_manifest",
    "sha256_file",
    "covip_version",
]


def covip_version() -> str:
    try:
        return importlib.metadata.version("covip")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def new_manifest(*, source: dict[str, Any], chat_template: str | None, meaningless: bool,
                 llama_cpp_version: str | None = None, onnx: dict[str, Any] | None = None,
                 vision: dict[str, int] | None = None) -> ExportManifest:
    """A manifest with covip's version and prompt version filled in and no files yet."""
    from covip.sdk.prompts import PROMPT_VERSION

    return ExportManifest(source=dict(source), covip_version=covip_version(), prompt_version=PROMPT_VERSION,
                          chat_template=chat_template, meaningless=bool(meaningless),
                          llama_cpp_version=llama_cpp_version, onnx=onnx, vision=vision)


def file_entry(directory: str | os.PathLike[str], rel: str, kind: str, quant: str) -> ExportFile:
    """An :class:`ExportFile` for ``directory/rel`` with its sha256 and size computed now."""
    if kind not in FILE_KINDS:
        raise ExportError(f"unknown file kind {kind!r} (known: {', '.join(FILE_KINDS)})")
    if quant not in QUANTS:
        raise ExportError(f"unknown quant {quant!r} (known: {', '.join(QUANTS)})")
    p = Path(directory) / rel
    if not p.is_file():
        raise ExportError(f"cannot add {rel!r} to the manifest: {p} does not exist")
    st = p.stat()
    return ExportFile(path=Path(rel).as_posix(), kind=kind, quant=quant, sha256=sha256_file(p), bytes=st.st_size,
                      mtime_ns=st.st_mtime_ns)


def add_files(manifest: ExportManifest, directory: str | os.PathLike[str],
              entries: Iterable[tuple[str, str, str]]) -> ExportManifest:
    """Hash ``(relative path, kind, quant)`` files of ``directory`` into ``manifest`` (an entry with the same
    path is replaced). Returns the manifest."""
    for rel, kind, quant in entries:
        entry = file_entry(directory, rel, kind, quant)
        manifest.files = [f for f in manifest.files if f.path != entry.path] + [entry]
    return manifest


def write_manifest(directory: str | os.PathLike[str], manifest: ExportManifest) -> Path:
    """Write ``directory/covip_export.json`` atomically (temp file + rename). Returns its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(d / MANIFEST_NAME, text.encode("utf-8"), d)  # temp file, fsync, rename (mode 0644)
    manifest.directory = d
    return d / MANIFEST_NAME


def publish_export(stage: Path, dest: Path, work: Path, manifest: ExportManifest, report: Any = None) -> None:
    """Move a finished export from ``stage`` to ``dest`` by rename: an existing export is first moved aside
    into ``work`` (the caller deletes ``work``), so ``dest`` is never half-written."""
    if dest.exists():
        os.replace(dest, work / "old")
    os.replace(stage, dest)
    manifest.directory = dest
    if report is not None:
        report.export_dir = str(dest)
