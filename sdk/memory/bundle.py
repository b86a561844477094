"""Portable memory bundles: one user's memory as a zip (manifest, rows, images, vectors), and back.

Layout of a bundle::

    manifest.json   format, bundle/schema/covip versions, user, counts, embedding models, sha256 of members
    rows.json       concepts, photos (with concept ids), episodes (with concept ids)
    images/<sha256><ext>     the stored photo bytes
    vectors/<model>.npz      photo_ids + float32 vectors per embedding model

Shares and cached captions are not exported (they belong to other users / are derived).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covip.sdk.errors import BundleError, ConflictError, CovipError, InputError
from covip.sdk.imaging import load_photo
from covip.sdk.memory.files import atomic_replace, atomic_write_bytes, tmp_path
from covip.sdk.memory.schema import SCHEMA_VERSION, utcnow
from covip.sdk.memory.validate import clean_dialogue, clean_name

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION"]

BUNDLE_FORMAT = "covip-memory-bundle"
BUNDLE_VERSION = 1
_MAX_BUNDLE_BYTES = 50 * 2**30


def covip_version() -> str:
    try:
        return metadata.version("covip")
    except metadata.PackageNotFoundError:
        return "unknown"


class _BundleOps:
    """Export/import of :class:`~covip.sdk.memory.memory.Memory` (a mixin; see that class)."""

    def export_user(self: Memory, user: str, path: str | os.PathLike) -> Path:
        """Write ``user``'s memory to a zip bundle at ``path`` (atomically); returns the path."""
        dest = Path(path).expanduser()
        if dest.is_dir():
            raise InputError(f"{dest} is a directory; give a file name such as {dest / (user + '.covip.zip')}")
        with self._lock:
            self._check_open()
            with self.store.read():
                uid = self._uid(user)
                concepts = self.store.rows("SELECT id, name, kind, notes FROM concepts WHERE user_id = ? ORDER BY id",
                                           [uid])
                photos = self.store.rows("SELECT * FROM photos WHERE user_id = ? ORDER BY id", [uid])
                links = self.store.rows("SELECT pc.photo_id, pc.concept_id FROM photo_concepts pc "
                                        "JOIN photos p ON p.id = pc.photo_id WHERE p.user_id = ?", [uid])
                episodes = self.store.rows("SELECT * FROM episodes WHERE user_id = ? ORDER BY id", [uid])
                elinks = self.store.rows("SELECT ec.episode_id, ec.concept_id FROM episode_concepts ec "
                                         "JOIN episodes e ON e.id = ec.episode_id WHERE e.user_id = ?", [uid])
                vec_rows = self.store.rows("SELECT photo_id, model_id, dim, vector FROM embeddings "
                                           "WHERE user_id = ? ORDER BY id", [uid])
            by_photo: dict[int, list[int]] = {}
            for r in links:
                by_photo.setdefault(r["photo_id"], []).append(r["concept_id"])
            by_episode: dict[int, list[int]] = {}
            for r in elinks:
                by_episode.setdefault(r["episode_id"], []).append(r["concept_id"])
            members: dict[str, bytes] = {}
            out_photos = []
            for p in photos:
                entry = {k: p[k] for k in ("id", "sha256", "source_path", "format", "width", "height", "bytes",
                                           "taken_at", "gps_lat", "gps_lon", "place", "created_at")}
                entry["concepts"] = sorted(by_photo.get(p["id"], []))
                entry["file"] = None
                if p["stored_path"]:
                    name = f"images/{Path(p['stored_path']).name}"
                    try:
                        members[name] = (self.home / p["stored_path"]).read_bytes()
                    except OSError as exc:
                        raise BundleError(f"photo {p['id']} is missing its stored file ({exc}); run "
                                          "`covip verify` first") from exc
                    entry["file"] = name
                out_photos.append(entry)
            out_eps = [{"id": e["id"], "photo_id": e["photo_id"], "dialogue": json.loads(e["dialogue"]),
                        "taken_at": e["taken_at"], "place": e["place"], "created_at": e["created_at"],
                        "concepts": sorted(by_episode.get(e["id"], []))} for e in episodes]
            models: dict[str, dict[str, Any]] = {}
            for r in vec_rows:
                m = models.setdefault(r["model_id"], {"dim": r["dim"], "ids": [], "vecs": []})
                m["ids"].append(r["photo_id"])
                m["vecs"].append(np.frombuffer(r["vector"], dtype=np.float32))
            model_list = []
            for n, (model_id, m) in enumerate(sorted(models.items())):
                buf = io.BytesIO()
                np.savez(buf, photo_ids=np.array(m["ids"], dtype=np.int64), vectors=np.stack(m["vecs"]))
                name = f"vectors/model-{n}.npz"
                members[name] = buf.getvalue()
                model_list.append({"model_id": model_id, "dim": m["dim"], "count": len(m["ids"]), "file": name})
            members["rows.json"] = json.dumps({"concepts": concepts, "photos": out_photos, "episodes": out_eps},
                                              indent=1).encode()
            manifest = {
                "format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION, "schema_version": SCHEMA_VERSION,
                "covip_version": covip_version(), "created_at": utcnow(), "user": user,
                "counts": {"concepts": len(concepts), "photos": len(photos), "episodes": len(episodes),
                           "vectors": len(vec_rows)},
                "embedding_models": model_list,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(members.items())},
            }
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_path(dest.parent, ".zip.part")
            try:
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                    zf.writestr("manifest.json", json.dumps(manifest, indent=1))
                    for name, data in sorted(members.items()):
                        zf.writestr(name, data)
                atomic_replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("exported user %s (%d photos) to %s", user, len(photos), dest)
            return dest

    def import_bundle(self: Memory, path: str | os.PathLike, *, user: str | None = None,
                      merge: bool = False) -> dict[str, Any]:
        """Load a bundle into ``user`` (default: the bundle's user). Everything is checked before anything is
        written, and the write is one transaction. ``merge=True`` adds into an existing user."""
        manifest, rows, files, vectors = _read_bundle(Path(path).expanduser())
        target = clean_name(user or manifest.get("user") or "", "user name")
        photos_in = {}
        for p in rows["photos"]:
            if p.get("file"):
                pic = load_photo(files[p["file"]], max_pixels=self.config.max_pixels)
                if pic.sha256 != p["sha256"]:
                    raise BundleError(f"image {p['file']} does not match its recorded sha256; the bundle is damaged")
                photos_in[p["id"]] = pic
        for e in rows["episodes"]:
            clean_dialogue(e["dialogue"])
        counts = {"user": target, "concepts": 0, "photos": 0, "episodes": 0, "vectors": 0}
        created: list[Path] = []
        new_vec_keys: set[tuple[int, str]] = set()
        with self._lock:
            self._check_open()
            try:
                with self.store.write() as db:
                    row = self.store.one("SELECT id FROM users WHERE name = ?", [target])
                    if row is not None and not merge:
                        raise ConflictError(f"user {target!r} already exists; import with merge=True "
                                            "(--merge) or choose another --user")
                    if row is None:
                        uid = int(db["users"].insert({"name": target, "created_at": utcnow()}).last_pk)
                        self.store.audit("add_user", uid, "user", uid)
                    else:
                        uid = int(row["id"])
                    cmap = {}
                    for c in rows["concepts"]:
                        existed = self.store.concept_row(uid, c["name"]) is not None
                        cmap[c["id"]] = self._ensure_concept(uid, clean_name(c["name"], "concept name"),
                                                             self._clean_kind(c.get("kind", "other")),
                                                             c.get("notes") or "")
                        counts["concepts"] += 0 if existed else 1
                    pmap = {}
                    for p in rows["photos"]:
                        have = self.store.one("SELECT id FROM photos WHERE user_id = ? AND sha256 = ?",
                                              [uid, p["sha256"]])
                        if have is not None:
                            pmap[p["id"]] = have["id"]
                            continue
                        stored = None
                        pic = photos_in.get(p["id"])
                        if pic is not None and self.config.store_copies:
                            stored = self._photo_file(uid, pic)
                            dest = self.home / stored
                            if not dest.exists():
                                atomic_write_bytes(dest, pic.data, self.home / "tmp")
                                created.append(dest)
                        pmap[p["id"]] = db["photos"].insert({
                            "user_id": uid, "sha256": p["sha256"], "stored_path": stored,
                            "source_path": p.get("source_path"), "format": p["format"], "width": p["width"],
                            "height": p["height"], "bytes": p["bytes"], "taken_at": p.get("taken_at"),
                            "gps_lat": p.get("gps_lat"), "gps_lon": p.get("gps_lon"), "place": p.get("place"),
                            "created_at": p.get("created_at") or utcnow()}).last_pk
                        self.store.audit("import_photo", uid, "photo", pmap[p["id"]])
                        counts["photos"] += 1
                        for cid in p.get("concepts", []):
                            db.execute("INSERT OR IGNORE INTO photo_concepts (photo_id, concept_id) VALUES (?, ?)",
                                       [pmap[p["id"]], cmap[cid]])
                    for e in rows["episodes"]:
                        eid = db["episodes"].insert({
                            "user_id": uid, "photo_id": pmap[e["photo_id"]],
                            "dialogue": json.dumps(clean_dialogue(e["dialogue"])), "taken_at": e.get("taken_at"),
                            "place": e.get("place"), "created_at": e.get("created_at") or utcnow()}).last_pk
                        for cid in e.get("concepts", []):
                            db.execute("INSERT OR IGNORE INTO episode_concepts (episode_id, concept_id) VALUES (?,?)",
                                       [eid, cmap[cid]])
                        counts["episodes"] += 1
                    for model_id, (dim, photo_ids, vecs) in vectors.items():
                        for old_pid, vec in zip(photo_ids, vecs):
                            pid = pmap[int(old_pid)]
                            if self.store.scalar("SELECT 1 FROM embeddings WHERE photo_id = ? AND model_id = ?",
                                                 [pid, model_id]):
                                continue
                            db["embeddings"].insert({"user_id": uid, "photo_id": pid, "model_id": model_id,
                                                     "dim": dim, "vector": vec.astype(np.float32).tobytes()})
                            counts["vectors"] += 1
                            new_vec_keys.add((uid, model_id))
                    self.store.audit("import_bundle", uid, "user", uid, photos=counts["photos"])
            except BaseException:
                for f in created:
                    f.unlink(missing_ok=True)
                raise
            for key in new_vec_keys:
                dim = int(vectors[key[1]][0])
                self._save_index(key, self._entry(key[0], key[1], dim))
            log.info("imported %s", counts)
            return counts


