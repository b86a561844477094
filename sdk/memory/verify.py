"""verify(): check the memory against itself; repair(): rebuild everything derived from SQLite. Both are done by
:class:`Verifier`, the collaborator of :class:`~covip.sdk.memory.memory.Memory` that checks and mends a home.

Errors make ``ok`` False (damaged SQLite, missing or altered photo files, unusable stored vectors, index
files that hold vectors SQLite does not, or different vectors). Warnings are harmless states that fix
themselves or are cleaned by repair (an index lagging behind unsaved adds, photo files that belong to no
memory, files other users could read, files waiting in quarantine).

Repair never deletes what it cannot prove is garbage: photo files no row refers to are moved to
``quarantine/<time>/`` in the home (listed in the report), never unlinked. What it does delete is
provably derived or forgotten: stale index files, files of forgotten photos, cached captions of forgotten
photos, and stored vectors that cannot be used (re-embedded from their photo when it can).
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from covip.sdk.errors import CovipError, IndexCorruptError
from covip.sdk.files import file_lock
from covip.sdk.imaging import load_photo
from covip.sdk.memory import crypto
from covip.sdk.memory.forget import finish_pending_deletions, scrub
from covip.sdk.memory.index import VectorIndex, read_sidecar
from covip.sdk.memory.layout import (
    QUARANTINE,
    loose_modes,
    move_to_quarantine,
    new_quarantine,
    quarantine_summary,
    tighten_modes,
)
from covip.sdk.memory.schema import SCHEMA_VERSION, schema_version
from covip.sdk.memory.store import corrupt_message
from covip.sdk.memory.types import VerifyReport
from covip.sdk.memory.validate import clean_flag

if TYPE_CHECKING:
    from pathlib import Path

    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__: list[str] = []

_SHOW = 10  # rows named in one message


def _listing(items: list[str]) -> str:
    return "; ".join(items[:_SHOW]) + (f"; ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


class Verifier:
    """verify/repair of a Memory (see the Memory methods of the same names); index files are named through
    ``mem.indexes`` and stored photos checked through ``mem.photo_files``."""

    def __init__(self, mem: Memory) -> None:
        self.mem = weakref.proxy(mem)  # weak: an unclosed Memory that is dropped is freed at once, as before

    def verify(self, *, deep: bool = True) -> VerifyReport:
        """Check the memory against itself (see Memory.verify)."""
        mem = self.mem
        deep = clean_flag(deep, "deep")
        report = VerifyReport()
        with mem._lock:
            mem._check_open()
            self._verify_home(report)
            if not self._verify_sqlite(report):
                return report
            self._verify_files(report, deep=deep)
            bad = self._verify_vectors(report)
            self._verify_indexes(report, bad)
        return report

    # ------------------------------------------------------------------ checks
    def _verify_sqlite(self, report: VerifyReport) -> bool:
        """SQLite's own integrity check and the schema; False (with the recovery path) when it is damaged."""
        st = self.mem.store
        try:
            result = [r[0] for r in st.db.execute("PRAGMA integrity_check").fetchall()]
            if result != ["ok"]:
                report.errors.append(corrupt_message(st.path, "integrity check: " + "; ".join(result[:5])))
                return False
            fk = st.db.execute("PRAGMA foreign_key_check").fetchall()
            if fk:
                report.errors.append(f"{len(fk)} rows point at rows that no longer exist (first: {fk[0]})")
            version = schema_version(st.db)
            if version != SCHEMA_VERSION:
                report.errors.append(f"schema version is {version}, expected {SCHEMA_VERSION}")
            dangling = st.scalar("SELECT count(*) FROM caption_cache_items "
                                 "WHERE photo_id NOT IN (SELECT id FROM photos)")
            if dangling:
                report.errors.append(f"{dangling} cached captions refer to forgotten photos (repair drops them)")
            for table in ("users", "concepts", "photos", "episodes", "embeddings", "caption_cache", "audit"):
                report.checked[table] = int(st.scalar(f"SELECT count(*) FROM {table}"))
        except crypto.db_errors() as exc:  # SQLCipher's errors too, in an encrypted home
            report.errors.append(corrupt_message(st.path, str(exc)))
            return False
        return True

    def _verify_home(self, report: VerifyReport) -> None:
        """File modes other users could read through, and what waits in quarantine."""
        mem = self.mem
        loose = loose_modes(mem.home)
        if loose:
            shown = ", ".join(f"{rel} {mode:04o}" for rel, mode in loose[:5])
            report.warnings.append(
                f"{len(loose)} files or folders of this memory can be read by other users of this computer "
                f"({shown}{', ...' if len(loose) > 5 else ''}); repair makes them private (folders 0700, files 0600)")
        count, folders = quarantine_summary(mem.home)
        if count:
            report.checked["quarantined_files"] = count
            report.warnings.append(
                f"{mem.home / QUARANTINE} holds {count} files set aside by repair or a fresh start (in "
                f"{', '.join(folders[:5])}{', ...' if len(folders) > 5 else ''}); they are not part of the memory. "
                "Copy the photos you want out of the home and remember them again, then delete the folder")

    def _verify_files(self, report: VerifyReport, *, deep: bool) -> None:
        mem = self.mem
        referenced = set()
        for row in mem.store.rows("SELECT id, sha256, stored_path, bytes FROM photos WHERE stored_path IS NOT NULL"):
            path = mem.store.stored_file(row["stored_path"])
            if path is None:
                report.errors.append(f"photo {row['id']}: its stored path {str(row['stored_path'])[:100]!r} is not "
                                     "a file of the photo store (the row is damaged; forget the photo)")
                continue
            referenced.add(path.resolve())
            if not path.is_file():
                report.errors.append(f"photo {row['id']}: stored file {row['stored_path']} is missing")
            elif deep and (problem := mem.photo_files.problem(row, deep=True)):  # decrypts when encrypted
                report.errors.append(f"photo {row['id']}: {problem}")
        orphans = self._orphan_photo_files(referenced)
        if orphans:
            report.warnings.append(
                f"{len(orphans)} photo files belong to no memory (left by an interrupted write, or their rows "
                f"were lost): {_listing([str(p.relative_to(mem.home)) for p in orphans])}; repair moves them to "
                f"{QUARANTINE}/ in the home (nothing is deleted)")
        pending = mem.store.scalar("SELECT count(*) FROM pending_deletions")
        if pending:
            report.warnings.append(f"{pending} forgotten files are still queued for deletion (repair finishes it)")
        report.checked["photo_files"] = len(referenced)

    def _orphan_photo_files(self, referenced: set[Path] | None = None) -> list[Path]:
        """Files in the photo store that no photo row refers to."""
        mem = self.mem
        if referenced is None:
            referenced = set()
            for (rel,) in mem.store.db.execute("SELECT stored_path FROM photos WHERE stored_path IS NOT NULL"):
                path = mem.store.stored_file(rel)
                if path is not None:
                    referenced.add(path.resolve())
        return sorted(p for p in (mem.home / "photos").rglob("*")
                      if (p.is_file() or p.is_symlink()) and p.resolve() not in referenced)

    def _bad_vectors(self) -> list[dict[str, Any]]:
        """Every (user, model) with unusable stored vectors: {user_id, model_id, dim, rows}; rows whose owner or
        model id has the wrong type come as one entry with model_id None."""
        mem = self.mem
        out = []
        for g in mem.store.embedding_groups():
            uid, mid, dim = int(g["user_id"]), g["model_id"], g["dim"]
            if dim is None:
                rows = mem.store.rows("SELECT id, photo_id, dim FROM embeddings WHERE user_id = ? AND model_id = ?",
                                      [uid, mid])
                rows = [{"id": r["id"], "photo_id": r["photo_id"], "problem": f"has dimension {r['dim']!r}"}
                        for r in rows]
            else:
                rows = mem.store.bad_embeddings(uid, mid, int(dim))
            if rows:
                out.append({"user_id": uid, "model_id": mid, "dim": dim, "rows": rows})
        malformed = mem.store.malformed_embeddings()
        if malformed:
            out.append({"user_id": None, "model_id": None, "dim": None, "rows": [
                {"id": r["id"], "photo_id": r["photo_id"],
                 "problem": f"has a {r['user_type']} owner and a {r['model_type']} model id"} for r in malformed]})
        return out

    def _verify_vectors(self, report: VerifyReport) -> dict[tuple[int, str], set[int]]:
        """Report unusable stored vectors by row; returns their ids per (user, model)."""
        bad: dict[tuple[int, str], set[int]] = {}
        for group in self._bad_vectors():
            rows = group["rows"]
            if group["model_id"] is None:
                label = "vectors of no valid user or model"
            else:
                label = f"user {group['user_id']} / model {group['model_id']!r}"
                bad[(group["user_id"], group["model_id"])] = {r["id"] for r in rows}
            report.errors.append(
                f"{label}: {len(rows)} stored vectors are unusable and left out of search: "
                + _listing([f"vector {r['id']} of photo {r['photo_id']} {r['problem']}" for r in rows])
                + " (repair re-embeds them from their stored photos when this home's embedder made them, else "
                "drops them; photos and dialogues stay)")
        return bad

    def _verify_indexes(self, report: VerifyReport, bad: dict[tuple[int, str], set[int]]) -> None:
        mem = self.mem
        live = set()
        for g in mem.store.embedding_groups():
            uid, model_id = int(g["user_id"]), g["model_id"]
            path = mem.indexes.path(uid, model_id)
            live.add(path.name)
            if g["dim"] is None:
                continue  # reported with the unusable vectors
            dim = int(g["dim"])
            label = f"index of user {uid} / {model_id}"
            if not path.exists():
                report.warnings.append(f"{label}: no file yet ({g['count']} vectors not saved; written on next use)")
                continue
            try:
                index = VectorIndex.load(path, dim, mem.config.index, key=mem.crypto)
            except IndexCorruptError as exc:
                report.errors.append(f"{label}: {exc}")
                continue
            skip = np.array(sorted(bad.get((uid, model_id), ())), dtype=np.int64)
            sql_ids = mem.store.embedding_ids(uid, model_id)
            sql_ids = sql_ids[~np.isin(sql_ids, skip)]
            idx_ids = index.ids()
            extra = np.setdiff1d(idx_ids[~np.isin(idx_ids, skip)], sql_ids)  # unusable rows: reported above
            missing = np.setdiff1d(sql_ids, idx_ids)
            if len(extra):
                report.errors.append(f"{label}: holds {len(extra)} vectors that SQLite does not (forgotten "
                                     "data still indexed; repair rebuilds the index)")
            if len(np.unique(idx_ids)) != len(idx_ids):
                report.errors.append(f"{label}: holds duplicate ids")
            if len(missing):
                report.warnings.append(f"{label}: lags SQLite by {len(missing)} unsaved vectors "
                                       "(caught up automatically on next use)")
            common = np.intersect1d(idx_ids, sql_ids)
            if len(common):
                order = {int(i): n for n, i in enumerate(idx_ids)}
                good, truth, _ = mem.store.embedding_vectors(common.tolist(), dim)
                stored = index.vectors()[[order[int(i)] for i in good]]
                diff = float(np.max(np.abs(stored - truth))) if len(good) else 0.0
                if diff > 1e-5:
                    report.errors.append(f"{label}: vectors differ from SQLite (max abs diff {diff:.3g})")
            report.checked[f"index u{uid}/{model_id}"] = int(index.ntotal)
        for path in (mem.home / "index").glob("*.faiss"):
            if path.name not in live:
                report.errors.append(f"index file {path.name} belongs to no user/model with vectors "
                                     "(stale after a forget; repair removes it)")

    # ------------------------------------------------------------------ repair
    def repair(self) -> VerifyReport:
        """Rebuild everything derived from SQLite (see Memory.repair)."""
        mem = self.mem
        done: list[str] = []
        with mem._lock:
            mem._check_open()
            check = VerifyReport()
            if not self._verify_sqlite(check):
                check.errors.append("repair changed nothing: it cannot rebuild the database itself")
                return check
            with mem.store.write() as db:
                n = mem.store.scalar("SELECT count(*) FROM caption_cache_items WHERE photo_id NOT IN "
                                     "(SELECT id FROM photos)")
                if n:
                    ids = [r[0] for r in db.execute("SELECT DISTINCT cache_id FROM caption_cache_items "
                                                    "WHERE photo_id NOT IN (SELECT id FROM photos)")]
                    mem.store.delete_captions(ids)
                    done.append(f"dropped {len(ids)} cached captions that used forgotten photos")
            removed = finish_pending_deletions(mem.store)
            if removed:
                done.append(f"deleted {removed} queued files of forgotten photos")
            done += self._repair_vectors()
            done += self._rebuild_indexes()
            done += self._quarantine_orphans()
            changed, failed = tighten_modes(mem.home)
            if changed:
                done.append(f"made {changed} files and folders private (folders 0700, files 0600)")
            if failed:
                done.append(f"could not make private: {_listing(failed)}")
            scrub(mem.store)
            report = mem.verify()
            report.repaired = done
            return report

    def _rebuild_indexes(self) -> list[str]:
        mem = self.mem
        done = []
        live = set()
        for g in mem.store.embedding_groups():
            uid, model_id = int(g["user_id"]), g["model_id"]
            key = (uid, model_id)
            live.add(mem.indexes.path(uid, model_id).name)
            if g["dim"] is None:
                continue
            dim = int(g["dim"])
            with file_lock(mem.indexes.lock_path(uid, model_id)):
                with mem.store.read():
                    count, max_id = mem.store.embedding_stats(uid, model_id)
                    ids, vectors, _bad = mem.store.embedding_vectors(
                        mem.store.embedding_ids(uid, model_id).tolist(), dim)
                index = VectorIndex(dim, mem.config.index)
                index.rebuild(ids, vectors)
                index.save(mem.indexes.path(uid, model_id), mem.home / "tmp",
                           meta={"user_id": uid, "model_id": model_id, "synced": [count, max_id]}, key=mem.crypto)
            mem.indexes.drop(key)
            done.append(f"rebuilt index of user {uid} / {model_id} ({len(ids)} vectors)")
        for path in (mem.home / "index").glob("*.faiss"):
            if path.name not in live:
                side = read_sidecar(path, mem.crypto) or {}
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)
                done.append(f"removed stale index file {path.name} ({side.get('count', '?')} vectors)")
        return done

    def _quarantine_orphans(self) -> list[str]:
        """Move photo files no row refers to into quarantine/<time>/ (they may be the only copy of a photo
        whose row was lost, so they are never deleted)."""
        mem = self.mem
        with mem.store.write():  # the write lock keeps a concurrent remember from losing its new file
            orphans = self._orphan_photo_files()
            if not orphans:
                return []
            folder = new_quarantine(mem.home)
            moved = move_to_quarantine(mem.home, orphans, folder)
        where = folder.relative_to(mem.home)
        log.warning("moved %d photo files that belong to no memory to %s", len(moved), folder)
        return [f"moved {len(moved)} photo files that belong to no memory to {where}/ (nothing was deleted): "
                f"{_listing(moved)}. To keep one, copy it out of the home and remember it again; delete "
                f"{folder} when you no longer need them"]

    def _repair_vectors(self) -> list[str]:
        """Re-embed unusable stored vectors from their stored photos when this home's embedder made them, else
        drop them (the photo and its dialogues stay; remembering the photo again makes it searchable)."""
        mem = self.mem
        groups = self._bad_vectors()
        if not groups:
            return []
        emb, why_not = None, ""
        if mem._embedder is None and not mem.settings.get("embedder"):
            why_not = " (this home has no embedder configured to re-embed them: see `covip init --embedder`)"
        else:  # only the home's own embedder: repair never fetches a default model
            try:
                emb = mem.embedder
            except CovipError as exc:
                why_not = f" (this home's embedder could not be built: {exc})"
        redo: dict[int, dict[str, Any]] = {}  # embedding id -> row (+ group) to re-embed
        drop: dict[int, str] = {}  # embedding id -> why
        for g in groups:
            rows = g["rows"]
            if emb is not None and g["model_id"] == emb.model_id:
                if g["dim"] != emb.dim:  # most rows are the damaged ones: the embedder's length is the truth
                    rows = mem.store.bad_embeddings(g["user_id"], g["model_id"], int(emb.dim))
                for r in rows:
                    redo[r["id"]] = {**r, "user_id": g["user_id"], "model_id": g["model_id"]}
            else:
                for r in rows:
                    drop[r["id"]] = f"vector {r['id']} of photo {r['photo_id']} {r['problem']}"
        fresh = self._reembed(emb, redo, drop) if redo else {}
        with mem.store.write() as db:
            for eid in drop:
                db.execute("DELETE FROM embeddings WHERE id = ?", [eid])
            for eid, (row, vec) in fresh.items():
                if mem.store.scalar("SELECT 1 FROM embeddings WHERE id = ?", [eid]) is None:
                    continue  # forgotten meanwhile
                db.execute("DELETE FROM embeddings WHERE id = ?", [eid])
                db["embeddings"].insert({"user_id": row["user_id"], "photo_id": row["photo_id"],
                                         "model_id": row["model_id"], "dim": int(vec.shape[0]),
                                         "vector": vec.tobytes()})
            mem.store.audit("repair_vectors", None, "embeddings", None, reembedded=len(fresh), dropped=len(drop))
        for g in groups:
            if g["model_id"] is not None:
                mem.indexes.drop((g["user_id"], g["model_id"]))
        done = []
        if fresh:
            done.append(f"re-embedded {len(fresh)} unusable stored vectors from their stored photos: "
                        + _listing([f"vector {e} of photo {r['photo_id']} ({r['problem']})"
                                    for e, (r, _) in fresh.items()]))
        if drop:
            done.append(f"dropped {len(drop)} unusable stored vectors{why_not}: {_listing(list(drop.values()))}; "
                        "their photos and dialogues are kept (remember a photo again to make it searchable)")
        return done

    def _reembed(self, emb: Any, redo: dict[int, dict[str, Any]],
                 drop: dict[int, str]) -> dict[int, tuple[dict[str, Any], np.ndarray]]:
        """New vectors for ``redo`` rows from their verified stored photos; rows that cannot be go to ``drop``."""
        mem = self.mem
        fresh: dict[int, tuple[dict[str, Any], np.ndarray]] = {}
        todo = list(redo.items())
        for start in range(0, len(todo), 16):
            batch, images = [], []
            for eid, r in todo[start:start + 16]:
                photo = mem.store.one("SELECT sha256, stored_path FROM photos WHERE id = ?", [r["photo_id"]])
                path = mem.store.stored_file(photo["stored_path"]) if photo else None
                try:
                    if path is None:
                        raise FileNotFoundError("no stored copy")
                    data = crypto.read_file(path, mem.crypto, "photo")
                    if hashlib.sha256(data).hexdigest() != photo["sha256"]:
                        raise ValueError("the stored copy has been altered")
                    images.append(load_photo(data, max_pixels=mem.config.max_pixels).image)
                    batch.append((eid, r))
                except (OSError, ValueError, CovipError) as exc:
                    drop[eid] = (f"vector {eid} of photo {r['photo_id']} {r['problem']}, and its photo cannot be "
                                 f"re-embedded ({exc})")
            if not batch:
                continue
            for (eid, r), vec in zip(batch, emb.embed_images(images)):
                try:
                    fresh[eid] = (r, mem._check_embedding(vec, int(emb.dim)))
                except CovipError as exc:
                    drop[eid] = f"vector {eid} of photo {r['photo_id']} {r['problem']} (re-embedding failed: {exc})"
        return fresh
