"""The SQLite side of the memory (source of truth): connection, transactions, audit log and row readers."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlite_utils

from covip.sdk.errors import (
    DatabaseCorruptError,
    NotFoundError,
    StoreError,
    WrongKeyError,
)
from covip.sdk.files import create_private_file, file_lock
from covip.sdk.homefiles import register_home, unregister_home
from covip.sdk.memory.crypto import HomeKey, db_errors
from covip.sdk.memory.layout import recovery_steps, refuse_over_leftovers
from covip.sdk.memory.schema import migrate, utcnow
from covip.sdk.memory.types import Concept, Episode, PhotoRecord, Turn, User
from covip.sdk.memory.validate import MAX_VECTOR_DIM, vector_problem

log = logging.getLogger(__name__)

__all__ = ["Store", "store_error", "sqlite_errors_as_store_errors"]

_C = TypeVar("_C", bound=type)
_CREATE_LOCK = "create.lock"


def corrupt_message(path: Path | None, detail: str) -> str:
    """The message of a damaged database: what happened, that photos are untouched, how to recover."""
    where = path if path is not None else "memory.db"
    home = path.parent if path is not None else Path("HOME")
    return (f"the memory database {where} is damaged ({detail}); covip cannot repair the database itself "
            f"(your photo files are untouched). Salvage what SQLite can still read: stop covip, then in "
            f"{home} run `sqlite3 memory.db .recover | sqlite3 recovered.db`, move memory.db, memory.db-wal "
            "and memory.db-shm away, rename recovered.db to memory.db and run `covip verify --repair` (.recover "
            "needs a sqlite3 shell built with it, such as the one from sqlite.org; some distributions' lack it). "
            + recovery_steps(home, "If that fails, recover in one of these ways"))


def store_error(exc: sqlite3.Error, path: Path | None) -> StoreError:
    """The StoreError for an SQLite error: damage, a lock held too long, a full disk, or no access."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc) or type(exc).__name__
    where = path if path is not None else "the memory database"
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return DatabaseCorruptError(corrupt_message(path, text))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StoreError(f"{where} stayed locked by another covip process longer than the busy timeout "
                          f"({text}); wait for it to finish, or raise MemoryConfig.busy_timeout_s")
    if name.startswith("SQLITE_FULL"):
        return StoreError(f"the disk holding {where} is full ({text}); free some space and try again "
                          "(nothing was written)")
    if name.startswith(("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_AUTH")):
        return StoreError(f"cannot read or write {where} ({text}); check that the file and its folder "
                          "belong to you and that the disk works")
    return StoreError(f"the memory database {where} failed ({text}); run `covip verify` to check it")


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except db_errors() as exc:
            store = getattr(args[0], "store", None) if args else None
            raise store_error(exc, getattr(store, "path", None)) from exc
    return call


def sqlite_errors_as_store_errors(cls: _C) -> _C:
    """Class decorator: no sqlite3 error escapes a public method (or the constructor) as a raw traceback;
    each becomes a :class:`StoreError` (a :class:`DatabaseCorruptError` naming the recovery path for damage)."""
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        attr = inspect.getattr_static(cls, name)
        if isinstance(attr, classmethod):
            setattr(cls, name, classmethod(_guarded(attr.__func__)))
        elif isinstance(attr, staticmethod):
            setattr(cls, name, staticmethod(_guarded(attr.__func__)))
        elif inspect.isfunction(attr):
            setattr(cls, name, _guarded(attr))
    return cls


