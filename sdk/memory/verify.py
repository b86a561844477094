"""verify(): check the memory against itself; repair(): rebuild everything derived from SQLite.

Errors make ``ok`` False (damaged SQLite, missing or altered photo files, index files that hold vectors
SQLite does not, or different vectors). Warnings are harmless states that fix themselves or are
cleaned by repair (an index lagging behind unsaved adds, orphaned photo files left by a crash).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from covip.sdk.errors import IndexCorruptError
from covip.sdk.memory.files import file_lock
from covip.sdk.memory.index import VectorIndex, read_sidecar
from covip.sdk.memory.schema import SCHEMA_VERSION, schema_version
from covip.sdk.memory.types import VerifyReport

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__: list[str] = []


class _VerifyOps:
    """verify/repair of :class:`~covip.sdk.memory.memory.Memory` (a mixin; see that class)."""

    def verify(self: Memory, *, deep: bool = True) -> VerifyReport:
        """Check SQLite integrity, photo files (hashes when ``deep``), vectors and every index file."""
        report = VerifyReport()
        with self._lock:
            self._check_open()
            self._verify_sqlite(report)
            if report.errors:
                return report
            self._verify_files(report, deep=deep)
            self._verify_indexes(report)
        return report

    def _verify_sqlite(self: Memory, report: VerifyReport) -> None:
        st = self.store
        result = [r[0] for r in st.db.execute("PRAGMA integrity_check").fetchall()]
        if result != ["ok"]:
            report.errors.append("SQLite integrity check failed: " + "; ".join(result[:5]) +
                                 " (restore from an export bundle; repair cannot fix the database itself)")
            return
        fk = st.db.execute("PRAGMA foreign_key_check").fetchall()
        if fk:
            report.errors.append(f"{len(fk)} rows point at rows that no longer exist (first: {fk[0]})")
        version = schema_version(st.db)
        if version != SCHEMA_VERSION:
            report.errors.append(f"schema version is {version}, expected {SCHEMA_VERSION}")
        dangling = st.scalar("SELECT count(*) FROM caption_cache_items WHERE photo_id NOT IN (SELECT id FROM photos)")
        if dangling:
            report.errors.append(f"{dangling} cached captions refer to forgotten photos (repair drops them)")
        for table in ("users", "concepts", "photos", "episodes", "embeddings", "caption_cache", "audit"):
            report.checked[table] = int(st.scalar(f"SELECT count(*) FROM {table}"))
        bad_dim = st.scalar("SELECT count(*) FROM embeddings WHERE length(vector) != dim * 4")
        if bad_dim:
            report.errors.append(f"{bad_dim} stored vectors have a length that does not match their dimension")

    def _verify_files(self: Memory, report: VerifyReport, *, deep: bool) -> None:
        referenced = set()
        for row in self.store.rows("SELECT id, sha256, stored_path, bytes FROM photos WHERE stored_path IS NOT NULL"):
            path = self.home / row["stored_path"]
            referenced.add(path.resolve())
            if not path.is_file():
                report.errors.append(f"photo {row['id']}: stored file {row['stored_path']} is missing")
            elif deep and hashlib.sha256(path.read_bytes()).hexdigest() != row["sha256"]:
                report.errors.append(f"photo {row['id']}: stored file {row['stored_path']} has been altered")
        orphans = [p for p in (self.home / "photos").rglob("*") if p.is_file() and p.resolve() not in referenced]
        if orphans:
            report.warnings.append(f"{len(orphans)} photo files belong to no memory (left by an interrupted "
                                   "write or forget; repair removes them)")
        pending = self.store.scalar("SELECT count(*) FROM pending_deletions")
        if pending:
            report.warnings.append(f"{pending} forgotten files are still queued for deletion (repair finishes it)")
        report.checked["photo_files"] = len(referenced)

    def _verify_indexes(self: Memory, report: VerifyReport) -> None:
        live = set()
        for g in self.store.embedding_groups():
            uid, model_id, dim = int(g["user_id"]), g["model_id"], int(g["dim"])
            path = self._index_path(uid, model_id)
            live.add(path.name)
            label = f"index of user {uid} / {model_id}"
            if not path.exists():
                report.warnings.append(f"{label}: no file yet ({g['count']} vectors not saved; written on next use)")
                continue
            try:
                index = VectorIndex.load(path, dim, self.config.index)
            except IndexCorruptError as exc:
                report.errors.append(f"{label}: {exc}")
                continue
            sql_ids = self.store.embedding_ids(uid, model_id)
            idx_ids = index.ids()
            extra = np.setdiff1d(idx_ids, sql_ids)
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
                stored = index.vectors()[[order[int(i)] for i in common]]
                truth = self.store.embedding_vectors(common.tolist(), dim)
                diff = float(np.max(np.abs(stored - truth)))
                if diff > 1e-5:
                    report.errors.append(f"{label}: vectors differ from SQLite (max abs diff {diff:.3g})")
            report.checked[f"index u{uid}/{model_id}"] = int(index.ntotal)
        for path in (self.home / "index").glob("*.faiss"):
            if path.name not in live:
                report.errors.append(f"index file {path.name} belongs to no user/model with vectors "
                                     "(stale after a forget; repair removes it)")

    def repair(self: Memory) -> VerifyReport:
        """Rebuild every index from SQLite, remove stale index files and orphan photo files, drop dangling
        cached captions. Returns the verify report after repairing (``repaired`` lists what was done)."""
        done: list[str] = []
        with self._lock:
            self._check_open()
            with self.store.write() as db:
                n = self.store.scalar("SELECT count(*) FROM caption_cache_items WHERE photo_id NOT IN "
                                      "(SELECT id FROM photos)")
                if n:
                    ids = [r[0] for r in db.execute("SELECT DISTINCT cache_id FROM caption_cache_items "
                                                    "WHERE photo_id NOT IN (SELECT id FROM photos)")]
                    self.store.delete_captions(ids)
                    done.append(f"dropped {len(ids)} cached captions that used forgotten photos")
            removed = self._finish_pending_deletions()
            if removed:
                done.append(f"deleted {removed} queued files of forgotten photos")
            live = set()
            for g in self.store.embedding_groups():
                uid, model_id, dim = int(g["user_id"]), g["model_id"], int(g["dim"])
                key = (uid, model_id)
                live.add(self._index_path(uid, model_id).name)
                with file_lock(self._lock_path(uid, model_id)):
                    ids = self.store.embedding_ids(uid, model_id)
                    index = VectorIndex(dim, self.config.index)
                    index.rebuild(ids, self.store.embedding_vectors(ids.tolist(), dim))
                    index.save(self._index_path(uid, model_id), self.home / "tmp",
                               meta={"user_id": uid, "model_id": model_id})
                self._indexes.pop(key, None)
                done.append(f"rebuilt index of user {uid} / {model_id} ({len(ids)} vectors)")
            for path in (self.home / "index").glob("*.faiss"):
                if path.name not in live:
                    side = read_sidecar(path) or {}
                    path.unlink(missing_ok=True)
                    path.with_suffix(".json").unlink(missing_ok=True)
                    done.append(f"removed stale index file {path.name} ({side.get('count', '?')} vectors)")
            with self.store.write():  # the write lock keeps a concurrent remember from losing its new file
                referenced = {(self.home / r[0]).resolve() for r in
                              self.store.db.execute("SELECT stored_path FROM photos WHERE stored_path IS NOT NULL")}
                orphans = [p for p in (self.home / "photos").rglob("*")
                           if p.is_file() and p.resolve() not in referenced]
                for p in orphans:
                    p.unlink(missing_ok=True)
            if orphans:
                done.append(f"removed {len(orphans)} orphan photo files")
            self._scrub()
            report = self.verify()
            report.repaired = done
            return report
