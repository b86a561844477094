"""Portable memory bundles: one user's memory as a zip (manifest, rows, images, vectors), and back, written and
read by :class:`BundleIO`, the collaborator of :class:`~covip.sdk.memory.memory.Memory` for export and import.

Layout of a bundle::

    manifest.json   format, bundle/schema/covip versions, user, counts, embedding models, sha256 of members
    rows.json       concepts, photos (with concept ids and original file names), episodes (with concept ids)
    images/<sha256><ext>     the bytes of every photo (a bundle always carries them)
    vectors/model-<n>.npz    photo_ids + float32 unit vectors per embedding model

Shares and cached captions are not exported (they belong to other users / are derived), nor are the
photos' original paths (they name files on this device); their original file names (base names only) are.
Bundles written before file names were kept (no ``original_name``) import as photos without one. Import trusts nothing in a bundle: it is read
and checked whole by :func:`~covip.sdk.memory.bundle_read.read_bundle` before anything is written, its
photos go into the photo store, and no path from a bundle is ever opened or stored.

A bundle exported from an encrypted home is the same zip sealed whole (see :mod:`covip.sdk.memory.crypto`)
under the home's passphrase or raw key, unless ``plain=True``; importing one needs that passphrase or key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import weakref
import zipfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from covip.sdk.errors import BundleError, ConflictError, InputError
from covip.sdk.files import atomic_replace, tmp_path
from covip.sdk.memory import crypto
from covip.sdk.memory.bundle_check import BUNDLE_FORMAT, BUNDLE_VERSION
from covip.sdk.memory.bundle_read import read_bundle
from covip.sdk.memory.schema import SCHEMA_VERSION, utcnow
from covip.sdk.memory.validate import clean_name, clean_path

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["BUNDLE_FORMAT", "BUNDLE_VERSION", "inside_home", "refuse_inside_home"]

_CHUNK = 2**20


def covip_version() -> str:
    try:
        return metadata.version("covip")
    except metadata.PackageNotFoundError:
        return "unknown"


def inside_home(home: Path, path: Path) -> bool:
    """Whether ``path`` (the name itself, or what it resolves to through links) lies in the home."""
    home = home.resolve()
    return any(where == home or home in where.parents
               for where in (path.parent.resolve() / path.name, path.resolve()))


def refuse_inside_home(home: Path, path: Path, action: str) -> None:
    """Refuse a bundle path inside the memory home: writing there could replace memory.db or the index, and
    even opening the home's database from outside the store drops its SQLite locks."""
    if inside_home(home, path):
        raise InputError(f"{path} is inside the memory home {home.resolve()}; {action} a path outside it "
                         "(e.g. ~/covip-backups/NAME.covip.zip)")


