"""The SQLite side of the memory (source of truth): connection, transactions, audit log and row readers."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils

from covip.sdk.errors import NotFoundError, StoreError
from covip.sdk.memory.schema import migrate, utcnow
from covip.sdk.memory.types import Concept, Episode, PhotoRecord, Turn, User

log = logging.getLogger(__name__)

__all__ = ["Store"]


class Store:
    """One SQLite connection (WAL, busy timeout, secure_delete) through sqlite-utils, plus row helpers."""

    def __init__(self, path: Path, *, home: Path, busy_timeout_s: float = 30.0, synchronous: str = "NORMAL"):
        self.path = path
        self.home = home
        try:
            conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the memory database {path}: {exc}") from exc
        self.db = sqlite_utils.Database(conn)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.execute("PRAGMA foreign_keys=ON")
            # Overwrite deleted content with zeros so forgotten text/images leave no trace in the file.
            self.db.execute("PRAGMA secure_delete=ON")
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(
                f"{path} is not a usable covip memory database ({exc}); restore it from an export "
                "bundle (covip import-memory) or move it away to start a new memory"
            ) from exc
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.db.close()

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

    def to_photo(self, row: dict[str, Any]) -> PhotoRecord:
        if row["stored_path"]:
            path: Path | None = self.home / row["stored_path"]
        else:
            path = Path(row["source_path"]) if row["source_path"] else None
        gps = (row["gps_lat"], row["gps_lon"]) if row["gps_lat"] is not None else None
        return PhotoRecord(
            id=row["id"], owner=self.user_name(row["user_id"]), sha256=row["sha256"], path=path,
            format=row["format"], width=row["width"], height=row["height"], taken_at=row["taken_at"],
            place=row["place"], gps=gps, created_at=row["created_at"],
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

    def embedding_vectors(self, ids: Sequence[int], dim: int) -> np.ndarray:
        """Vectors of the given embedding ids, in that order."""
        out = np.zeros((len(ids), dim), dtype=np.float32)
        pos = {int(i): n for n, i in enumerate(ids)}
        for chunk_start in range(0, len(ids), 900):
            chunk = [int(i) for i in ids[chunk_start:chunk_start + 900]]
            marks = ",".join("?" * len(chunk))
            for eid, blob in self.db.execute(f"SELECT id, vector FROM embeddings WHERE id IN ({marks})", chunk):
                out[pos[eid]] = np.frombuffer(blob, dtype=np.float32)
        return out

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
        """Every (user, model) that has vectors, with dim, count and max id (reads only the index)."""
        groups = self.rows("SELECT user_id, model_id, count(*) AS count, max(id) AS max_id "
                           "FROM embeddings GROUP BY user_id, model_id")
        for g in groups:
            g["dim"] = self.embedding_dim(g["user_id"], g["model_id"])
        return groups

    def embedding_dim(self, user_id: int, model_id: str) -> int | None:
        """Vector length of one user's vectors for one model (None when there are none): one row read."""
        return self.scalar("SELECT dim FROM embeddings WHERE user_id = ? AND model_id = ? LIMIT 1",
                           [user_id, model_id])

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
