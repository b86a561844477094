"""The vector indexes of one memory home: :class:`IndexSet`, a collaborator of
:class:`~covip.sdk.memory.memory.Memory` that loads, catches up and persists them.

Each (user, embedding model) has one in-memory :class:`VectorIndex`. It is caught up with SQLite when
another connection has committed (``PRAGMA data_version``) and saved under a cross-process file lock
after a final catch-up, so a stale writer can never put forgotten vectors back into the file. It lives
apart from the Memory because it needs only the home, the store, the config and the key.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from covip.sdk.errors import IndexCorruptError, NotFoundError
from covip.sdk.files import file_lock
from covip.sdk.memory.index import VectorIndex, read_sidecar
from covip.sdk.memory.schema import utcnow

if TYPE_CHECKING:
    from covip.sdk.memory.config import MemoryConfig
    from covip.sdk.memory.crypto import HomeKey
    from covip.sdk.memory.store import Store

log = logging.getLogger(__name__)

__all__: list[str] = []


@dataclass
class IndexEntry:
    index: VectorIndex
    data_version: int
    count: int  # SQLite's count and max id the index was last caught up with
    max_id: int
    bad: dict[int, str] = field(default_factory=dict)  # unusable stored vectors left out: id -> problem


def _slug(model_id: str) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", model_id).strip("-")[:60]
    return f"{base}-{hashlib.sha1(model_id.encode()).hexdigest()[:8]}"


class IndexSet:
    """The in-memory index of every (user id, model id) in use, kept in step with SQLite and the index files.

    Not thread-safe on its own: the owning Memory calls it under its lock."""

    def __init__(self, home: Path, store: Store, config: MemoryConfig, key: HomeKey | None) -> None:
        self.home = home
        self.store = store
        self.config = config
        self.crypto = key
        self.entries: dict[tuple[int, str], IndexEntry] = {}

    def path(self, uid: int, model_id: str) -> Path:
        """The index file of (user, model)."""
        return self.home / "index" / f"u{uid}-{_slug(model_id)}.faiss"

    def lock_path(self, uid: int, model_id: str) -> Path:
        """The cross-process lock file guarding (user, model)'s index file."""
        return self.home / "locks" / f"u{uid}-{_slug(model_id)}.lock"

    def group_dim(self, uid: int, model_id: str) -> int | None:
        """The vector length of (user, model): the loaded index's, else SQLite's usual one (None: no vectors)."""
        entry = self.entries.get((uid, model_id))
        return entry.index.dim if entry is not None else self.store.embedding_dim(uid, model_id)

    def entry(self, uid: int, model_id: str, dim: int | None = None) -> IndexEntry:
        """The in-memory index for (user, model), loaded from its file and caught up with SQLite. Its
        dimension is SQLite's usual one for the group (``dim`` only when the group has no vectors yet)."""
        key = (uid, model_id)
        entry = self.entries.get(key)
        if entry is None:
            dim = self.store.embedding_dim(uid, model_id) or dim
            if dim is None:
                raise NotFoundError(f"user {uid} has no vectors of model {model_id!r}")
            path = self.path(uid, model_id)
            index = None
            if path.exists():
                try:
                    index = VectorIndex.load(path, dim, self.config.index, key=self.crypto)
                except IndexCorruptError as exc:
                    log.warning("%s; rebuilding it from SQLite", exc)
            entry = IndexEntry(index or VectorIndex(dim, self.config.index), -1, -1, -1)
            self.entries[key] = entry
            self.sync(key, entry, force=True)
        elif self.store.data_version() != entry.data_version:
            self.sync(key, entry)
        return entry

    def sync(self, key: tuple[int, str], entry: IndexEntry, *, force: bool = False) -> None:
        """Make the index hold exactly SQLite's vectors for (user, model)."""
        uid, model_id = key
        entry.data_version = self.store.data_version()
        with self.store.read():  # one snapshot: a concurrent forget cannot slip between ids and vectors
            count, max_id = self.store.embedding_stats(uid, model_id)
            if not force and (count, max_id) == (entry.count, entry.max_id):
                return
            sql_ids = self.store.embedding_ids(uid, model_id)
            idx_ids = entry.index.ids()
            extra = np.setdiff1d(idx_ids, sql_ids, assume_unique=True)
            missing = np.setdiff1d(sql_ids, idx_ids, assume_unique=True)
            if len(extra):
                entry.index.remove(extra)
            known_bad = np.fromiter(entry.bad, dtype=np.int64, count=len(entry.bad))
            missing = missing[~np.isin(missing, known_bad)]
            if len(missing):
                good, vectors, bad = self.store.embedding_vectors(missing.tolist(), entry.index.dim)
                entry.index.add(good, vectors)
                if bad:
                    entry.bad.update(bad)
                    eid, problem = next(iter(bad.items()))
                    log.warning("left %d unusable stored vectors of user %d / model %r out of the index (first: "
                                "vector %d %s); run `covip verify` to list them and `covip verify --repair` to "
                                "rebuild them", len(bad), uid, model_id, eid, problem)
            if entry.bad:
                live = set(sql_ids.tolist())
                entry.bad = {i: p for i, p in entry.bad.items() if i in live}
            entry.count, entry.max_id = count, max_id
        if len(extra) or len(missing):
            log.debug("index u%d/%s caught up: +%d -%d", uid, model_id, len(missing), len(extra))

    def added(self, uid: int, model_id: str, eid: int, vec: np.ndarray) -> None:
        """Take in a vector just committed to SQLite (saving the index when it is due)."""
        key = (uid, model_id)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entry(uid, model_id, int(vec.shape[0]))  # the sync picks up the new vector
        elif self.store.data_version() != entry.data_version:
            # Another connection committed since the last catch-up: a blind add would leave its changes
            # out while count/max_id looked current, so catch up from SQLite (that picks up eid too).
            self.sync(key, entry)
        else:
            entry.index.add(np.array([eid]), vec[None, :])
            entry.count += 1
            entry.max_id = max(entry.max_id, eid)
        if entry.index.needs_flush():
            self.save(key, entry)

    def save(self, key: tuple[int, str], entry: IndexEntry) -> None:
        """Persist one index under its cross-process lock, after a last catch-up (never resurrects forgotten ids)."""
        uid, model_id = key
        with file_lock(self.lock_path(uid, model_id)):
            self.sync(key, entry, force=True)
            if entry.index.ntotal == 0:  # another connection forgot them all: no file (verify flags empty ones)
                self.remove_files(uid, model_id)
                return
            entry.index.save(self.path(uid, model_id), self.home / "tmp",
                             meta={"user_id": uid, "model_id": model_id, "saved_at": utcnow(),
                                   "synced": [entry.count, entry.max_id]}, key=self.crypto)

    def save_unsaved(self) -> None:
        """Write every index with unsaved changes (Memory.flush and Memory.close)."""
        for key, entry in list(self.entries.items()):
            if entry.index.unsaved:
                self.save(key, entry)

    def catch_up_files(self) -> None:
        """On open: bring index files that lag SQLite (e.g. after a crash) up to date; drop orphaned ones."""
        live = set()
        for g in self.store.embedding_groups():
            key = (int(g["user_id"]), g["model_id"])
            path = self.path(*key)
            live.add(path.name)
            side = read_sidecar(path, self.crypto)
            if g["dim"] is None:
                log.warning("none of the %d stored vectors of user %d / model %r has a usable dimension; run "
                            "`covip verify --repair` to rebuild them", g["count"], key[0], key[1])
                continue
            if path.exists() and side and _synced(side) == [g["count"], g["max_id"]]:
                continue
            entry = self.entry(key[0], key[1], int(g["dim"]))
            self.save(key, entry)
        for path in (self.home / "index").glob("*.faiss"):
            if path.name not in live:
                side = read_sidecar(path, self.crypto) or {}
                uid, mid = side.get("user_id"), side.get("model_id")
                if isinstance(uid, int) and isinstance(mid, str):
                    with file_lock(self.lock_path(uid, mid)):
                        if self.store.embedding_stats(uid, mid)[0] == 0:
                            self.remove_files(uid, mid)

    def remove_files(self, uid: int, model_id: str) -> None:
        """Delete (user, model)'s index file and sidecar, and drop its in-memory index."""
        path = self.path(uid, model_id)
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)
        self.entries.pop((uid, model_id), None)

    def drop(self, key: tuple[int, str]) -> None:
        """Forget the in-memory index of (user, model); the next use reloads it from its file and SQLite."""
        self.entries.pop(key, None)

    def drop_user(self, uid: int) -> None:
        """Forget every in-memory index of a user."""
        for key in [k for k in self.entries if k[0] == uid]:
            self.entries.pop(key, None)

    def remove_user_files(self, uid: int) -> None:
        """Delete every index and lock file of a (forgotten) user."""
        for path in (self.home / "index").glob(f"u{uid}-*"):
            path.unlink(missing_ok=True)
        for path in (self.home / "locks").glob(f"u{uid}-*"):
            path.unlink(missing_ok=True)


def _synced(side: dict) -> list:
    """The SQLite (count, max id) an index file was saved in step with (older sidecars: its own count)."""
    synced = side.get("synced")
    return list(synced) if isinstance(synced, list) else [side.get("count"), side.get("max_id")]
