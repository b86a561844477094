"""What models this machine holds, with sizes: covip's cache, the home's chosen model, the Hugging Face cache.

:func:`list_models` is what ``covip models`` prints. covip's cache (``$COVIP_CACHE`` or e.g. ~/.cache/covip)
holds the built tiny/mini models (``models/``), embedders built or trained into it (``embedders/``), GGUF
conversions (``gguf/``), the benchmarks' converted engines (``bench-engines/``) and the llama.cpp converter
source (``llama-cpp-sdist/``); the home's ``config.json`` names the model ``covip init --model`` chose (an
export directory, a hub id, ``tiny``); the Hugging Face cache holds what ``covip pull`` and transformers
downloaded (scanned with ``huggingface_hub.scan_cache_dir``, when huggingface_hub is installed).
Nothing here downloads, builds or writes anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk._config import cache_root
from covip.sdk.models.hub import check_repo_id, hub_cache_dir, repo_folder

__all__ = ["CachedModel", "ModelListing", "list_models", "human_size", "folder_size", "COVIP_CACHE_KINDS"]

log = logging.getLogger(__name__)

COVIP_CACHE_KINDS: dict[str, str] = {
    "models": "model",
    "embedders": "embedder",
    "gguf": "gguf",
    "bench-engines": "bench",
    "llama-cpp-sdist": "converter",
}
"""Folders of covip's cache and the kind ``covip models`` shows for each entry in them."""


@dataclass
class CachedModel:
    """One row of ``covip models``."""

    kind: str
    """model (tiny/mini build), embedder, gguf, bench, converter, partial (an unfinished build), other,
    export / local (the home's model: an export directory, another file or folder), hub (a Hugging Face model
    repo), hub-dataset."""
    name: str
    bytes: int | None
    path: str
    note: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def size(self) -> str:
        """The size as a person reads it (``1.4 GB``), ``-`` when unknown."""
        return human_size(self.bytes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able row (``size`` included)."""
        return {"kind": self.kind, "name": self.name, "bytes": self.bytes, "size": self.size, "path": self.path,
                "note": self.note, "files": self.files}


@dataclass
class ModelListing:
    """Everything :func:`list_models` found, and what it could not look at."""

    covip_cache: str
    hub_cache: str
    home: str | None
    home_model: str | None
    models: list[CachedModel]
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes of every row with a known size."""
        return sum(m.bytes or 0 for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able listing (what ``covip models --json`` prints)."""
        return {"covip_cache": self.covip_cache, "hub_cache": self.hub_cache, "home": self.home,
                "home_model": self.home_model, "total_bytes": self.total_bytes,
                "total_size": human_size(self.total_bytes), "models": [m.to_dict() for m in self.models],
                "notes": self.notes}


def human_size(n: int | None) -> str:
    """``812 B``, ``12.3 kB``, ``1.4 GB`` (powers of 1000, as the Hub shows sizes); ``-`` for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself); links are not followed or counted twice."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, names in os.walk(path):  # os.walk does not descend into linked folders
        for name in names:
            try:
                st = (Path(root) / name).lstat()
            except OSError:
                continue
            if not os.path.islink(Path(root) / name):
                total += st.st_size
    return total


def list_models(home: Path | None = None, *, covip_cache: Path | None = None,
                hub_cache: Path | None = None) -> ModelListing:
    """Scan covip's cache, the home's settings and the Hugging Face cache (read-only); see the module doc."""
    cache = covip_cache if covip_cache is not None else cache_root()
    hub = hub_cache if hub_cache is not None else hub_cache_dir()
    rows: list[CachedModel] = []
    notes: list[str] = []
    rows += _covip_cache_rows(cache)
    home_model, home_rows = _home_rows(home, hub, notes)
    rows += home_rows
    rows += _hub_rows(hub, notes, home_model)
    return ModelListing(covip_cache=str(cache), hub_cache=str(hub), home=str(home) if home is not None else None,
                        home_model=home_model, models=rows, notes=notes)


def _entries(folder: Path) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError:
        return []


def _covip_cache_rows(cache: Path) -> list[CachedModel]:
    rows: list[CachedModel] = []
    order = list(COVIP_CACHE_KINDS)
    for top in sorted(_entries(cache), key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name)):
        kind = COVIP_CACHE_KINDS.get(top.name)
        if kind is None or not top.is_dir() or top.is_symlink():
            rows.append(CachedModel("other", top.name, _size(top), str(top)))
            continue
        for entry in _entries(top):
            name = entry.name
            if name.startswith("."):  # a build that crashed before its rename: safe to delete
                rows.append(CachedModel("partial", f"{top.name}/{name}", _size(entry), str(entry),
                                        note="unfinished build; safe to delete"))
                continue
            files = sorted(p.name for p in _entries(entry) if p.suffix == ".gguf") if kind in ("gguf", "bench") else []
            rows.append(CachedModel(kind, name, _size(entry), str(entry), files=files))
    return rows