class BundleIO:
    """Export/import of a Memory (see the Memory methods of the same names); photo bytes are read through
    ``mem.photo_files`` and new vectors reach the index files through ``mem.indexes``."""

    def __init__(self, mem: Memory) -> None:
        self.mem = weakref.proxy(mem)  # weak: an unclosed Memory that is dropped is freed at once, as before

    def export_user(self, user: str, path: str | os.PathLike, *, plain: bool = False) -> Path:
        """Write ``user``'s memory to a zip bundle (see Memory.export_user)."""
        mem = self.mem
        if not isinstance(plain, bool):
            raise InputError(f"plain must be True or False, not {plain!r:.40}")
        dest = clean_path(path, "bundle path")
        if dest.is_dir():
            raise InputError(f"{dest} is a directory; give a file name such as {dest / (user + '.covip.zip')}")
        refuse_inside_home(mem.home, dest, "write the bundle to")
        with mem._lock:
            mem._check_open()
            with mem.store.read():
                uid = mem._uid(user)
                concepts = mem.store.rows("SELECT id, name, kind, notes FROM concepts WHERE user_id = ? ORDER BY id",
                                          [uid])
                photos = mem.store.rows("SELECT * FROM photos WHERE user_id = ? ORDER BY id", [uid])
                links = mem.store.rows("SELECT pc.photo_id, pc.concept_id FROM photo_concepts pc "
                                       "JOIN photos p ON p.id = pc.photo_id WHERE p.user_id = ?", [uid])
                episodes = mem.store.rows("SELECT * FROM episodes WHERE user_id = ? ORDER BY id", [uid])
                elinks = mem.store.rows("SELECT ec.episode_id, ec.concept_id FROM episode_concepts ec "
                                        "JOIN episodes e ON e.id = ec.episode_id WHERE e.user_id = ?", [uid])
                vec_rows = mem.store.rows("SELECT photo_id, model_id, dim, vector FROM embeddings "
                                          "WHERE user_id = ? ORDER BY id", [uid])
            by_photo: dict[int, list[int]] = {}
            for r in links:
                by_photo.setdefault(r["photo_id"], []).append(r["concept_id"])
            by_episode: dict[int, list[int]] = {}
            for r in elinks:
                by_episode.setdefault(r["episode_id"], []).append(r["concept_id"])
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_path(dest.parent, ".zip.part")
            try:
                with crypto.bundle_sink(tmp, None if plain else mem.crypto) as sink, \
                        zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
                    files: dict[str, str] = {}
                    out_photos = []
                    for p in photos:
                        name = f"images/{p['sha256']}{_photo_suffix(p)}"
                        files[name] = self._export_photo_file(zf, p, name)
                        entry = {k: p[k] for k in ("id", "sha256", "format", "width", "height", "bytes", "taken_at",
                                                   "gps_lat", "gps_lon", "place", "created_at", "original_name")}
                        entry["concepts"] = sorted(by_photo.get(p["id"], []))
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
                        files[name] = _write_member(zf, name, buf.getvalue())
                        model_list.append({"model_id": model_id, "dim": m["dim"], "count": len(m["ids"]),
                                           "file": name})
                    rows = {"concepts": concepts, "photos": out_photos, "episodes": out_eps}
                    files["rows.json"] = _write_member(zf, "rows.json", json.dumps(rows, indent=1,
                                                                                   ensure_ascii=False).encode())
                    manifest = {
                        "format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION, "schema_version": SCHEMA_VERSION,
                        "covip_version": covip_version(), "created_at": utcnow(), "user": user,
                        "counts": {"concepts": len(concepts), "photos": len(photos), "episodes": len(episodes),
                                   "vectors": len(vec_rows)},
                        "embedding_models": model_list,
                        "files": dict(sorted(files.items())),
                    }
                    zf.writestr("manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False))
                atomic_replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            log.info("exported user %s (%d photos) to %s", user, len(photos), dest)
            return dest

    def _export_photo_file(self, zf: zipfile.ZipFile, row: dict[str, Any], name: str) -> str:
        """Copy one photo's bytes into the bundle (streamed); they must still hash to the remembered sha256."""
        home = self.mem.home
        if row["stored_path"]:
            src, where = home / row["stored_path"], "stored file"
        elif row["source_path"]:  # a home with store_copies=False keeps only the original path
            src, where = Path(row["source_path"]), "original file"
            if inside_home(home, src):  # only the store opens the home's own files
                raise BundleError(f"photo {row['id']}'s original path {src} lies inside the memory home; "
                                  "remember the photo again from its real location, then export again")
        else:
            raise BundleError(f"photo {row['id']} has neither a stored copy nor an original path; forget it "
                              "(covip forget --photo) and export again")
        h = hashlib.sha256()
        try:
            with self.mem.photo_files.open_row(row) as fh, zf.open(name, "w", force_zip64=True) as out:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            raise BundleError(f"photo {row['id']}'s {where} {src} cannot be read ({exc.strerror or exc}); run "
                              "`covip verify`, restore the file or forget the photo, then export again") from exc
        if h.hexdigest() != row["sha256"]:
            raise BundleError(f"photo {row['id']}'s {where} {src} has changed since it was remembered; run "
                              "`covip verify`, restore the file or forget the photo, then export again")
        return row["sha256"]

    def import_bundle(self, path: str | os.PathLike, *, user: str | None = None,
                      merge: bool = False, key: Any = None) -> dict[str, Any]:
        """Load a checked bundle into ``user`` (see Memory.import_bundle)."""
        mem = self.mem
        src = clean_path(path, "bundle path")
        if not src.is_file():
            raise InputError(f"bundle {src} does not exist or is not a file")
        refuse_inside_home(mem.home, src, "import a bundle from")
        target = clean_name(user, "user name") if user is not None else None
        mem._check_open()
        with contextlib.ExitStack() as stack:
            source: Any = src
            if crypto.is_sealed(src):  # decrypted as a seekable stream: no plaintext zip on disk
                source = stack.enter_context(crypto.open_sealed_bundle(src, crypto.bundle_secrets(key, mem.crypto)))
            seal = crypto.PhotoSeal(mem.crypto) if mem.crypto is not None else None
            bundle = stack.enter_context(read_bundle(source, tmp_dir=mem.home / "tmp", seal=seal,
                                                     max_pixels=mem.config.max_pixels, label=f"bundle {src.name}"))
            return self._import_checked(bundle, target or bundle.manifest.user, merge)

    def _import_checked(self, bundle: Any, target: str, merge: bool) -> dict[str, Any]:
        """Write a checked bundle as one transaction; photo files move from tmp into the photo store."""
        mem = self.mem
        rows = bundle.rows
        counts = {"user": target, "concepts": 0, "photos": 0, "episodes": 0, "vectors": 0}
        created: list[Path] = []
        new_vec_keys: set[tuple[int, str, int]] = set()
        durable = mem.config.synchronous != "NORMAL"
        with mem._lock:
            mem._check_open()
            try:
                with mem.store.write() as db:
                    row = mem.store.one("SELECT id FROM users WHERE name = ?", [target])
                    if row is not None and not merge:
                        raise ConflictError(f"user {target!r} already exists; import with merge=True "
                                            "(--merge) or choose another --user")
                    self._check_bundle_models(bundle)
                    if row is None:
                        uid = int(db["users"].insert({"name": target, "created_at": utcnow()}).last_pk)
                        mem.store.audit("add_user", uid, "user", uid)
                    else:
                        uid = int(row["id"])
                    cmap = {}
                    for c in rows.concepts:
                        existed = mem.store.concept_row(uid, c["name"]) is not None
                        cmap[c["id"]] = mem._ensure_concept(uid, c["name"], c["kind"], c["notes"])
                        counts["concepts"] += 0 if existed else 1
                    pmap = {}
                    for p in rows.photos:
                        have = mem.store.one("SELECT id, original_name FROM photos WHERE user_id = ? AND sha256 = ?",
                                             [uid, p["sha256"]])
                        if have is not None:
                            pmap[p["id"]] = have["id"]
                            if have["original_name"] is None and p["original_name"] is not None:
                                db["photos"].update(have["id"], {"original_name": p["original_name"]})
                            continue
                        img = bundle.images[p["id"]]
                        stored = mem.photo_files.name(uid, img)
                        dest = mem.home / stored
                        if not dest.exists():
                            atomic_replace(img.tmp, dest, durable=durable)  # sealed already if encrypted
                            created.append(dest)
                        pmap[p["id"]] = db["photos"].insert({
                            "user_id": uid, "sha256": img.sha256, "stored_path": stored, "source_path": None,
                            "format": img.format, "width": img.width, "height": img.height, "bytes": img.size,
                            "taken_at": p["taken_at"], "gps_lat": p["gps_lat"], "gps_lon": p["gps_lon"],
                            "place": p["place"], "created_at": p["created_at"] or utcnow(),
                            "original_name": p["original_name"]}).last_pk
                        mem.store.audit("import_photo", uid, "photo", pmap[p["id"]])
                        counts["photos"] += 1
                        for cid in p["concepts"]:
                            db.execute("INSERT OR IGNORE INTO photo_concepts (photo_id, concept_id) VALUES (?, ?)",
                                       [pmap[p["id"]], cmap[cid]])
                    for e in rows.episodes:
                        # an episode is its photo, its dialogue and its time: one already here (this bundle
                        # merged before, or synced from another device) is not added again
                        dialogue = json.dumps(e["dialogue"])
                        same = mem.store.one(
                            "SELECT id FROM episodes WHERE user_id = ? AND photo_id IS ? AND dialogue = ? "
                            "AND taken_at IS ? AND created_at IS ?",
                            [uid, pmap[e["photo_id"]], dialogue, e["taken_at"], e["created_at"]])
                        if same is not None:
                            eid = same["id"]
                        else:
                            eid = db["episodes"].insert({
                                "user_id": uid, "photo_id": pmap[e["photo_id"]], "dialogue": dialogue,
                                "taken_at": e["taken_at"], "place": e["place"],
                                "created_at": e["created_at"] or utcnow()}).last_pk
                            counts["episodes"] += 1
                        for cid in e["concepts"]:
                            db.execute("INSERT OR IGNORE INTO episode_concepts (episode_id, concept_id) VALUES (?,?)",
                                       [eid, cmap[cid]])
                    for model, photo_ids, vecs in bundle.vectors:
                        for old_pid, vec in zip(photo_ids.tolist(), vecs):
                            pid = pmap[old_pid]
                            if mem.store.scalar("SELECT 1 FROM embeddings WHERE photo_id = ? AND model_id = ?",
                                                [pid, model.model_id]):
                                continue
                            db["embeddings"].insert({"user_id": uid, "photo_id": pid, "model_id": model.model_id,
                                                     "dim": model.dim, "vector": vec.tobytes()})
                            counts["vectors"] += 1
                            new_vec_keys.add((uid, model.model_id, model.dim))
                    mem.store.audit("import_bundle", uid, "user", uid, photos=counts["photos"])
            except BaseException:
                for f in created:
                    f.unlink(missing_ok=True)
                raise
            for uid, model_id, dim in new_vec_keys:
                mem.indexes.save((uid, model_id), mem.indexes.entry(uid, model_id, dim))
            log.info("imported %s", counts)
            return counts

    def _check_bundle_models(self, bundle: Any) -> None:
        """Vectors must have the dimension this home already uses for their model id (else every search and
        index rebuild of that model would break); checked inside the import's write transaction."""
        for model, _ids, _vecs in bundle.vectors:
            dims = {int(r[0]) for r in self.mem.store.db.execute(
                "SELECT DISTINCT dim FROM embeddings WHERE model_id = ?", [model.model_id])}
            emb = self.mem._embedder
            if emb is not None and not isinstance(emb, str) and getattr(emb, "model_id", None) == model.model_id:
                dims.add(int(emb.dim))
            if dims - {model.dim}:
                raise BundleError(f"{bundle.label}: its vectors of model {model.model_id!r} have {model.dim} "
                                  f"dimensions but this memory's have {sorted(dims)[0]}; the bundle is damaged or "
                                  "from a different model with the same name")


def _photo_suffix(row: dict[str, Any]) -> str:
    path = row["stored_path"] or row["source_path"] or ""
    suffix = Path(path).suffix.lower()
    if suffix == ".enc":  # an encrypted home's stored name says nothing of the format
        from covip.sdk.imaging import _EXTENSIONS

        return _EXTENSIONS.get(str(row["format"]).upper(), ".img")
    return suffix if suffix[1:].isalnum() and len(suffix) <= 9 else ".img"


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes) -> str:
    zf.writestr(name, data)
    return hashlib.sha256(data).hexdigest()