class Store:
    """One SQLite connection (WAL, busy timeout, secure_delete) through sqlite-utils, plus row helpers."""

    def __init__(self, path: Path, *, home: Path, busy_timeout_s: float = 30.0, synchronous: str = "NORMAL",
                 key: HomeKey | None = None):
        self.path = path
        self.home = home
        # Creating a memory is serialized across processes (a lock file in locks/): another process that finds
        # the database missing, or present but not yet migrated, waits for the creator instead of mistaking
        # the creator's fresh WAL for the leftovers of a lost database.
        self._creating = contextlib.ExitStack()
        try:
            if not path.exists():
                self._take_create_lock()
                if not path.exists():
                    refuse_over_leftovers(home, "missing")
                    with contextlib.suppress(FileExistsError):  # 0600 now, so SQLite's -wal/-shm are 0600 too
                        os.close(create_private_file(path))
            self._connect_and_migrate(key, busy_timeout_s, synchronous)
        finally:
            self._creating.close()
        register_home(home)  # this process's photo readers now refuse the home's own files (homefiles)
        self._registered = True

    def _take_create_lock(self) -> bool:
        """Hold the home's creation lock until the database is migrated; False when already held."""
        if getattr(self, "_holds_create_lock", False):
            return False
        self._creating.enter_context(file_lock(self.home / "locks" / _CREATE_LOCK))
        self._holds_create_lock = True
        return True

    def _connect_and_migrate(self, key: HomeKey | None, busy_timeout_s: float, synchronous: str) -> None:
        path = self.path
        try:
            if key is not None:  # an encrypted home: SQLCipher, keyed with the home's page key
                conn = key.connect(path, timeout=busy_timeout_s)
            else:
                conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
        except db_errors() as exc:
            raise store_error(exc, path) from exc
        self.db = sqlite_utils.Database(conn)
        try:
            self._check_not_new_over_leftovers()
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute("PRAGMA foreign_keys=ON")
            # Overwrite deleted content with zeros so forgotten text/images leave no trace in the file.
            self.db.execute("PRAGMA secure_delete=ON")
            migrate(self.db)
        except db_errors() as exc:
            conn.close()
            raise store_error(exc, path) from exc
        except BaseException:
            conn.close()
            raise

    def _check_not_new_over_leftovers(self) -> None:
        """Before the first write: an empty database (0 bytes, or no tables) is only made a new memory when
        the home holds nothing of an old one; another program's SQLite file is never taken over."""
        version, tables = self._schema_state()
        if version:
            return
        if self._take_create_lock():  # another process may be creating it right now: wait for it
            version, tables = self._schema_state()
            if version:
                return
        if tables:
            raise StoreError(f"{self.path} is an SQLite database but not a covip memory (it has the tables "
                             f"{', '.join(sorted(tables)[:5])}); point --home at a covip home, or move that file away")
        refuse_over_leftovers(self.home, "empty" if self.path.stat().st_size == 0 else "empty (no tables)")

    def _schema_state(self) -> tuple[int, list[str]]:
        """(schema version, table names), read in one snapshot."""
        with self.read():
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            tables = [r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return version, tables

    @staticmethod
    def inspect(path: Path, key: HomeKey | None = None) -> str:
        """What ``path`` holds: 'missing', 'empty' (no bytes or no tables), 'covip', 'foreign' (another
        program's tables) or 'damaged' (SQLite cannot read it). Opens it only through SQLite (SQLCipher with
        the home's ``key`` in an encrypted home)."""
        if not path.exists():
            return "missing"
        if path.stat().st_size == 0:
            return "empty"
        try:
            conn = (key.connect(path, timeout=5.0) if key is not None
                    else sqlite3.connect(str(path), timeout=5.0, isolation_level=None))
        except (*db_errors(), WrongKeyError):
            return "damaged"
        try:
            conn.execute("BEGIN")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            conn.execute("COMMIT")
        except db_errors():
            return "damaged"
        finally:
            conn.close()
        if version:
            return "covip"
        return "foreign" if tables else "empty"

    def close(self) -> None:
        try:
            self.db.close()
        finally:
            if getattr(self, "_registered", False):
                self._registered = False
                unregister_home(self.home)

    # ---------------------------------------------------------------- transactions
    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """One IMMEDIATE transaction: takes the write lock up front (waiting up to the busy timeout)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            if self.db.conn.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite_utils.Database]:
        """A read transaction: every query inside sees one consistent snapshot."""
        if self.db.conn.in_transaction:
            yield self.db
            return
        self.db.execute("BEGIN")
        try:
            yield self.db
        finally:
            if self.db.conn.in_transaction:
                self.db.execute("COMMIT")

    def data_version(self) -> int:
        """Changes whenever *another* connection commits (cheap change detection for the index)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def checkpoint_truncate(self) -> bool:
        """Move the WAL into the database and truncate it to zero bytes; False if readers prevented it."""
        busy, _log_frames, _ckpt = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0

    def rows(self, sql: str, params: Sequence[Any] | dict = ()) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def one(self, sql: str, params: Sequence[Any] | dict = ()) -> dict[str, Any] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def scalar(self, sql: str, params: Sequence[Any] | dict = ()) -> Any:
        row = self.db.execute(sql, params).fetchone()
        return row[0] if row else None

    def audit(self, action: str, user_id: int | None, target: str | None = None, target_id: int | None = None,
              **detail: Any) -> None:
        """Append to the audit log. Only ids and counts go in here, never names or text."""
        self.db["audit"].insert(
            {"at": utcnow(), "action": action, "user_id": user_id, "target": target, "target_id": target_id,
             "detail": json.dumps(detail, sort_keys=True)}
        )

    # ---------------------------------------------------------------- lookups
    def user_row(self, name: str) -> dict[str, Any]:
        row = self.one("SELECT * FROM users WHERE name = ?", [name])
        if row is None:
            raise NotFoundError(f"no user named {name!r} in this memory; add it with `covip user add {name}` "
                                "or Memory.add_user()")
        return row

    def user_name(self, user_id: int) -> str:
        return self.scalar("SELECT name FROM users WHERE id = ?", [user_id])

    def concept_row(self, user_id: int, name: str) -> dict[str, Any] | None:
        return self.one("SELECT * FROM concepts WHERE user_id = ? AND name = ? COLLATE NOCASE", [user_id, name])

    def to_user(self, row: dict[str, Any]) -> User:
        return User(id=row["id"], name=row["name"], created_at=row["created_at"])

    def to_concept(self, row: dict[str, Any]) -> Concept:
        count = self.scalar("SELECT count(*) FROM photo_concepts WHERE concept_id = ?", [row["id"]])
        return Concept(id=row["id"], user=self.user_name(row["user_id"]), name=row["name"], kind=row["kind"],
                       notes=row["notes"], photo_count=int(count))

    def stored_file(self, rel: Any) -> Path | None:
        """The file a ``photos.stored_path`` value names, or None unless it is a plain relative path inside the
        home's photo store (a damaged or hostile row must never point covip at another file)."""
        if not isinstance(rel, str) or not rel or "\x00" in rel or os.path.isabs(rel):
            return None
        parts = Path(rel).parts
        if len(parts) < 2 or parts[0] != "photos" or ".." in parts:
            return None
        return self.home / rel

    def to_photo(self, row: dict[str, Any]) -> PhotoRecord:
        if row["stored_path"]:
            path: Path | None = self.stored_file(row["stored_path"])
        else:
            path = Path(row["source_path"]) if row["source_path"] else None
        gps = (row["gps_lat"], row["gps_lon"]) if row["gps_lat"] is not None else None
        return PhotoRecord(
            id=row["id"], owner=self.user_name(row["user_id"]), sha256=row["sha256"], path=path,
            format=row["format"], width=row["width"], height=row["height"], taken_at=row["taken_at"],
            place=row["place"], gps=gps, created_at=row["created_at"], original_name=row.get("original_name"),
        )

    def photo(self, photo_id: int) -> PhotoRecord:
        row = self.one("SELECT * FROM photos WHERE id = ?", [photo_id])
        if row is None:
            raise NotFoundError(f"no photo with id {photo_id}")
        return self.to_photo(row)

    def photo_concept_names(self, photo_id: int, only: Iterable[int] | None = None) -> tuple[str, ...]:
        rows = self.rows(
            "SELECT c.id, c.name FROM photo_concepts pc JOIN concepts c ON c.id = pc.concept_id "
            "WHERE pc.photo_id = ? ORDER BY c.name COLLATE NOCASE", [photo_id])
        allowed = None if only is None else set(only)
        return tuple(r["name"] for r in rows if allowed is None or r["id"] in allowed)

    def to_episode(self, row: dict[str, Any]) -> Episode:
        names = self.rows(
            "SELECT c.name FROM episode_concepts ec JOIN concepts c ON c.id = ec.concept_id "
            "WHERE ec.episode_id = ? ORDER BY c.name COLLATE NOCASE", [row["id"]])
        turns = tuple(Turn(role=t["role"], text=t["text"]) for t in json.loads(row["dialogue"]))
        return Episode(id=row["id"], photo_id=row["photo_id"], dialogue=turns,
                       concepts=tuple(n["name"] for n in names), taken_at=row["taken_at"], place=row["place"],
                       created_at=row["created_at"])

    def photo_episodes(self, photo_id: int, only_concepts: Iterable[int] | None = None) -> tuple[Episode, ...]:
        """Episodes about a photo, newest first; ``only_concepts`` keeps those tied to these concept ids."""
        if only_concepts is None:
            rows = self.rows("SELECT * FROM episodes WHERE photo_id = ? "
                             "ORDER BY coalesce(taken_at, created_at) DESC, id DESC", [photo_id])
        else:
            ids = sorted(set(only_concepts))
            marks = ",".join("?" * len(ids)) or "NULL"
            rows = self.rows(
                f"SELECT DISTINCT e.* FROM episodes e JOIN episode_concepts ec ON ec.episode_id = e.id "
                f"WHERE e.photo_id = ? AND ec.concept_id IN ({marks}) "
                "ORDER BY coalesce(e.taken_at, e.created_at) DESC, e.id DESC", [photo_id, *ids])
        return tuple(self.to_episode(r) for r in rows)

    def embedding_vectors(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """(ids, vectors) of the usable rows among ``ids`` (in that order), and {id: problem} for rows whose
        stored vector is unusable (wrong length or dimension, NaN, not unit length): those are left out."""
        rows: dict[int, np.ndarray] = {}
        bad: dict[int, str] = {}
        for chunk_start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[chunk_start:chunk_start + 900]]
            marks = ",".join("?" * len(chunk))
            for eid, row_dim, blob in self.db.execute(
                    f"SELECT id, dim, vector FROM embeddings WHERE id IN ({marks})", chunk):
                problem = vector_problem(blob, row_dim, dim)
                if problem is None:
                    rows[int(eid)] = np.frombuffer(blob, dtype=np.float32)
                else:
                    bad[int(eid)] = problem
        keep = [int(i) for i in ids if int(i) in rows]
        out = np.zeros((len(keep), dim), dtype=np.float32)
        for n, i in enumerate(keep):
            out[n] = rows[i]
        return np.array(keep, dtype=np.int64), out, bad

    def bad_embeddings(self, user_id: int, model_id: str, dim: int) -> list[dict[str, Any]]:
        """Every vector of one (user, model) that cannot be used with ``dim``: id, photo_id and the problem."""
        out = []
        cur = self.db.execute("SELECT id, photo_id, dim, vector FROM embeddings WHERE user_id = ? AND model_id = ? "
                              "ORDER BY id", [user_id, model_id])
        for eid, pid, row_dim, blob in cur:
            problem = vector_problem(blob, row_dim, dim)
            if problem is not None:
                out.append({"id": int(eid), "photo_id": pid, "problem": problem})
        return out

    def malformed_embeddings(self) -> list[dict[str, Any]]:
        """Vector rows whose owner or model id is not even of the right type (they belong to no index)."""
        return self.rows("SELECT id, photo_id, typeof(user_id) AS user_type, typeof(model_id) AS model_type "
                         "FROM embeddings WHERE typeof(user_id) != 'integer' OR typeof(model_id) != 'text' "
                         "ORDER BY id")

    def embedding_ids(self, user_id: int, model_id: str) -> np.ndarray:
        cur = self.db.execute("SELECT id FROM embeddings WHERE user_id = ? AND model_id = ? ORDER BY id",
                              [user_id, model_id])
        return np.fromiter((r[0] for r in cur), dtype=np.int64)

    def embedding_stats(self, user_id: int, model_id: str) -> tuple[int, int]:
        """(count, max id) of one user's vectors for one model."""
        row = self.db.execute("SELECT count(*), coalesce(max(id), 0) FROM embeddings "
                              "WHERE user_id = ? AND model_id = ?", [user_id, model_id]).fetchone()
        return int(row[0]), int(row[1])

    def embedding_groups(self) -> list[dict[str, Any]]:
        """Every (user, model) that has vectors, with dim (see :meth:`embedding_dim`; None when no row has a usable
        one), count and max id: one pass over the (user, model, dim) index. Rows of the wrong type are left to
        :meth:`malformed_embeddings`."""
        by_key: dict[tuple[int, str], dict[str, Any]] = {}
        for uid, mid, dim, n, max_id in self.db.execute(
                "SELECT user_id, model_id, dim, count(*), max(id) FROM embeddings "
                "WHERE typeof(user_id) = 'integer' AND typeof(model_id) = 'text' GROUP BY user_id, model_id, dim"):
            g = by_key.setdefault((uid, mid), {"user_id": uid, "model_id": mid, "count": 0, "max_id": 0, "dims": {}})
            g["count"] += n
            g["max_id"] = max(g["max_id"], max_id)
            g["dims"][dim] = n
        for g in by_key.values():
            g["dim"] = _usual_dim(g.pop("dims"))  # None: no row has a usable dimension
        return list(by_key.values())

    def embedding_dim(self, user_id: int, model_id: str) -> int | None:
        """Vector length of one user's vectors for one model: the most common valid one, so a few damaged rows
        cannot change it (None when there are none). One scan of the (user, model, dim) index."""
        dims = dict(self.db.execute("SELECT dim, count(*) FROM embeddings WHERE user_id = ? AND model_id = ? "
                                    "GROUP BY dim", [user_id, model_id]).fetchall())
        return _usual_dim(dims)

    # ---------------------------------------------------------------- caption cache invalidation
    def invalidate_captions_for_photos(self, photo_ids: Iterable[int]) -> int:
        """Drop cached captions that used any of these memory photos (called inside a write)."""
        ids = sorted({int(p) for p in photo_ids})
        dropped = 0
        for start in range(0, len(ids), 900):
            chunk = ids[start:start + 900]
            marks = ",".join("?" * len(chunk))
            cache_ids = [r[0] for r in self.db.execute(
                f"SELECT DISTINCT cache_id FROM caption_cache_items WHERE photo_id IN ({marks})", chunk)]
            dropped += self.delete_captions(cache_ids)
        return dropped

    def delete_captions(self, cache_ids: Sequence[int]) -> int:
        for start in range(0, len(cache_ids), 900):
            chunk = list(cache_ids[start:start + 900])
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM caption_cache_items WHERE cache_id IN ({marks})", chunk)
            self.db.execute(f"DELETE FROM caption_cache WHERE id IN ({marks})", chunk)
        return len(cache_ids)


def _usual_dim(counts: dict[Any, int]) -> int | None:
    """The most common valid vector length among {dim: count} (ties: the smaller), or None."""
    valid = [(n, -d) for d, n in counts.items()
             if isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_VECTOR_DIM]
    return -max(valid)[1] if valid else None
