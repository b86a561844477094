"""Checks of a memory bundle's manifest, rows and vectors: every field typed, bounded and cross-referenced.

A bundle comes from outside the home (another device, a download, an attacker), so nothing in it is
trusted: these checks run on the whole bundle before anything is written, with the same validators
``Memory.remember`` uses, and turn every problem into a :class:`~covip.sdk.errors.BundleError` that names
the row and the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from covip.sdk.errors import BundleError, InputError
from covip.sdk.memory.schema import SCHEMA_VERSION
from covip.sdk.memory.types import CONCEPT_KINDS
from covip.sdk.memory.validate import (
    MAX_ID,
    MAX_VECTOR_DIM,
    NORM_TOLERANCE,
    clean_dialogue,
    clean_file_name,
    clean_model_id,
    clean_name,
    clean_place,
    clean_time,
)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "Manifest", "ModelEntry", "Rows", "check_manifest", "check_rows",
           "check_vectors", "rows_cap", "vectors_cap"]

BUNDLE_FORMAT = "covip-memory-bundle"
BUNDLE_VERSION = 1

MAX_ROWS = 10_000_000  # per kind (concepts, photos, episodes, vectors of one model)
MAX_ROWS_BYTES = 256 * 2**20  # rows.json is parsed in memory: a hard ceiling whatever the counts say
_SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_MEMBER = re.compile(r"images/(?P<sha>[0-9a-f]{64})\.[A-Za-z0-9]{1,8}")
VECTOR_MEMBER = re.compile(r"vectors/model-[0-9]{1,6}\.npz")


@dataclass(frozen=True)
class ModelEntry:
    """One embedding model's vectors in a bundle (from the manifest)."""

    model_id: str
    dim: int
    count: int
    file: str


@dataclass(frozen=True)
class Manifest:
    """The checked manifest: the bundle's user, versions, counts, models and member checksums."""

    user: str
    bundle_version: int
    schema_version: int
    covip_version: str
    counts: dict[str, int]
    models: tuple[ModelEntry, ...]
    files: dict[str, str]  # member name -> sha256 hex


@dataclass(frozen=True)
class Rows:
    """Checked, normalized rows (ids are the bundle's own; the import maps them to new ones)."""

    concepts: list[dict[str, Any]]
    photos: list[dict[str, Any]]
    episodes: list[dict[str, Any]]


def _bad(label: str, what: str) -> BundleError:
    return BundleError(f"{label}: {what}; the bundle is damaged or was not written by covip")


