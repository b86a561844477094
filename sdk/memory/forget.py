"""Forgetting: photos, concepts, whole users, cascading to vectors, cached captions and stored files.

After a forget, the deleted text and image bytes are gone from every file under the home: SQLite runs
with ``secure_delete`` (freed pages are zeroed), the WAL is checkpointed and truncated, the index files
are rewritten without the vectors, and stored photo copies are unlinked (through a ``pending_deletions``
table, so a crash between commit and unlink is finished on the next open). The audit log keeps ids only.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covip.sdk.files import file_lock
from covip.sdk.memory.schema import utcnow
from covip.sdk.memory.types import ForgetReport
from covip.sdk.memory.validate import clean_flag

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__: list[str] = []


def _chunks(ids: Sequence[int], size: int = 900):
    ids = list(ids)
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


class _ForgetOps:
    """Forget operations of :class:`~covip.sdk.memory.memory.Memory` (a mixin; see that class)."""

    def forget_photo(self: Memory, user: str, photo: Any) -> ForgetReport:
        """Forget one photo (by id, path or bytes): its episodes, vectors, cached captions and stored copy."""
        with self._lock:
            self._check_open()
            record = self.find_photo(user, photo)
            with self.store.write():
                uid = self._uid(user)
                counts, keys = self._delete_photos(uid, [record.id])
            return self._after_forget(counts, keys)

    def forget_concept(self: Memory, user: str, name: str, *, keep_shared_photos: bool = False) -> ForgetReport:
        """Forget a concept with every photo showing it and every dialogue tied to it.

        ``keep_shared_photos=True`` keeps photos that also show other concepts (only the link and the
        dialogues tied to this concept go).
        """
        keep_shared_photos = clean_flag(keep_shared_photos, "keep_shared_photos")
        with self._lock:
            self._check_open()
            with self.store.write() as db:
                uid = self._uid(user)
                concept = self._concept(uid, name)
                cid = concept["id"]
                pids = [r[0] for r in db.execute("SELECT photo_id FROM photo_concepts WHERE concept_id = ?", [cid])]
                if keep_shared_photos:
                    doomed = [r[0] for r in db.execute(
                        "SELECT pc.photo_id FROM photo_concepts pc WHERE pc.concept_id = ? AND NOT EXISTS "
                        "(SELECT 1 FROM photo_concepts o WHERE o.photo_id = pc.photo_id AND o.concept_id != ?)",
                        [cid, cid])]
                else:
                    doomed = pids
                self.store.invalidate_captions_for_photos(pids)
                counts, keys = self._delete_photos(uid, doomed)
                # dialogues about this concept on photos that stay
                eps = [r[0] for r in db.execute("SELECT episode_id FROM episode_concepts WHERE concept_id = ?", [cid])]
                for chunk, marks in _chunks(eps):
                    db.execute(f"DELETE FROM episode_concepts WHERE episode_id IN ({marks})", chunk)
                    db.execute(f"DELETE FROM episodes WHERE id IN ({marks})", chunk)
                counts["episodes"] += len(eps)
                db.execute("DELETE FROM photo_concepts WHERE concept_id = ?", [cid])
                db.execute("DELETE FROM concept_shares WHERE concept_id = ?", [cid])
                db.execute("DELETE FROM concepts WHERE id = ?", [cid])
                counts["concepts"] += 1
                self.store.audit("forget_concept", uid, "concept", cid, photos=counts["photos"],
                                 episodes=counts["episodes"])
            return self._after_forget(counts, keys)

    def forget_user(self: Memory, user: str) -> ForgetReport:
        """Forget a user entirely: photos, concepts, dialogues, vectors, captions, shares and files."""
        with self._lock:
            self._check_open()
            with self.store.write() as db:
                uid = self._uid(user)
                pids = [r[0] for r in db.execute("SELECT id FROM photos WHERE user_id = ?", [uid])]
                counts, keys = self._delete_photos(uid, pids)
                cids = [r[0] for r in db.execute("SELECT id FROM concepts WHERE user_id = ?", [uid])]
                for chunk, marks in _chunks(cids):
                    db.execute(f"DELETE FROM concept_shares WHERE concept_id IN ({marks})", chunk)
                    db.execute(f"DELETE FROM episode_concepts WHERE concept_id IN ({marks})", chunk)
                    db.execute(f"DELETE FROM photo_concepts WHERE concept_id IN ({marks})", chunk)
                db.execute("DELETE FROM concept_shares WHERE user_id = ?", [uid])
                db.execute("DELETE FROM concepts WHERE user_id = ?", [uid])
                counts["concepts"] += len(cids)
                cache_ids = [r[0] for r in db.execute("SELECT id FROM caption_cache WHERE user_id = ?", [uid])]
                counts["captions"] += self.store.delete_captions(cache_ids)
                db.execute("DELETE FROM users WHERE id = ?", [uid])
                self.store.audit("forget_user", uid, "user", uid, photos=counts["photos"])
                counts["users"] = 1
            report = self._after_forget(counts, keys)
            for key in [k for k in self._indexes if k[0] == uid]:
                self._indexes.pop(key, None)
            shutil.rmtree(self.home / "photos" / f"u{uid}", ignore_errors=True)
            for path in (self.home / "index").glob(f"u{uid}-*"):
                path.unlink(missing_ok=True)
            for path in (self.home / "locks").glob(f"u{uid}-*"):
                path.unlink(missing_ok=True)
            return report

    # ------------------------------------------------------------------ internals
    def _delete_photos(self: Memory, uid: int, photo_ids: Sequence[int]) -> tuple[dict[str, int], set]:
        """Delete photos and everything hanging off them (inside the caller's write transaction)."""
        db = self.store.db
        counts = {"photos": 0, "episodes": 0, "concepts": 0, "vectors": 0, "captions": 0, "files": 0, "users": 0}
        keys: set[tuple[int, str]] = set()
        counts["captions"] += self.store.invalidate_captions_for_photos(photo_ids)
        now = utcnow()
        for chunk, marks in _chunks(photo_ids):
            rows = self.store.rows(f"SELECT id, sha256, stored_path FROM photos WHERE id IN ({marks})", chunk)
            shas = [r["sha256"] for r in rows]
            for r in rows:
                if r["stored_path"]:
                    db.execute("INSERT OR IGNORE INTO pending_deletions (path, queued_at) VALUES (?, ?)",
                               [r["stored_path"], now])
            if shas:  # captions *of* these photos as the query
                smarks = ",".join("?" * len(shas))
                cache_ids = [x[0] for x in db.execute(
                    f"SELECT id FROM caption_cache WHERE user_id = ? AND photo_sha256 IN ({smarks})", [uid, *shas])]
                counts["captions"] += self.store.delete_captions(cache_ids)
            eps = [x[0] for x in db.execute(f"SELECT id FROM episodes WHERE photo_id IN ({marks})", chunk)]
            for echunk, emarks in _chunks(eps):
                db.execute(f"DELETE FROM episode_concepts WHERE episode_id IN ({emarks})", echunk)
            db.execute(f"DELETE FROM episodes WHERE photo_id IN ({marks})", chunk)
            counts["episodes"] += len(eps)
            for owner, model_id, n in db.execute(
                    f"SELECT user_id, model_id, count(*) FROM embeddings WHERE photo_id IN ({marks}) "
                    "GROUP BY user_id, model_id", chunk).fetchall():
                keys.add((int(owner), model_id))
                counts["vectors"] += int(n)
            db.execute(f"DELETE FROM embeddings WHERE photo_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM photo_concepts WHERE photo_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM photos WHERE id IN ({marks})", chunk)
            counts["photos"] += len(rows)
            for r in rows:
                self.store.audit("forget_photo", uid, "photo", r["id"])
        return counts, keys

    def _after_forget(self: Memory, counts: dict[str, int], keys: set) -> ForgetReport:
        """After the commit: rewrite the affected index files, unlink files, scrub the WAL."""
        for uid, model_id in keys:
            with file_lock(self._lock_path(uid, model_id)):
                if self.store.embedding_stats(uid, model_id)[0] == 0:
                    self._remove_index_files(uid, model_id)
                    continue
            if self.store.embedding_dim(uid, model_id) is None:
                continue  # only unusable vectors are left: verify reports them, repair rebuilds them
            self._save_index((uid, model_id), self._entry(uid, model_id))
        counts["files"] = self._finish_pending_deletions()
        scrubbed = self._scrub()
        return ForgetReport(**counts, scrubbed=scrubbed)

    def _finish_pending_deletions(self: Memory) -> int:
        """Unlink queued photo files no row references any more (also run on open after a crash)."""
        removed = 0
        with self.store.write() as db:
            for row in self.store.rows("SELECT path FROM pending_deletions"):
                rel = row["path"]
                path = self.store.stored_file(rel)  # never a file outside the photo store, whatever the row says
                if path is None:
                    log.warning("ignored a queued deletion of %r: not a file of the photo store", rel)
                elif self.store.scalar("SELECT 1 FROM photos WHERE stored_path = ?", [rel]) is None:
                    if path.is_symlink() or path.exists():
                        path.unlink()
                        removed += 1
                db.execute("DELETE FROM pending_deletions WHERE path = ?", [rel])
        return removed

    def _scrub(self: Memory) -> bool:
        """Checkpoint and truncate the WAL so deleted page images do not linger in it."""
        ok = self.store.checkpoint_truncate()
        if not ok:
            log.warning("another process is reading this memory, so the WAL could not be truncated yet; "
                        "forgotten data leaves the WAL file at the next checkpoint")
        return ok
