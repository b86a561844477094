"""Forgetting: :class:`Forgetter`, the collaborator of :class:`~covip.sdk.memory.memory.Memory` that forgets
photos, concepts and whole users, cascading to vectors, cached captions and stored files.

After a forget, the deleted text and image bytes are gone from every file under the home: SQLite runs
with ``secure_delete`` (freed pages are zeroed), the WAL is checkpointed and truncated, the index files
are rewritten without the vectors, and stored photo copies are unlinked (through a ``pending_deletions``
table, so a crash between commit and unlink is finished on the next open). The audit log keeps ids only.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covip.sdk.files import file_lock
from covip.sdk.memory.schema import utcnow
from covip.sdk.memory.types import ForgetReport
from covip.sdk.memory.validate import clean_flag

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory
    from covip.sdk.memory.store import Store

log = logging.getLogger(__name__)

__all__: list[str] = []


def _chunks(ids: Sequence[int], size: int = 900):
    ids = list(ids)
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        yield chunk, ",".join("?" * len(chunk))


class Forgetter:
    """Forget operations of a Memory (see the Memory methods of the same names); it reaches index files and
    photo files through ``mem.indexes`` and ``mem.photo_files``."""

    def __init__(self, mem: Memory) -> None:
        self.mem = weakref.proxy(mem)  # weak: an unclosed Memory that is dropped is freed at once, as before

    def forget_photo(self, user: str, photo: Any) -> ForgetReport:
        """Forget one photo (see Memory.forget_photo)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            record = mem.find_photo(user, photo)
            with mem.store.write():
                uid = mem._uid(user)
                counts, keys = self._delete_photos(uid, [record.id])
            return self._after_forget(counts, keys)

    def forget_concept(self, user: str, name: str, *, keep_shared_photos: bool = False) -> ForgetReport:
        """Forget a concept (see Memory.forget_concept)."""
        mem = self.mem
        keep_shared_photos = clean_flag(keep_shared_photos, "keep_shared_photos")
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                concept = mem._concept(uid, name)
                cid = concept["id"]
                pids = [r[0] for r in db.execute("SELECT photo_id FROM photo_concepts WHERE concept_id = ?", [cid])]
                if keep_shared_photos:
                    doomed = [r[0] for r in db.execute(
                        "SELECT pc.photo_id FROM photo_concepts pc WHERE pc.concept_id = ? AND NOT EXISTS "
                        "(SELECT 1 FROM photo_concepts o WHERE o.photo_id = pc.photo_id AND o.concept_id != ?)",
                        [cid, cid])]
                else:
                    doomed = pids
                mem.store.invalidate_captions_for_photos(pids)
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
                mem.store.audit("forget_concept", uid, "concept", cid, photos=counts["photos"],
                                episodes=counts["episodes"])
            return self._after_forget(counts, keys)

    def forget_user(self, user: str) -> ForgetReport:
        """Forget a user entirely (see Memory.forget_user)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
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
                counts["captions"] += mem.store.delete_captions(cache_ids)
                db.execute("DELETE FROM users WHERE id = ?", [uid])
                mem.store.audit("forget_user", uid, "user", uid, photos=counts["photos"])
                counts["users"] = 1
            report = self._after_forget(counts, keys)
            mem.indexes.drop_user(uid)
            mem.photo_files.remove_user(uid)
            mem.indexes.remove_user_files(uid)
            return report

    # ------------------------------------------------------------------ internals
    def _delete_photos(self, uid: int, photo_ids: Sequence[int]) -> tuple[dict[str, int], set]:
        """Delete photos and everything hanging off them (inside the caller's write transaction)."""
        store = self.mem.store
        db = store.db
        counts = {"photos": 0, "episodes": 0, "concepts": 0, "vectors": 0, "captions": 0, "files": 0, "users": 0}
        keys: set[tuple[int, str]] = set()
        counts["captions"] += store.invalidate_captions_for_photos(photo_ids)
        now = utcnow()
        for chunk, marks in _chunks(photo_ids):
            rows = store.rows(f"SELECT id, sha256, stored_path FROM photos WHERE id IN ({marks})", chunk)
            shas = [r["sha256"] for r in rows]
            for r in rows:
                if r["stored_path"]:
                    db.execute("INSERT OR IGNORE INTO pending_deletions (path, queued_at) VALUES (?, ?)",
                               [r["stored_path"], now])
            if shas:  # captions *of* these photos as the query
                smarks = ",".join("?" * len(shas))
                cache_ids = [x[0] for x in db.execute(
                    f"SELECT id FROM caption_cache WHERE user_id = ? AND photo_sha256 IN ({smarks})", [uid, *shas])]
                counts["captions"] += store.delete_captions(cache_ids)
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
                store.audit("forget_photo", uid, "photo", r["id"])
        return counts, keys

    def _after_forget(self, counts: dict[str, int], keys: set) -> ForgetReport:
        """After the commit: rewrite the affected index files, unlink files, scrub the WAL."""
        store, indexes = self.mem.store, self.mem.indexes
        for uid, model_id in keys:
            with file_lock(indexes.lock_path(uid, model_id)):
                if store.embedding_stats(uid, model_id)[0] == 0:
                    indexes.remove_files(uid, model_id)
                    continue
            if store.embedding_dim(uid, model_id) is None:
                continue  # only unusable vectors are left: verify reports them, repair rebuilds them
            indexes.save((uid, model_id), indexes.entry(uid, model_id))
        counts["files"] = finish_pending_deletions(store)
        scrubbed = scrub(store)
        return ForgetReport(**counts, scrubbed=scrubbed)


def finish_pending_deletions(store: Store) -> int:
    """Unlink queued photo files no row references any more (also run on open after a crash)."""
    removed = 0
    with store.write() as db:
        for row in store.rows("SELECT path FROM pending_deletions"):
            rel = row["path"]
            path = store.stored_file(rel)  # never a file outside the photo store, whatever the row says
            if path is None:
                log.warning("ignored a queued deletion of %r: not a file of the photo store", rel)
            elif store.scalar("SELECT 1 FROM photos WHERE stored_path = ?", [rel]) is None:
                if path.is_symlink() or path.exists():
                    path.unlink()
                    removed += 1
            db.execute("DELETE FROM pending_deletions WHERE path = ?", [rel])
    return removed


def scrub(store: Store) -> bool:
    """Checkpoint and truncate the WAL so deleted page images do not linger in it."""
    ok = store.checkpoint_truncate()
    if not ok:
        log.warning("another process is reading this memory, so the WAL could not be truncated yet; "
                    "forgotten data leaves the WAL file at the next checkpoint")
    return ok
