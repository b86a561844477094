"""The memory facade: one home directory, SQLite as the source of truth, FAISS indexes derived from it.

:class:`Memory` owns the lock, the store and users, concepts, remember and search. Each other concern is a
collaborator in its own module, so each can be read and tested alone: the vector indexes
(:class:`~covip.sdk.memory.indexing.IndexSet`), the stored photo files
(:class:`~covip.sdk.memory.photo_store.PhotoFiles`), bundles (:class:`~covip.sdk.memory.bundle.BundleIO`),
verify/repair (:class:`~covip.sdk.memory.verify.Verifier`), forgetting (:class:`~covip.sdk.memory.forget.Forgetter`)
and corrections by id (:class:`~covip.sdk.memory.edit.Editor`). Every public call runs under the Memory's one lock.

One word per action across Python, the CLI and HTTP (README, "One vocabulary"): :meth:`Memory.recall` (alias
``search``), :meth:`Memory.export_memory` / :meth:`Memory.import_memory` (aliases ``export_user`` /
``import_bundle``), ``forget_*``, :meth:`Memory.move_photo` (alias ``retag_photo``), :meth:`Memory.forget_episode`
(alias ``delete_episode``).

Usage::

    from covip.sdk import Memory
    with Memory.open("~/covip-home", embedder="tiny") as mem:
        mem.add_user("ana")
        mem.remember("ana", "bori.jpg", "User: This is Bori at the Han river.", concepts=["Bori"])
        for hit in mem.recall("ana", image="new.jpg", k=3):
            print(hit.score, hit.concepts, hit.episodes[0].text)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from covip.sdk.config import read_settings, resolve_home
from covip.sdk.errors import ConflictError, InputError, NotFoundError, StoreError
from covip.sdk.files import sweep_dead_tmp
from covip.sdk.imaging import Photo, load_photo
from covip.sdk.memory import crypto
from covip.sdk.memory.bundle import BundleIO
from covip.sdk.memory.config import MemoryConfig
from covip.sdk.memory.edit import Editor
from covip.sdk.memory.forget import Forgetter, finish_pending_deletions
from covip.sdk.memory.indexing import IndexSet
from covip.sdk.memory.layout import (
    DB_FILE,
    DB_SIDE_FILES,
    SUBDIRS,
    make_home,
    move_to_quarantine,
    new_quarantine,
)
from covip.sdk.memory.photo_store import PhotoFiles
from covip.sdk.memory.schema import utcnow
from covip.sdk.memory.store import Store, sqlite_errors_as_store_errors
from covip.sdk.memory.types import (
    CONCEPT_KINDS,
    Concept,
    Episode,
    ForgetReport,
    HistoryItem,
    Hit,
    PhotoRecord,
    PhotoTags,
    Remembered,
    User,
    VerifyReport,
)
from covip.sdk.memory.validate import (
    MAX_CONCEPTS,
    MAX_VECTOR_DIM,
    DialogueInput,
    clean_context_ids,
    clean_dialogue,
    clean_file_name,
    clean_flag,
    clean_id,
    clean_k,
    clean_key,
    clean_limit,
    clean_model_id,
    clean_name,
    clean_place,
    clean_text,
    clean_time,
)
from covip.sdk.memory.verify import Verifier

log = logging.getLogger(__name__)

__all__ = ["Memory", "PhotoInput", "DialogueInput"]

PhotoInput = str | os.PathLike | bytes | Photo | Any  # PIL.Image.Image is accepted too


@sqlite_errors_as_store_errors
class Memory:
    """A user's on-device episodic memory. Open with :meth:`Memory.open`; close it (or use ``with``)."""

    def __init__(self, config: MemoryConfig | None = None, *, embedder: Any = None, key: Any = None) -> None:
        if config is not None and not isinstance(config, MemoryConfig):
            raise InputError(f"config must be a MemoryConfig, not {type(config).__name__}")
        self.config = config or MemoryConfig()
        self.home = resolve_home(self.config.home)
        # unlocked before anything is created: a wrong or missing key fails here and changes nothing
        self.crypto = crypto.open_home_key(self.home, key)
        make_home(self.home)  # private: 0700 folders, 0600 files, whatever the umask
        self.settings = read_settings(self.home)
        self._embedder = embedder
        self._owns_embedder = False
        self._lock = threading.RLock()
        self.store = Store(self.home / DB_FILE, home=self.home, busy_timeout_s=self.config.busy_timeout_s,
                           synchronous=self.config.synchronous, key=self.crypto)
        self.indexes = IndexSet(self.home, self.store, self.config, self.crypto)  # per (user id, model id)
        self.photo_files = PhotoFiles(self.home, self.store, self.crypto)
        self._bundles = BundleIO(self)
        self._forgetter = Forgetter(self)
        self._editor = Editor(self)
        self._verifier = Verifier(self)
        self._closed = False
        try:
            sweep_dead_tmp(self.home / "tmp")
            finish_pending_deletions(self.store)
            self.indexes.catch_up_files()
        except BaseException:
            self.store.close()
            raise

    @classmethod
    def open(cls, home: str | os.PathLike | None = None, *, embedder: Any = None,
             config: MemoryConfig | None = None, key: Any = None) -> Memory:
        """Open (creating if needed) the memory in ``home``; ``embedder`` is an Embedder, a spec like "tiny",
        or None to use the one chosen by ``covip init`` (built on first use).

        ``key`` (a passphrase str, or 32 raw bytes) opens an encrypted home, or creates a new home encrypted.
        Without it an encrypted home is unlocked from ``$COVIP_PASSPHRASE`` (``$COVIP_KEY``) or the OS keyring,
        else :class:`~covip.sdk.errors.MissingKeyError`; a wrong one raises WrongKeyError."""
        if config is None:
            config = MemoryConfig(home=resolve_home(home))
        elif not isinstance(config, MemoryConfig):
            raise InputError(f"config must be a MemoryConfig, not {type(config).__name__}")
        elif home is not None:
            config.home = resolve_home(home)
        return cls(config, embedder=embedder, key=key)

    @classmethod
    def start_fresh(cls, home: str | os.PathLike | None = None, *, key: Any = None) -> Path | None:
        """When ``home``'s memory.db is missing, empty, damaged or not covip's, move everything the home still
        holds of the old memory (photos, index files, the old database) to ``quarantine/<time>/`` in the home
        so a new, empty memory can start; returns that folder (None when there was nothing to move).

        Refuses (ConflictError) while memory.db holds a readable covip memory: nothing of it is ever moved.
        An encrypted home needs its ``key`` (as :meth:`open`) to tell a readable database from a damaged one.
        """
        home = resolve_home(home)
        state = Store.inspect(home / DB_FILE, crypto.unlock_home(home, key))
        if state == "covip":
            raise ConflictError(f"{home / DB_FILE} holds a readable covip memory, so there is nothing to start "
                                "over from; run `covip verify` (and `--repair`) to check and fix it instead")
        found = [home / n for n in (DB_FILE, *DB_SIDE_FILES) if (home / n).is_file()]
        for sub in SUBDIRS:
            if sub != "locks" and (home / sub).is_dir():
                found += [p for p in (home / sub).rglob("*") if p.is_file() or p.is_symlink()]
        if not found:
            return None
        folder = new_quarantine(home)
        moved = move_to_quarantine(home, found, folder)
        log.warning("started a new memory in %s: moved %d old files to %s", home, len(moved), folder)
        return folder

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Persist unsaved index changes and close the database and the embedder (if we built it)."""
        with self._lock:
            if self._closed:
                return
            try:
                self.indexes.save_unsaved()
            finally:
                self._closed = True
                self.store.close()
                if self._owns_embedder and hasattr(self._embedder, "close"):
                    self._embedder.close()

    def flush(self) -> None:
        """Write every index with unsaved changes now (close() does this too)."""
        with self._lock:
            self._check_open()
            self.indexes.save_unsaved()

    # ------------------------------------------------------------------ embedder
    @property
    def embedder(self) -> Any:
        """The embedder used for photos (built lazily from the home's config when not given)."""
        if self._embedder is None or isinstance(self._embedder, str):
            from covip.sdk.config import DEFAULT_EMBEDDER
            from covip.sdk.vision import make_embedder

            spec = self._embedder or self.settings.get("embedder") or DEFAULT_EMBEDDER
            if isinstance(spec, dict):
                from covip.sdk.vision import EmbedderConfig

                spec = EmbedderConfig(**spec)
            self._embedder = make_embedder(spec)
            self._owns_embedder = True
        return self._embedder

    # ------------------------------------------------------------------ users
    def _check_open(self) -> None:
        if self._closed:
            raise InputError("this memory is closed; open it again with Memory.open()")

    def users(self) -> list[User]:
        """All users, oldest first."""
        with self._lock:
            self._check_open()
            return [self.store.to_user(r) for r in self.store.rows("SELECT * FROM users ORDER BY id")]

    def add_user(self, name: str, *, exist_ok: bool = False) -> User:
        """Create a user (the owner of a separate, isolated memory)."""
        name = clean_name(name, "user name")
        exist_ok = clean_flag(exist_ok, "exist_ok")
        with self._lock:
            self._check_open()
            with self.store.write() as db:
                row = self.store.one("SELECT * FROM users WHERE name = ?", [name])
                if row is not None:
                    if exist_ok:
                        return self.store.to_user(row)
                    raise ConflictError(f"user {name!r} already exists; pick another name")
                uid = db["users"].insert({"name": name, "created_at": utcnow()}).last_pk
                self.store.audit("add_user", uid, "user", uid)
                return self.store.to_user(self.store.user_row(name))

    def _uid(self, user: str) -> int:
        return int(self.store.user_row(clean_name(user, "user name"))["id"])

    # ------------------------------------------------------------------ concepts
    def concepts(self, user: str) -> list[Concept]:
        """The user's concepts plus those shared with them, by name."""
        with self._lock:
            self._check_open()
            with self.store.read():
                uid = self._uid(user)
                rows = self.store.rows(
                    "SELECT * FROM concepts WHERE user_id = ? OR id IN "
                    "(SELECT concept_id FROM concept_shares WHERE user_id = ?) ORDER BY name COLLATE NOCASE",
                    [uid, uid])
                return [self.store.to_concept(r) for r in rows]

    def _concept(self, uid: int, name: str) -> dict[str, Any]:
        row = self.store.concept_row(uid, clean_name(name, "concept name"))
        if row is None:
            raise NotFoundError(f"user {self.store.user_name(uid)!r} has no concept named {name!r}; "
                                "list them with `covip concepts --user USER`")
        return row

    def _ensure_concept(self, uid: int, name: str, kind: str = "other", notes: str = "") -> int:
        row = self.store.concept_row(uid, name)
        if row is not None:
            return int(row["id"])
        now = utcnow()
        cid = self.store.db["concepts"].insert(
            {"user_id": uid, "name": name, "kind": kind, "notes": notes, "created_at": now, "updated_at": now}
        ).last_pk
        self.store.audit("add_concept", uid, "concept", cid)
        return int(cid)

    @staticmethod
    def _clean_kind(kind: str) -> str:
        if not isinstance(kind, str) or kind not in CONCEPT_KINDS:
            raise InputError(f"concept kind {kind!r} is not one of {', '.join(CONCEPT_KINDS)}")
        return kind

    def add_concept(self, user: str, name: str, *, kind: str = "other", notes: str = "") -> Concept:
        """Create a named concept (person, pet, object, place, other) for a user."""
        name = clean_name(name, "concept name")
        kind = self._clean_kind(kind)
        notes = clean_text(notes, "notes")
        with self._lock:
            self._check_open()
            with self.store.write():
                uid = self._uid(user)
                if self.store.concept_row(uid, name) is not None:
                    raise ConflictError(f"user {user!r} already has a concept named {name!r}")
                cid = self._ensure_concept(uid, name, kind, notes)
                return self.store.to_concept(self.store.one("SELECT * FROM concepts WHERE id = ?", [cid]))

    def update_concept(self, user: str, name: str, *, kind: str | None = None,
                       notes: str | None = None) -> Concept:
        """Change a concept's kind or notes; cached captions that used its photos are dropped."""
        return self._editor.update_concept(user, name, kind=kind, notes=notes)

    def rename_concept(self, user: str, old: str, new: str) -> Concept:
        """Rename a concept; cached captions that used its photos are dropped."""
        return self._editor.rename_concept(user, old, new)

    def merge_concepts(self, user: str, sources: Sequence[str] | str, into: str) -> Concept:
        """Fold ``sources`` into ``into``: their photos, episodes and shares move over; sources disappear."""
        return self._editor.merge_concepts(user, sources, into)

    def share_concept(self, user: str, name: str, with_user: str) -> None:
        """Let ``with_user`` see this concept's photos and the dialogues tied to it (nothing else)."""
        self._editor.share_concept(user, name, with_user)

    def unshare_concept(self, user: str, name: str, with_user: str) -> None:
        """Stop sharing a concept with ``with_user``."""
        self._editor.unshare_concept(user, name, with_user)

    # ------------------------------------------------------------------ remember
    def _check_embedding(self, embedding: Any, dim: int | None) -> np.ndarray:
        if isinstance(embedding, (str, bytes)):
            raise InputError(f"embedding must be a vector of numbers, not {type(embedding).__name__}")
        try:
            vec = np.asarray(embedding, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"embedding must be a vector of numbers ({exc})") from exc
        if not 1 <= vec.shape[0] <= MAX_VECTOR_DIM:
            raise InputError(f"embedding has {vec.shape[0]} dimensions; give 1 to {MAX_VECTOR_DIM}")
        if dim is not None and vec.shape[0] != dim:
            raise InputError(f"embedding has {vec.shape[0]} dimensions; this model's vectors have {dim}")
        if not np.all(np.isfinite(vec)):
            raise InputError("embedding contains NaN or infinite values")
        norm = float(np.linalg.norm(vec.astype(np.float64)))  # float32 would overflow for huge values
        if norm == 0.0:
            raise InputError("embedding is all zeros; it cannot be normalized")
        return vec / norm

    def _model_and_dim(self, uid: int, model_id: str | None, embedding: Any) -> tuple[str, int | None]:
        """The model id and the vector length new vectors must have: the length this user's vectors of that
        model already have (so one odd vector cannot enter an index), else the embedder's."""
        if model_id is not None:
            model_id = clean_model_id(model_id)
            if embedding is None:
                raise InputError("model_id was given without an embedding; pass both, or neither")
            return model_id, self.indexes.group_dim(uid, model_id)
        emb = self.embedder
        stored = self.indexes.group_dim(uid, emb.model_id)
        if stored is not None and stored != emb.dim:
            raise StoreError(f"this memory's vectors of model {emb.model_id!r} have {stored} dimensions but the "
                             f"embedder makes {emb.dim}; run `covip verify --repair` to rebuild them")
        return emb.model_id, emb.dim

    def remember(self, user: str, photo: PhotoInput, dialogue: DialogueInput = None,
                 concepts: Iterable[str] = (), *, taken_at: datetime | str | None = None,
                 place: str | None = None, embedding: Any = None, model_id: str | None = None,
                 original_name: str | None = None) -> Remembered:
        """Store a photo with the dialogue about it, tied to concepts (created as needed), a time and a place.

        The same photo remembered again keeps one copy and gains another episode. Everything is one
        transaction: on any error nothing is written. ``embedding`` + ``model_id`` skip the embedder.
        ``original_name`` (a file name, no path) defaults to the name of the file ``photo`` was read from.
        """
        with self._lock:
            self._check_open()
            user = clean_name(user, "user name")
            if isinstance(concepts, str):
                concepts = [concepts]
            if not isinstance(concepts, (list, tuple, set, frozenset)):
                raise InputError(f"concepts must be a list of concept names ([] for none), not "
                                 f"{type(concepts).__name__}")
            if len(concepts) > MAX_CONCEPTS:
                raise InputError(f"{len(concepts)} concepts given; one photo takes at most {MAX_CONCEPTS}")
            names: list[str] = []
            for c in concepts:
                name = clean_name(c, "concept name")
                if name.lower() not in {n.lower() for n in names}:
                    names.append(name)
            turns = clean_dialogue(dialogue)
            taken = clean_time(taken_at)
            place = clean_place(place)
            if original_name is not None:
                original_name = clean_file_name(original_name)
            uid = self._uid(user)
            pic = load_photo(photo, max_pixels=self.config.max_pixels)
            original_name = original_name or _file_name(pic)
            mid, dim = self._model_and_dim(uid, model_id, embedding)
            existing = self.store.one("SELECT id FROM photos WHERE user_id = ? AND sha256 = ?", [uid, pic.sha256])
            have_vec = existing is not None and self.store.scalar(
                "SELECT id FROM embeddings WHERE photo_id = ? AND model_id = ?", [existing["id"], mid]) is not None
            vec = None
            if not have_vec:
                if embedding is not None:
                    vec = self._check_embedding(embedding, dim)
                else:
                    vec = self._check_embedding(self.embedder.embed_images([pic.image])[0], dim)
            if taken is None and pic.taken_at is not None:
                taken = pic.taken_at.isoformat()
            created_file: Path | None = None
            try:
                with self.store.write() as db:
                    row = self.store.one("SELECT * FROM photos WHERE user_id = ? AND sha256 = ?",
                                         [uid, pic.sha256])
                    new_photo = row is None
                    if new_photo:
                        stored = None
                        if self.config.store_copies:
                            stored = self.photo_files.name(uid, pic)
                            dest = self.home / stored
                            if not dest.exists():
                                # fsync only when SQLite does (synchronous=FULL): with NORMAL a power cut
                                # can drop the commit anyway, and both survive a process crash
                                self.photo_files.write(dest, pic.data, durable=self.config.synchronous != "NORMAL")
                                created_file = dest
                        pid = db["photos"].insert({
                            "user_id": uid, "sha256": pic.sha256, "stored_path": stored,
                            "source_path": str(pic.source_path.resolve()) if pic.source_path else None,
                            "format": pic.format, "width": pic.width, "height": pic.height,
                            "bytes": len(pic.data), "taken_at": taken,
                            "gps_lat": pic.gps[0] if pic.gps else None, "gps_lon": pic.gps[1] if pic.gps else None,
                            "place": place, "created_at": utcnow(), "original_name": original_name,
                        }).last_pk
                        self.store.audit("remember_photo", uid, "photo", pid)
                    else:
                        pid = row["id"]
                        if original_name is not None and row.get("original_name") is None:
                            db["photos"].update(pid, {"original_name": original_name})
                        self.store.invalidate_captions_for_photos([pid])
                    eid = None
                    if self.store.scalar(
                            "SELECT id FROM embeddings WHERE photo_id = ? AND model_id = ?", [pid, mid]) is None:
                        if vec is None:  # another process forgot the photo after the check above (rare)
                            raw = embedding if embedding is not None else self.embedder.embed_images([pic.image])[0]
                            vec = self._check_embedding(raw, dim)
                        eid = db["embeddings"].insert({"user_id": uid, "photo_id": pid, "model_id": mid,
                                                       "dim": int(vec.shape[0]), "vector": vec.tobytes()}).last_pk
                    cids = [self._ensure_concept(uid, n) for n in names]
                    for cid in cids:
                        db.execute("INSERT OR IGNORE INTO photo_concepts (photo_id, concept_id) VALUES (?, ?)",
                                   [pid, cid])
                    self.store.invalidate_captions_for_photos([pid])
                    episode = None
                    if turns is not None:
                        ep_id = db["episodes"].insert({
                            "user_id": uid, "photo_id": pid, "dialogue": json.dumps(turns),
                            "taken_at": taken, "place": place, "created_at": utcnow()}).last_pk
                        for cid in cids:
                            db.execute("INSERT INTO episode_concepts (episode_id, concept_id) VALUES (?, ?)",
                                       [ep_id, cid])
                        self.store.audit("remember_episode", uid, "episode", ep_id, photo=pid)
                        episode = self.store.to_episode(self.store.one("SELECT * FROM episodes WHERE id = ?",
                                                                       [ep_id]))
                    record = self.store.photo(pid)
            except BaseException:
                if created_file is not None:
                    created_file.unlink(missing_ok=True)
                raise
            if eid is not None:
                self.indexes.added(uid, mid, int(eid), vec)
            return Remembered(photo=record, episode=episode, new_photo=new_photo, embedding_id=eid)

    # ------------------------------------------------------------------ search
    def _query_vector(self, image: PhotoInput | None, embedding: Any, model_id: str | None) -> tuple[np.ndarray, str]:
        if (image is None) == (embedding is None):
            raise InputError("search needs exactly one of image= or embedding=")
        if model_id is not None:
            model_id = clean_model_id(model_id)
        if embedding is not None:
            if model_id is None:
                model_id, dim = self.embedder.model_id, self.embedder.dim
            else:
                dim = None
            return self._check_embedding(embedding, dim), model_id
        if model_id is not None and model_id != self.embedder.model_id:
            raise InputError(f"model_id {model_id!r} differs from the embedder's ({self.embedder.model_id}); "
                             "pass an embedding made with that model instead of an image")
        pic = load_photo(image, max_pixels=self.config.max_pixels)
        vec = self.embedder.embed_images([pic.image])[0]
        return self._check_embedding(vec, self.embedder.dim), self.embedder.model_id

    def recall(self, user: str, image: PhotoInput | None = None, *, embedding: Any = None, k: int = 5,
               model_id: str | None = None, include_shared: bool = True) -> list[Hit]:
        """Top-``k`` remembered photos of ``user`` most similar to ``image`` (or ``embedding``), best first.

        Only the user's own photos are searched, plus photos of concepts other users explicitly shared
        with them (those hits carry only the shared concepts and the dialogues tied to them). ``k`` is 1 to
        :data:`~covip.sdk.memory.validate.MAX_K` (1000); fewer hits come back when there are fewer photos.
        """
        k = clean_k(k)  # the index also caps k at its size before FAISS allocates anything
        include_shared = clean_flag(include_shared, "include_shared")
        with self._lock:
            self._check_open()
            uid = self._uid(user)
            vec, mid = self._query_vector(image, embedding, model_id)
            dim = int(vec.shape[0])
            candidates: list[tuple[float, int, int, frozenset[int] | None]] = []  # score, eid, owner, concepts
            own_dim = self.indexes.group_dim(uid, mid)
            if own_dim is not None:
                self._check_dim(mid, own_dim, dim)
                scores, ids = self.indexes.entry(uid, mid, dim).index.search(vec[None, :], k)
                candidates += [(float(s), int(i), uid, None) for s, i in zip(scores[0], ids[0]) if i >= 0]
            if include_shared:
                candidates += self._search_shared(uid, mid, vec, k)
            candidates.sort(key=lambda c: -c[0])
            hits = []
            with self.store.read():
                for score, eid, owner, allowed in candidates[:k]:
                    pid = self.store.scalar("SELECT photo_id FROM embeddings WHERE id = ?", [eid])
                    if pid is None:
                        continue  # forgotten by another process a moment ago
                    hits.append(Hit(score=score, photo=self.store.photo(pid),
                                    concepts=self.store.photo_concept_names(pid, allowed),
                                    episodes=self.store.photo_episodes(pid, allowed),
                                    shared=owner != uid))
            return hits

    search = recall  # the older name, kept (the CLI and HTTP say recall too)

    @staticmethod
    def _check_dim(model_id: str, stored: int, dim: int) -> None:
        if int(stored) != dim:
            raise InputError(f"query vector has {dim} dimensions but this memory's vectors for model "
                             f"{model_id!r} have {stored}")

    def _search_shared(self, uid: int, mid: str, vec: np.ndarray,
                       k: int) -> list[tuple[float, int, int, frozenset[int] | None]]:
        rows = self.store.rows(
            "SELECT c.user_id AS owner, c.id AS concept_id FROM concept_shares s "
            "JOIN concepts c ON c.id = s.concept_id WHERE s.user_id = ?", [uid])
        by_owner: dict[int, set[int]] = {}
        for r in rows:
            by_owner.setdefault(int(r["owner"]), set()).add(int(r["concept_id"]))
        out = []
        for owner, concept_ids in by_owner.items():
            owner_dim = self.indexes.group_dim(owner, mid)
            if owner_dim is None:
                continue
            self._check_dim(mid, owner_dim, int(vec.shape[0]))
            marks = ",".join("?" * len(concept_ids))
            allowed = [r[0] for r in self.store.db.execute(
                f"SELECT DISTINCT e.id FROM embeddings e JOIN photo_concepts pc ON pc.photo_id = e.photo_id "
                f"WHERE e.model_id = ? AND e.user_id = ? AND pc.concept_id IN ({marks})",
                [mid, owner, *sorted(concept_ids)])]
            if not allowed:
                continue
            scores, ids = self.indexes.entry(owner, mid, int(vec.shape[0])).index.search(
                vec[None, :], k, allowed_ids=np.array(allowed, dtype=np.int64))
            out += [(float(s), int(i), owner, frozenset(concept_ids)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        return out

    # ------------------------------------------------------------------ reading
    def history(self, user: str, concept: str | None = None, *, limit: int | None = None) -> list[HistoryItem]:
        """The user's dialogue episodes, newest first (by when the photo was taken, else when remembered)."""
        limit = clean_limit(limit)
        if concept is not None:
            concept = clean_name(concept, "concept name")
        with self._lock:
            self._check_open()
            with self.store.read():
                uid = self._uid(user)
                sql_limit = -1 if limit is None else limit  # SQLite: a negative LIMIT means none
                if concept is None:
                    rows = self.store.rows("SELECT * FROM episodes WHERE user_id = ? "
                                           "ORDER BY coalesce(taken_at, created_at) DESC, id DESC LIMIT ?",
                                           [uid, sql_limit])
                else:
                    row = self.store.concept_row(uid, concept)
                    if row is None:  # a concept shared with this user
                        row = self.store.one(
                            "SELECT c.* FROM concepts c JOIN concept_shares s ON s.concept_id = c.id "
                            "WHERE s.user_id = ? AND c.name = ? COLLATE NOCASE", [uid, concept])
                    if row is None:
                        raise NotFoundError(f"user {user!r} has no concept named {concept!r}")
                    rows = self.store.rows(
                        "SELECT e.* FROM episodes e JOIN episode_concepts ec ON ec.episode_id = e.id "
                        "WHERE ec.concept_id = ? ORDER BY coalesce(e.taken_at, e.created_at) DESC, e.id DESC "
                        "LIMIT ?", [row["id"], sql_limit])
                return [HistoryItem(episode=self.store.to_episode(r), photo=self.store.photo(r["photo_id"]))
                        for r in rows]

    def photos(self, user: str) -> list[PhotoRecord]:
        """All of the user's remembered photos, oldest first."""
        with self._lock:
            self._check_open()
            uid = self._uid(user)
            return [self.store.to_photo(r) for r in
                    self.store.rows("SELECT * FROM photos WHERE user_id = ? ORDER BY id", [uid])]

    def find_photo(self, user: str, photo: PhotoInput | int) -> PhotoRecord:
        """A remembered photo of ``user`` by id, or by content (path/bytes/image of the same file)."""
        with self._lock:
            self._check_open()
            uid = self._uid(user)
            if isinstance(photo, int) and not isinstance(photo, bool):
                photo = clean_id(photo, "photo id")
                row = self.store.one("SELECT * FROM photos WHERE id = ? AND user_id = ?", [photo, uid])
            else:
                sha = load_photo(photo, max_pixels=self.config.max_pixels).sha256
                row = self.store.one("SELECT * FROM photos WHERE sha256 = ? AND user_id = ?", [sha, uid])
            if row is None:
                raise NotFoundError(f"user {user!r} has no remembered photo matching {photo!r:.100}")
            return self.store.to_photo(row)

    # ------------------------------------------------------------------ photo files
    @property
    def encrypted(self) -> bool:
        """Whether this home is encrypted at rest (``covip init --encrypt`` / ``Memory.open(key=...)``)."""
        return self.crypto is not None

    def read_photo_bytes(self, photo: PhotoRecord | int) -> bytes:
        """The original bytes of a remembered photo (by record or id): its stored copy, decrypted in an encrypted
        home, else its original file; checked against the sha256 it was remembered with. The only way covip
        reads remembered photos, so no caller opens ``PhotoRecord.path`` itself."""
        with self._lock:
            self._check_open()
            row = self.photo_files.row(photo)
        return self.photo_files.row_bytes(row)

    def load_memory_photo(self, photo: PhotoRecord | int, *, max_side: int | None = None) -> Photo:
        """A remembered photo decoded (through :meth:`read_photo_bytes`), e.g. as a context image for a model."""
        return load_photo(self.read_photo_bytes(photo), max_pixels=self.config.max_pixels, max_side=max_side)

    # ------------------------------------------------------------------ caption cache (used by CAG)
    def cached_caption(self, user: str, *, model_id: str, prompt_version: str, photo_sha256: str,
                       context_ids: Sequence[int]) -> str | None:
        """A cached caption for this (model, prompt version, photo, context photos), or None."""
        model_id, prompt_version, photo_sha256 = (clean_key(model_id, "model_id"),
                                                  clean_key(prompt_version, "prompt_version"),
                                                  clean_key(photo_sha256, "photo_sha256"))
        context_key = clean_context_ids(context_ids)
        with self._lock:
            self._check_open()
            uid = self._uid(user)
            return self.store.scalar(
                "SELECT caption FROM caption_cache WHERE user_id = ? AND model_id = ? AND prompt_version = ? "
                "AND photo_sha256 = ? AND context_key = ?",
                [uid, model_id, prompt_version, photo_sha256, context_key])

    def cache_caption(self, user: str, caption: str, *, model_id: str, prompt_version: str, photo_sha256: str,
                      context_ids: Sequence[int]) -> None:
        """Store a caption; it dies when any memory photo in ``context_ids`` is forgotten or edited."""
        caption = clean_text(caption, "caption")
        model_id, prompt_version, photo_sha256 = (clean_key(model_id, "model_id"),
                                                  clean_key(prompt_version, "prompt_version"),
                                                  clean_key(photo_sha256, "photo_sha256"))
        key = clean_context_ids(context_ids)
        with self._lock:
            self._check_open()
            with self.store.write() as db:
                uid = self._uid(user)
                db.execute("DELETE FROM caption_cache_items WHERE cache_id IN (SELECT id FROM caption_cache "
                           "WHERE user_id = ? AND model_id = ? AND prompt_version = ? AND photo_sha256 = ? "
                           "AND context_key = ?)", [uid, model_id, prompt_version, photo_sha256, key])
                db.execute("DELETE FROM caption_cache WHERE user_id = ? AND model_id = ? AND prompt_version = ? "
                           "AND photo_sha256 = ? AND context_key = ?",
                           [uid, model_id, prompt_version, photo_sha256, key])
                cid = db["caption_cache"].insert({
                    "user_id": uid, "model_id": model_id, "prompt_version": prompt_version,
                    "photo_sha256": photo_sha256, "context_key": key, "caption": caption,
                    "created_at": utcnow()}).last_pk
                for pid in ([int(p) for p in key.split(",")] if key else []):
                    db.execute("INSERT INTO caption_cache_items (cache_id, photo_id) VALUES (?, ?)", [cid, pid])

    # ------------------------------------------------------------------ forgetting (forget.py)
    def forget_photo(self, user: str, photo: Any) -> ForgetReport:
        """Forget one photo (by id, path or bytes): its episodes, vectors, cached captions and stored copy."""
        return self._forgetter.forget_photo(user, photo)

    def forget_concept(self, user: str, name: str, *, keep_shared_photos: bool = False) -> ForgetReport:
        """Forget a concept with every photo showing it and every dialogue tied to it.

        ``keep_shared_photos=True`` keeps photos that also show other concepts (only the link and the
        dialogues tied to this concept go).
        """
        return self._forgetter.forget_concept(user, name, keep_shared_photos=keep_shared_photos)

    def forget_user(self, user: str) -> ForgetReport:
        """Forget a user entirely: photos, concepts, dialogues, vectors, captions, shares and files."""
        return self._forgetter.forget_user(user)

    # ------------------------------------------------------------------ corrections by id (edit.py)
    def photo_concepts(self, user: str, photo: Any) -> tuple[str, ...]:
        """The concepts one of the user's photos (id, path or bytes) is tagged with, by name."""
        return self._editor.photo_concepts(user, photo)

    def tag_photo(self, user: str, photo: Any, concept: str) -> PhotoTags:
        """Tag a photo (id, path or bytes) and its dialogues with a concept (created as needed)."""
        return self._editor.tag_photo(user, photo, concept)

    def untag_photo(self, user: str, photo: Any, concept: str) -> PhotoTags:
        """Take a concept off a photo and its dialogues (NotFoundError when the photo lacks it)."""
        return self._editor.untag_photo(user, photo, concept)

    def move_photo(self, user: str, photo: Any, from_concept: str, to_concept: str) -> PhotoTags:
        """Move a photo (and its dialogues) from a wrong concept to the right one: untag + tag, one transaction."""
        return self._editor.move_photo(user, photo, from_concept, to_concept)

    retag_photo = move_photo

    def update_episode(self, user: str, episode_id: int, *, dialogue: DialogueInput | Any = ...,
                       taken_at: datetime | str | None | Any = ..., place: str | None | Any = ...) -> Episode:
        """Correct one episode (id from :meth:`history`): arguments left out stay, None clears taken_at or place;
        the old text is scrubbed and captions that used the photo are dropped."""
        return self._editor.update_episode(user, episode_id, dialogue=dialogue, taken_at=taken_at, place=place)

    def forget_episode(self, user: str, episode_id: int) -> ForgetReport:
        """Forget one dialogue episode (id from :meth:`history`), scrubbed; its photo and vector stay."""
        return self._editor.forget_episode(user, episode_id)

    delete_episode = forget_episode

    # ------------------------------------------------------------------ bundles (bundle.py)
    def export_memory(self, user: str, path: str | os.PathLike, *, plain: bool = False) -> Path:
        """Write ``user``'s memory to a zip bundle at ``path`` (atomically, outside the home); returns the path.
        From an encrypted home the bundle is encrypted with the home's passphrase (or raw key) unless ``plain``."""
        return self._bundles.export_user(user, path, plain=plain)

    def import_memory(self, path: str | os.PathLike, *, user: str | None = None,
                      merge: bool = False, key: Any = None) -> dict[str, Any]:
        """Load a bundle into ``user`` (default: the bundle's user). The whole bundle is checked before anything
        is written, and the write is one transaction. ``merge=True`` adds into an existing user. An encrypted
        bundle opens with ``key``, ``$COVIP_PASSPHRASE`` / ``$COVIP_KEY``, or this home's own passphrase."""
        return self._bundles.import_bundle(path, user=user, merge=merge, key=key)

    export_user = export_memory  # older names, kept
    import_bundle = import_memory

    # ------------------------------------------------------------------ verify / repair (verify.py)
    def verify(self, *, deep: bool = True) -> VerifyReport:
        """Check SQLite integrity, photo files (hashes when ``deep``), stored vectors, every index file, the
        home's file modes and its quarantine."""
        return self._verifier.verify(deep=deep)

    def repair(self) -> VerifyReport:
        """Rebuild every index from SQLite (re-embedding or dropping unusable stored vectors first), remove stale
        index files, move photo files that belong to no memory to quarantine, drop dangling cached captions
        and make the home private. Returns the verify report after repairing (``repaired`` lists what was
        done). A damaged database is left untouched: the report names the recovery path."""
        return self._verifier.repair()


def _file_name(pic: Photo) -> str | None:
    """The base name of the file a photo was read from, when it is one a PhotoRecord can carry."""
    if pic.source_path is None:
        return None
    try:
        return clean_file_name(pic.source_path.name)
    except InputError:  # undecodable bytes or control characters in the name: keep the photo, not the name
        log.info("not keeping the original file name of %r: it is no printable file name", pic.source_path.name)
        return None