def _int(value: Any, what: str, label: str, *, lo: int = 0, hi: int = MAX_ID) -> int:
    if type(value) is not int:  # bool, float, str, None are all refused
        raise _bad(label, f"{what} must be an integer, not {_show(value)}")
    if not lo <= value <= hi:
        raise _bad(label, f"{what} is {value}, outside {lo}..{hi}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def _dict(value: Any, what: str, label: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(label, f"{what} must be a JSON object, not {_show(value)}")
    return value


def _list(value: Any, what: str, label: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(label, f"{what} must be a JSON list, not {_show(value)}")
    return value


def _clean(fn: Any, value: Any, what: str, label: str, *args: Any) -> Any:
    """Run one of the remember validators, naming the bundle row in its error."""
    try:
        return fn(value, *args)
    except InputError as exc:
        raise BundleError(f"{label}: {what}: {exc}") from exc


def _version(manifest: dict[str, Any], key: str, newest: int, label: str, covip: str) -> int:
    value = manifest.get(key)
    if type(value) is not int or value < 1:
        raise BundleError(f"{label}: manifest {key} must be a positive integer, not {_show(value)}; "
                          "the bundle is damaged or was not written by covip")
    if value > newest:
        raise BundleError(f"{label} was written by a newer covip ({covip}; {key} {value}, this covip reads up "
                          f"to {newest}); upgrade covip (pip install -U covip) to import it")
    return value


def check_manifest(doc: Any, label: str) -> Manifest:
    """Check manifest.json: format, versions, user, counts, models and the member checksums."""
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{label} is not a covip memory bundle (manifest format is not {BUNDLE_FORMAT!r})")
    covip = doc.get("covip_version")
    covip = covip[:40] if isinstance(covip, str) and covip.isprintable() else "an unknown version"
    bundle_version = _version(doc, "bundle_version", BUNDLE_VERSION, label, covip)
    schema_version = _version(doc, "schema_version", SCHEMA_VERSION, label, covip)
    user = _clean(clean_name, doc.get("user"), "the bundle's user name", label, "user name")
    counts_doc = _dict(doc.get("counts"), "manifest counts", label)
    counts = {k: _int(counts_doc.get(k), f"manifest counts.{k}", label, hi=MAX_ROWS * (8 if k == "vectors" else 1))
              for k in ("concepts", "photos", "episodes", "vectors")}
    files_doc = _dict(doc.get("files"), "manifest files", label)
    files: dict[str, str] = {}
    for name, digest in files_doc.items():
        if not (name == "rows.json" or IMAGE_MEMBER.fullmatch(name) or VECTOR_MEMBER.fullmatch(name)):
            raise _bad(label, f"manifest lists a member named {name[:80]!r}, which is no covip bundle member")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _bad(label, f"manifest checksum of {name} is not a sha256 hex digest")
        files[name] = digest
    models: list[ModelEntry] = []
    for n, m in enumerate(_list(doc.get("embedding_models", []), "manifest embedding_models", label)):
        m = _dict(m, f"embedding model {n}", label)
        model_id = _clean(clean_model_id, m.get("model_id"), f"embedding model {n}", label)
        file = m.get("file")
        if not isinstance(file, str) or not VECTOR_MEMBER.fullmatch(file) or file not in files:
            raise _bad(label, f"vectors of model {model_id!r} name no vector member listed in the manifest")
        models.append(ModelEntry(model_id=model_id, dim=_int(m.get("dim"), f"dim of model {model_id!r}", label,
                                                             lo=1, hi=MAX_VECTOR_DIM),
                                 count=_int(m.get("count"), f"count of model {model_id!r}", label, hi=MAX_ROWS),
                                 file=file))
    if len({m.model_id for m in models}) != len(models) or len({m.file for m in models}) != len(models):
        raise _bad(label, "the manifest lists one embedding model (or its file) twice")
    if sum(m.count for m in models) != counts["vectors"]:
        raise _bad(label, f"manifest counts {counts['vectors']} vectors but its models hold "
                          f"{sum(m.count for m in models)}")
    return Manifest(user=user, bundle_version=bundle_version, schema_version=schema_version, covip_version=covip,
                    counts=counts, models=tuple(models), files=files)


def rows_cap(counts: dict[str, int]) -> int:
    """The most bytes rows.json may have for these counts (a generous 1 MiB per row on average)."""
    rows = counts["concepts"] + counts["photos"] + counts["episodes"]
    return min(MAX_ROWS_BYTES, (4 + rows) * 2**20)


def vectors_cap(model: ModelEntry) -> int:
    """The most bytes one model's .npz may have: the arrays themselves plus headers."""
    return model.count * (model.dim * 4 + 8) + 64 * 2**10


def _ids(value: Any, what: str, label: str, known: set[int]) -> list[int]:
    out = [_int(v, what, label) for v in _list(value if value is not None else [], what, label)]
    unknown = sorted(set(out) - known)
    if unknown:
        raise _bad(label, f"{what} names concept {unknown[0]}, which the bundle does not have")
    return sorted(set(out))


def _time(value: Any, what: str, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(label, f"{what} must be ISO-8601 text, not {_show(value)}")
    try:
        return clean_time(value)
    except InputError as exc:
        raise BundleError(f"{label}: {what} {_show(value)} is not an ISO-8601 date/time") from exc


def _coord(value: Any, what: str, label: str, limit: float) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > limit:
        raise _bad(label, f"{what} must be a number within ±{limit:g}, not {_show(value)}")
    return float(value)


def _unique(rows: list[dict[str, Any]], key: str, kind: str, label: str) -> None:
    seen: set[Any] = set()
    for r in rows:
        value = r[key].lower() if isinstance(r[key], str) else r[key]
        if value in seen:
            raise _bad(label, f"two {kind} rows have the same {key} {r[key]!r:.80}")
        seen.add(value)


def _check_concept(c: Any, n: int, label: str) -> dict[str, Any]:
    c = _dict(c, f"concept row {n}", label)
    cid = _int(c.get("id"), f"concept row {n} id", label, lo=1)
    where = f"concept {cid}"
    kind = c.get("kind", "other")
    if kind not in CONCEPT_KINDS:
        raise _bad(label, f"{where} has kind {_show(kind)}; kinds are {', '.join(CONCEPT_KINDS)}")
    notes = c.get("notes")
    notes = "" if notes is None else notes
    if not isinstance(notes, str):
        raise _bad(label, f"{where} notes must be text, not {_show(notes)}")
    return {"id": cid, "name": _clean(clean_name, c.get("name"), where, label, "concept name"), "kind": kind,
            "notes": notes}


def _check_photo(p: Any, n: int, label: str, concept_ids: set[int], files: dict[str, str]) -> dict[str, Any]:
    p = _dict(p, f"photo row {n}", label)
    pid = _int(p.get("id"), f"photo row {n} id", label, lo=1)
    where = f"photo {pid}"
    sha = p.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise _bad(label, f"{where} sha256 is not a sha256 hex digest")
    file = p.get("file")
    if file is None:
        raise BundleError(f"{label}: {where} carries no image (its file is null). A bundle must carry the bytes "
                          "of every photo; nothing outside the bundle is ever read. Export the memory again "
                          "with this covip, which always includes them")
    m = IMAGE_MEMBER.fullmatch(file) if isinstance(file, str) else None
    if m is None or m.group("sha") != sha or file not in files:
        raise _bad(label, f"{where} names image {_show(file)}, which is not its images/<sha256> member listed "
                          "in the manifest")
    if files[file] != sha:
        raise _bad(label, f"{where}'s image {file} does not match the photo's sha256")
    lat = _coord(p.get("gps_lat"), f"{where} gps_lat", label, 90.0)
    lon = _coord(p.get("gps_lon"), f"{where} gps_lon", label, 180.0)
    if (lat is None) != (lon is None):
        raise _bad(label, f"{where} has only one of gps_lat and gps_lon")
    # source_path (older bundles) is deliberately dropped: it names a file on another device, and a
    # path from a bundle must never be stored where code could open it. original_name is a base name only
    # (checked like remember's; absent in bundles written before names were kept), shown and never opened.
    name = p.get("original_name")
    return {"id": pid, "sha256": sha, "file": file, "gps_lat": lat, "gps_lon": lon,
            "original_name": None if name is None else _clean(clean_file_name, name, where, label),
            "taken_at": _time(p.get("taken_at"), f"{where} taken_at", label),
            "created_at": _time(p.get("created_at"), f"{where} created_at", label),
            "place": _clean(clean_place, p.get("place"), where, label),
            "concepts": _ids(p.get("concepts"), f"{where} concepts", label, concept_ids)}


def _check_episode(e: Any, n: int, label: str, concept_ids: set[int], photo_ids: set[int]) -> dict[str, Any]:
    e = _dict(e, f"episode row {n}", label)
    eid = _int(e.get("id"), f"episode row {n} id", label, lo=1)
    where = f"episode {eid}"
    photo_id = _int(e.get("photo_id"), f"{where} photo_id", label)
    if photo_id not in photo_ids:
        raise _bad(label, f"{where} is about photo {photo_id}, which the bundle does not have")
    if e.get("dialogue") is None:
        raise _bad(label, f"{where} has no dialogue")
    return {"id": eid, "photo_id": photo_id,
            "dialogue": _clean(clean_dialogue, e.get("dialogue"), f"{where} dialogue", label),
            "taken_at": _time(e.get("taken_at"), f"{where} taken_at", label),
            "created_at": _time(e.get("created_at"), f"{where} created_at", label),
            "place": _clean(clean_place, e.get("place"), where, label),
            "concepts": _ids(e.get("concepts"), f"{where} concepts", label, concept_ids)}


def check_rows(doc: Any, manifest: Manifest, label: str) -> Rows:
    """Check rows.json against the manifest: every field of every row, unique ids, references, counts."""
    doc = _dict(doc, "rows.json", label)
    lists = {k: _list(doc.get(k), f"rows.json {k}", label) for k in ("concepts", "photos", "episodes")}
    for kind, items in lists.items():
        if len(items) != manifest.counts[kind]:
            raise _bad(label, f"rows.json holds {len(items)} {kind} but the manifest counts "
                              f"{manifest.counts[kind]}")
    concepts = [_check_concept(c, n, label) for n, c in enumerate(lists["concepts"])]
    _unique(concepts, "id", "concept", label)
    _unique(concepts, "name", "concept", label)
    concept_ids = {c["id"] for c in concepts}
    photos = [_check_photo(p, n, label, concept_ids, manifest.files) for n, p in enumerate(lists["photos"])]
    _unique(photos, "id", "photo", label)
    _unique(photos, "sha256", "photo", label)
    photo_ids = {p["id"] for p in photos}
    episodes = [_check_episode(e, n, label, concept_ids, photo_ids) for n, e in enumerate(lists["episodes"])]
    _unique(episodes, "id", "episode", label)
    return Rows(concepts=concepts, photos=photos, episodes=episodes)


def check_vectors(model: ModelEntry, photo_ids: np.ndarray, vectors: np.ndarray, known: set[int],
                  label: str) -> None:
    """Check one model's arrays: int ids of known photos (each once), float32 (count, dim), finite, unit norm."""
    what = f"vectors of model {model.model_id!r}"
    if photo_ids.dtype.kind not in "iu" or photo_ids.shape != (model.count,):
        raise _bad(label, f"{what}: photo_ids must be {model.count} integers, not {photo_ids.dtype} "
                          f"{photo_ids.shape}")
    if vectors.dtype != np.dtype(np.float32) or vectors.shape != (model.count, model.dim):
        raise _bad(label, f"{what} must be float32 of shape ({model.count}, {model.dim}), not {vectors.dtype} "
                          f"{vectors.shape}")
    ids = [int(i) for i in photo_ids]
    if len(set(ids)) != len(ids):
        raise _bad(label, f"{what} hold two vectors for one photo")
    unknown = sorted(set(ids) - known)
    if unknown:
        raise _bad(label, f"{what} point at photo {unknown[0]}, which the bundle does not have")
    if not np.all(np.isfinite(vectors)):
        raise _bad(label, f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
    off = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if len(off):
        raise _bad(label, f"{what} are not unit length (photo {ids[off[0]]} has norm {norms[off[0]]:.4g}); "
                          "covip stores L2-normalized vectors")
