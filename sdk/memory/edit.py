"""Corrections: :class:`Editor`, the collaborator of :class:`~covip.sdk.memory.memory.Memory` that changes what
was remembered: concepts (kind and notes, rename, merge, share), a photo's concepts (tag, untag, move) and one
dialogue episode (update, forget), the last two addressed by the ids ``Memory.history`` shows.

Every edit is one write transaction and cascades like forgetting does: cached captions that used the photo
(or the concept's photos) are dropped; vectors and index files never change, because tags and dialogues are
not in the vectors (search reads them from SQLite when it hydrates a hit); an edit that removes text (an
episode's old dialogue, time or place, a forgotten episode) checkpoints and truncates the WAL after its commit,
so with ``secure_delete`` the old text is in no file under the home. Another user's photo or episode id is
a :class:`~covip.sdk.errors.NotFoundError` with the same message as an id that does not exist.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from covip.sdk.errors import ConflictError, InputError, NotFoundError
from covip.sdk.memory.forget import scrub
from covip.sdk.memory.schema import utcnow
from covip.sdk.memory.types import Concept, Episode, ForgetReport, PhotoTags
from covip.sdk.memory.validate import (
    DialogueInput,
    clean_dialogue,
    clean_id,
    clean_name,
    clean_place,
    clean_text,
    clean_time,
)

if TYPE_CHECKING:
    from covip.sdk.memory.memory import Memory

log = logging.getLogger(__name__)

__all__: list[str] = []


class Editor:
    """Edit operations of a Memory (see the Memory methods of the same names); it holds the Memory weakly."""

    def __init__(self, mem: Memory) -> None:
        self.mem = weakref.proxy(mem)  # weak: an unclosed Memory that is dropped is freed at once, as before

    # ------------------------------------------------------------------ concepts
    def update_concept(self, user: str, name: str, *, kind: str | None = None,
                       notes: str | None = None) -> Concept:
        """Change a concept's kind or notes (see Memory.update_concept)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                row = mem._concept(uid, name)
                changes: dict[str, Any] = {"updated_at": utcnow()}
                if kind is not None:
                    changes["kind"] = mem._clean_kind(kind)
                if notes is not None:
                    changes["notes"] = clean_text(notes, "notes")
                db["concepts"].update(row["id"], changes)
                self._invalidate_concept_captions(row["id"])
                mem.store.audit("update_concept", uid, "concept", row["id"])
                return mem.store.to_concept(mem.store.one("SELECT * FROM concepts WHERE id = ?", [row["id"]]))

    def rename_concept(self, user: str, old: str, new: str) -> Concept:
        """Rename a concept (see Memory.rename_concept)."""
        mem = self.mem
        new = clean_name(new, "new concept name")
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                row = mem._concept(uid, old)
                other = mem.store.concept_row(uid, new)
                if other is not None and other["id"] != row["id"]:
                    raise ConflictError(f"user {user!r} already has a concept named {new!r}; "
                                        "use merge_concepts to combine them")
                db["concepts"].update(row["id"], {"name": new, "updated_at": utcnow()})
                self._invalidate_concept_captions(row["id"])
                mem.store.audit("rename_concept", uid, "concept", row["id"])
                return mem.store.to_concept(mem.store.one("SELECT * FROM concepts WHERE id = ?", [row["id"]]))

    def merge_concepts(self, user: str, sources: Sequence[str] | str, into: str) -> Concept:
        """Fold ``sources`` into ``into`` (see Memory.merge_concepts)."""
        mem = self.mem
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, (list, tuple)):
            raise InputError(f"sources must be a concept name or a list of them, not {type(sources).__name__}")
        sources = [clean_name(x, "source concept name") for x in sources]
        into = clean_name(into, "target concept name")
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                target = mem._concept(uid, into)
                src_rows = [mem._concept(uid, s) for s in sources]
                if not src_rows:
                    raise InputError("merge_concepts needs at least one source concept")
                for src in src_rows:
                    if src["id"] == target["id"]:
                        raise ConflictError(f"cannot merge concept {src['name']!r} into itself")
                notes = [target["notes"]] if target["notes"] else []
                for src in src_rows:
                    sid, tid = src["id"], target["id"]
                    self._invalidate_concept_captions(sid)
                    for table, col in (("photo_concepts", "photo_id"), ("episode_concepts", "episode_id")):
                        db.execute(f"INSERT OR IGNORE INTO {table} ({col}, concept_id) "
                                   f"SELECT {col}, ? FROM {table} WHERE concept_id = ?", [tid, sid])
                        db.execute(f"DELETE FROM {table} WHERE concept_id = ?", [sid])
                    db.execute("INSERT OR IGNORE INTO concept_shares (concept_id, user_id, created_at) "
                               "SELECT ?, user_id, created_at FROM concept_shares WHERE concept_id = ?", [tid, sid])
                    db.execute("DELETE FROM concept_shares WHERE concept_id = ?", [sid])
                    db.execute("DELETE FROM concepts WHERE id = ?", [sid])
                    if src["notes"]:
                        notes.append(src["notes"])
                    mem.store.audit("merge_concept", uid, "concept", tid, merged=sid)
                db["concepts"].update(target["id"], {"notes": "\n".join(notes), "updated_at": utcnow()})
                self._invalidate_concept_captions(target["id"])
                return mem.store.to_concept(mem.store.one("SELECT * FROM concepts WHERE id = ?", [target["id"]]))

    def share_concept(self, user: str, name: str, with_user: str) -> None:
        """Share a concept with another user (see Memory.share_concept)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                other = mem._uid(with_user)
                if other == uid:
                    raise ConflictError("a user cannot share a concept with themselves")
                row = mem._concept(uid, name)
                db.execute("INSERT OR IGNORE INTO concept_shares (concept_id, user_id, created_at) VALUES (?,?,?)",
                           [row["id"], other, utcnow()])
                mem.store.audit("share_concept", uid, "concept", row["id"], with_user=other)

    def unshare_concept(self, user: str, name: str, with_user: str) -> None:
        """Stop sharing a concept (see Memory.unshare_concept)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                other = mem._uid(with_user)
                row = mem._concept(uid, name)
                db.execute("DELETE FROM concept_shares WHERE concept_id = ? AND user_id = ?", [row["id"], other])
                mem.store.audit("unshare_concept", uid, "concept", row["id"], with_user=other)

    def _invalidate_concept_captions(self, concept_id: int) -> int:
        photo_ids = [r[0] for r in self.mem.store.db.execute(
            "SELECT photo_id FROM photo_concepts WHERE concept_id = ?", [concept_id])]
        return self.mem.store.invalidate_captions_for_photos(photo_ids)

    # ------------------------------------------------------------------ a photo's concepts
    def tag_photo(self, user: str, photo: Any, concept: str) -> PhotoTags:
        """Tag a photo with a concept (see Memory.tag_photo)."""
        name = clean_name(concept, "concept name")
        return self._retag(user, photo, None, name, "tag_photo")

    def untag_photo(self, user: str, photo: Any, concept: str) -> PhotoTags:
        """Take a concept off a photo (see Memory.untag_photo)."""
        name = clean_name(concept, "concept name")
        return self._retag(user, photo, name, None, "untag_photo")

    def move_photo(self, user: str, photo: Any, from_concept: str, to_concept: str) -> PhotoTags:
        """Untag ``from_concept`` and tag ``to_concept`` in one transaction (see Memory.move_photo)."""
        old = clean_name(from_concept, "concept name to move the photo from")
        new = clean_name(to_concept, "concept name to move the photo to")
        if old.casefold() == new.casefold():
            raise ConflictError(f"cannot move a photo from concept {old!r} to itself; give two different concepts")
        return self._retag(user, photo, old, new, "move_photo")

    def photo_concepts(self, user: str, photo: Any) -> tuple[str, ...]:
        """The concepts one of ``user``'s photos is tagged with (see Memory.photo_concepts)."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            record = mem.find_photo(user, photo)
            return mem.store.photo_concept_names(record.id)

    def _retag(self, user: str, photo: Any, old: str | None, new: str | None, action: str) -> PhotoTags:
        """Untag ``old`` and/or tag ``new`` on one of ``user``'s photos, in one write transaction."""
        mem = self.mem
        with mem._lock:
            mem._check_open()
            record = mem.find_photo(user, photo)  # another user's photo is "not found", like a missing one
            with mem.store.write():
                uid = mem._uid(user)
                pid = record.id
                if mem.store.scalar("SELECT 1 FROM photos WHERE id = ? AND user_id = ?", [pid, uid]) is None:
                    raise NotFoundError(f"user {user!r} has no remembered photo {pid} (it was just forgotten)")
                changed = False
                detail: dict[str, int] = {}
                if old is not None:
                    detail["untagged"] = self._untag(uid, user, pid, old)
                    changed = True
                if new is not None:
                    cid, added = self._tag(uid, pid, new)
                    detail["tagged"] = cid
                    changed = changed or added
                captions = mem.store.invalidate_captions_for_photos([pid]) if changed else 0
                if changed:
                    mem.store.audit(action, uid, "photo", pid, **detail)  # ids only
                return PhotoTags(photo=mem.store.photo(pid), concepts=mem.store.photo_concept_names(pid),
                                 changed=changed, captions=captions)

    def _tag(self, uid: int, pid: int, name: str) -> tuple[int, bool]:
        """Link the photo and its dialogues to the concept (created as remember creates it); (id, changed)."""
        db = self.mem.store.db
        cid = self.mem._ensure_concept(uid, name)
        added = db.execute("INSERT OR IGNORE INTO photo_concepts (photo_id, concept_id) VALUES (?, ?)",
                           [pid, cid]).rowcount > 0
        # the photo's dialogues are about what it shows: history and sharing by concept follow the tag
        tied = db.execute("INSERT OR IGNORE INTO episode_concepts (episode_id, concept_id) "
                          "SELECT id, ? FROM episodes WHERE photo_id = ?", [cid, pid]).rowcount > 0
        return cid, added or tied

    def _untag(self, uid: int, user: str, pid: int, name: str) -> int:
        """Unlink the photo and its dialogues from the concept; NotFoundError when the photo lacks it."""
        store = self.mem.store
        row = store.concept_row(uid, name)
        if row is None or store.scalar("SELECT 1 FROM photo_concepts WHERE photo_id = ? AND concept_id = ?",
                                       [pid, row["id"]]) is None:
            have = ", ".join(repr(n) for n in store.photo_concept_names(pid)) or "none"
            raise NotFoundError(f"photo {pid} of user {user!r} is not tagged {name!r} (its concepts: {have}); "
                                f"see `covip photo list --user {user}`")
        cid = int(row["id"])
        store.db.execute("DELETE FROM photo_concepts WHERE photo_id = ? AND concept_id = ?", [pid, cid])
        store.db.execute("DELETE FROM episode_concepts WHERE concept_id = ? AND episode_id IN "
                         "(SELECT id FROM episodes WHERE photo_id = ?)", [cid, pid])
        return cid

    # ------------------------------------------------------------------ episodes
    def _episode_row(self, uid: int, user: str, episode_id: int) -> dict[str, Any]:
        """One of ``user``'s episodes; another user's id gets the same NotFoundError as a missing one."""
        row = self.mem.store.one("SELECT * FROM episodes WHERE id = ? AND user_id = ?", [episode_id, uid])
        if row is None:
            raise NotFoundError(f"user {user!r} has no episode {episode_id}; episode ids are in `covip history "
                                f"--user {user} --json` (items[].episode.id) and Memory.history()")
        return row

    def update_episode(self, user: str, episode_id: int, *, dialogue: DialogueInput | Any = ...,
                       taken_at: Any = ..., place: Any = ...) -> Episode:
        """Change an episode's dialogue, time or place (see Memory.update_episode)."""
        mem = self.mem
        episode_id = clean_id(episode_id, "episode id")
        changes: dict[str, Any] = {}
        if dialogue is not ...:
            if dialogue is None:
                raise InputError("an episode keeps a dialogue: give the corrected text, or forget the episode "
                                 "(Memory.forget_episode, `covip forget --episode ID`)")
            changes["dialogue"] = json.dumps(clean_dialogue(dialogue))
        if taken_at is not ...:
            changes["taken_at"] = clean_time(taken_at)
        if place is not ...:
            changes["place"] = clean_place(place)
        if not changes:
            raise InputError("update_episode needs at least one of dialogue=, taken_at= or place= (None clears "
                             "taken_at or place)")
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                row = self._episode_row(uid, user, episode_id)
                db["episodes"].update(episode_id, changes)
                # the photo's own time and place were written with this episode when they still agree with it;
                # they follow the correction (the model sees the photo's), other values are the photo's own
                photo = mem.store.one("SELECT taken_at, place FROM photos WHERE id = ?", [row["photo_id"]]) or {}
                follow = {k: v for k, v in changes.items() if k in ("taken_at", "place")
                          and k in photo and photo[k] == row[k]}
                if follow:
                    db["photos"].update(row["photo_id"], follow)
                mem.store.invalidate_captions_for_photos([row["photo_id"]])
                mem.store.audit("update_episode", uid, "episode", episode_id, fields=sorted(changes),
                                photo=row["photo_id"])
                episode = mem.store.to_episode(mem.store.one("SELECT * FROM episodes WHERE id = ?", [episode_id]))
            scrub(mem.store)  # the old text leaves the WAL too
            return episode

    def forget_episode(self, user: str, episode_id: int) -> ForgetReport:
        """Forget one dialogue episode; its photo stays (see Memory.forget_episode)."""
        mem = self.mem
        episode_id = clean_id(episode_id, "episode id")
        with mem._lock:
            mem._check_open()
            with mem.store.write() as db:
                uid = mem._uid(user)
                row = self._episode_row(uid, user, episode_id)
                captions = mem.store.invalidate_captions_for_photos([row["photo_id"]])
                db.execute("DELETE FROM episode_concepts WHERE episode_id = ?", [episode_id])
                db.execute("DELETE FROM episodes WHERE id = ?", [episode_id])
                mem.store.audit("forget_episode", uid, "episode", episode_id, photo=row["photo_id"])
            return ForgetReport(episodes=1, captions=captions, scrubbed=scrub(mem.store))