def _size(path: Path) -> int | None:
    try:
        return folder_size(path)
    except OSError:
        return None


def _home_rows(home: Path | None, hub: Path, notes: list[str]) -> tuple[str | None, list[CachedModel]]:
    """The model the home's config.json names (an export or a model folder; a hub id is marked on its row)."""
    if home is None:
        return None, []
    from covip.sdk.config import read_settings
    from covip.sdk.errors import CovipError

    try:
        settings = read_settings(home)
    except CovipError as exc:
        notes.append(f"the home's settings could not be read: {exc}")
        return None, []
    model = settings.get("model")
    if not isinstance(model, str) or not model:
        return None, []
    quant = settings.get("quant")
    note = "the home's model" + (f" (quant {quant})" if isinstance(quant, str) and quant else "")
    path = Path(model).expanduser()
    if model == "tiny" or (_is_hub_id(model) and not path.exists()):
        if _is_hub_id(model) and not repo_folder(model, hub).is_dir():
            return model, [CachedModel("hub", model, None, "", note=f"{note}; not downloaded: covip pull {model}")]
        return model, []  # tiny: its build is a row of covip's cache; a hub id: its row in the Hub cache
    from covip.sdk.export_manifest import has_manifest

    if not path.exists():
        return model, [CachedModel("export", model, None, str(path), note=f"{note}; missing")]
    kind = "export" if path.is_dir() and has_manifest(path) else "local"
    return model, [CachedModel(kind, path.name or model, _size(path), str(path.resolve()), note=note)]


def _is_hub_id(value: str) -> bool:
    try:
        check_repo_id(value)
    except ValueError:
        return False
    return True


def _hub_rows(hub: Path, notes: list[str], home_model: str | None) -> list[CachedModel]:
    if not hub.is_dir():
        return []
    try:
        import huggingface_hub as hf
    except ImportError:
        notes.append(f"the Hugging Face cache {hub} was not scanned: huggingface_hub is not installed "
                     "(pip install 'covip[torch]')")
        return []
    try:
        info = hf.scan_cache_dir(hub)
    except Exception as exc:  # noqa: BLE001 - a damaged cache must not hide covip's own rows
        notes.append(f"the Hugging Face cache {hub} could not be scanned: {exc}")
        return []
    for warning in info.warnings:
        notes.append(f"the Hugging Face cache has a damaged entry: {warning}")
    rows = []
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id.lower())):
        if repo.repo_type not in ("model", "dataset"):
            continue
        revisions = sorted(repo.revisions, key=lambda r: r.last_modified, reverse=True)
        main = next((r for r in revisions if "main" in r.refs), revisions[0] if revisions else None)
        path = str(main.snapshot_path) if main is not None else str(repo.repo_path)
        refs = sorted({ref for r in revisions for ref in r.refs})
        note = f"{len(revisions)} revisions" if len(revisions) > 1 else ""
        if refs and refs != ["main"]:
            note = ", ".join(filter(None, [note, "refs " + " ".join(refs)]))
        if repo.repo_id == home_model:
            note = ", ".join(filter(None, ["the home's model", note]))
        files = sorted(f.file_name for f in main.files if f.file_name.endswith(".gguf")) if main is not None else []
        rows.append(CachedModel("hub" if repo.repo_type == "model" else "hub-dataset", repo.repo_id,
                                int(repo.size_on_disk), path, note=note, files=files))
    return rows