def _read_bundle(path: Path) -> tuple[dict, dict, dict[str, bytes], dict[str, tuple[int, np.ndarray, np.ndarray]]]:
    """Read and check a whole bundle (format, versions, member hashes, shapes) before anything is written."""
    if not path.is_file():
        raise InputError(f"bundle {path} does not exist or is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{path} is not a covip memory bundle (not a zip file: {exc})") from exc
    with zf:
        if sum(i.file_size for i in zf.infolist()) > _MAX_BUNDLE_BYTES:
            raise BundleError(f"{path} unpacks to more than {_MAX_BUNDLE_BYTES} bytes; refusing it")
        try:
            manifest = json.loads(zf.read("manifest.json"))
        except KeyError as exc:
            raise BundleError(f"{path} has no manifest.json; it is not a covip memory bundle") from exc
        except ValueError as exc:
            raise BundleError(f"{path}: manifest.json is not valid JSON ({exc})") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path} is not a covip memory bundle (manifest format is not {BUNDLE_FORMAT!r})")
        if int(manifest.get("bundle_version", 0)) > BUNDLE_VERSION or int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
            raise BundleError(f"{path} was written by a newer covip ({manifest.get('covip_version')}); "
                              "upgrade covip to import it")
        files: dict[str, bytes] = {}
        for name, digest in (manifest.get("files") or {}).items():
            try:
                data = zf.read(name)
            except KeyError as exc:
                raise BundleError(f"{path} lacks {name}, which its manifest lists; the bundle is damaged") from exc
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise BundleError(f"{path}: member {name} is damaged ({exc})") from exc
            if hashlib.sha256(data).hexdigest() != digest:
                raise BundleError(f"{path}: {name} does not match its checksum; the bundle is damaged")
            files[name] = data
    if "rows.json" not in files:
        raise BundleError(f"{path} has no rows.json; the bundle is damaged")
    try:
        rows = json.loads(files["rows.json"])
        for key in ("concepts", "photos", "episodes"):
            if not isinstance(rows.get(key), list):
                raise BundleError(f"{path}: rows.json lacks the {key!r} list")
        photo_ids = {p["id"] for p in rows["photos"]}
        concept_ids = {c["id"] for c in rows["concepts"]}
        for p in rows["photos"]:
            if p.get("file") and p["file"] not in files:
                raise BundleError(f"{path}: photo {p['id']} points at missing member {p['file']}")
            if not set(p.get("concepts", [])) <= concept_ids:
                raise BundleError(f"{path}: photo {p['id']} names unknown concepts")
        for e in rows["episodes"]:
            if e["photo_id"] not in photo_ids or not set(e.get("concepts", [])) <= concept_ids:
                raise BundleError(f"{path}: episode {e['id']} points at an unknown photo or concept")
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CovipError):
            raise
        raise BundleError(f"{path}: rows.json is malformed ({exc!r})") from exc
    vectors = {}
    for m in manifest.get("embedding_models", []):
        try:
            with np.load(io.BytesIO(files[m["file"]]), allow_pickle=False) as npz:
                pids, vecs = npz["photo_ids"], npz["vectors"]
        except (KeyError, ValueError, OSError) as exc:
            raise BundleError(f"{path}: vectors for {m.get('model_id')!r} are unreadable ({exc})") from exc
        if vecs.ndim != 2 or vecs.shape != (len(pids), int(m["dim"])) or not np.all(np.isfinite(vecs)):
            raise BundleError(f"{path}: vectors for {m['model_id']!r} have the wrong shape or bad values")
        if not set(int(p) for p in pids) <= photo_ids:
            raise BundleError(f"{path}: vectors for {m['model_id']!r} point at unknown photos")
        vectors[m["model_id"]] = (int(m["dim"]), pids, vecs)
    return manifest, rows, files, vectors
