"""SQLite schema of the memory: numbered migrations, applied in order, one transaction each.

The schema version is ``PRAGMA user_version``; ``schema_migrations`` records when each step ran.
Ids use AUTOINCREMENT so a forgotten row's id is never reused (FAISS ids, caches and the audit
log refer to ids).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlite_utils

from covip.sdk.errors import SchemaError

log = logging.getLogger(__name__)

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate", "schema_version", "utcnow"]


def utcnow() -> str:
    """Current UTC time as an ISO-8601 string (the format every timestamp column uses)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


def _m1_core(db: sqlite_utils.Database) -> None:
    """Users, concepts, photos, dialogue episodes, embeddings, audit log, pending file deletions."""
    for sql in (
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL)""",
        """CREATE TABLE concepts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            name TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'other'
                CHECK (kind IN ('person', 'pet', 'object', 'place', 'other')),
            notes TEXT NOT NULL DEFAULT '',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        "CREATE UNIQUE INDEX concepts_user_name ON concepts(user_id, name COLLATE NOCASE)",
        """CREATE TABLE photos (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            sha256 TEXT NOT NULL,
            stored_path TEXT,
            source_path TEXT,
            format TEXT NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            taken_at TEXT,
            gps_lat REAL,
            gps_lon REAL,
            place TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (user_id, sha256))""",
        """CREATE TABLE photo_concepts (
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            concept_id INTEGER NOT NULL REFERENCES concepts(id),
            PRIMARY KEY (photo_id, concept_id))""",
        "CREATE INDEX photo_concepts_concept ON photo_concepts(concept_id)",
        """CREATE TABLE episodes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            dialogue TEXT NOT NULL,
            taken_at TEXT,
            place TEXT,
            created_at TEXT NOT NULL)""",
        "CREATE INDEX episodes_photo ON episodes(photo_id)",
        "CREATE INDEX episodes_user ON episodes(user_id)",
        """CREATE TABLE episode_concepts (
            episode_id INTEGER NOT NULL REFERENCES episodes(id),
            concept_id INTEGER NOT NULL REFERENCES concepts(id),
            PRIMARY KEY (episode_id, concept_id))""",
        "CREATE INDEX episode_concepts_concept ON episode_concepts(concept_id)",
        """CREATE TABLE embeddings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            photo_id INTEGER NOT NULL REFERENCES photos(id),
            model_id TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            UNIQUE (photo_id, model_id))""",
        "CREATE INDEX embeddings_user_model ON embeddings(user_id, model_id)",
        """CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            user_id INTEGER,
            target TEXT,
            target_id INTEGER,
            detail TEXT NOT NULL DEFAULT '{}')""",
        """CREATE TABLE pending_deletions (
            path TEXT PRIMARY KEY,
            queued_at TEXT NOT NULL)""",
    ):
        db.execute(sql)


def _m2_caption_cache(db: sqlite_utils.Database) -> None:
    """Caption cache for Caption-Augmented Generation, with the memory photos each caption used."""
    db.execute(
        """CREATE TABLE caption_cache (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id INTEGER NOT NULL REFERENCES users(id),
            model_id TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            photo_sha256 TEXT NOT NULL,
            context_key TEXT NOT NULL,
            caption TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (user_id, model_id, prompt_version, photo_sha256, context_key))"""
    )
    db.execute(
        """CREATE TABLE caption_cache_items (
            cache_id INTEGER NOT NULL REFERENCES caption_cache(id),
            photo_id INTEGER NOT NULL,
            PRIMARY KEY (cache_id, photo_id))"""
    )
    db.execute("CREATE INDEX caption_cache_items_photo ON caption_cache_items(photo_id)")


def _m3_concept_shares(db: sqlite_utils.Database) -> None:
    """Concepts a user explicitly shares with another user (the only way data crosses users)."""
    db.execute(
        """CREATE TABLE concept_shares (
            concept_id INTEGER NOT NULL REFERENCES concepts(id),
            user_id INTEGER NOT NULL REFERENCES users(id),
            created_at TEXT NOT NULL,
            PRIMARY KEY (concept_id, user_id))"""
    )
    db.execute("CREATE INDEX concept_shares_user ON concept_shares(user_id)")


def _m4_embedding_dims(db: sqlite_utils.Database) -> None:
    """Index vectors by (user, model, dim): the usual dimension of a user's vectors is read from the index
    alone, so a few damaged rows cannot change it and opening stays cheap."""
    db.execute("CREATE INDEX embeddings_user_model_dim ON embeddings(user_id, model_id, dim)")
    db.execute("DROP INDEX embeddings_user_model")


def _m5_original_names(db: sqlite_utils.Database) -> None:
    """Photos keep the file name they were remembered from (a base name only, never a path; NULL when they came
    as bytes or from a database older than this step)."""
    db.execute("ALTER TABLE photos ADD COLUMN original_name TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables", _m1_core),
    Migration(2, "caption cache", _m2_caption_cache),
    Migration(3, "concept sharing", _m3_concept_shares),
    Migration(4, "embedding dimension index", _m4_embedding_dims),
    Migration(5, "original photo file names", _m5_original_names),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def schema_version(db: sqlite_utils.Database) -> int:
    """The schema version stored in the database file (0 for a new file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite_utils.Database, target: int = SCHEMA_VERSION) -> list[int]:
    """Apply missing migrations up to ``target``, each in its own IMMEDIATE transaction; returns those applied.

    Safe with several processes opening one home at once: the version is re-read under the write lock.
    """
    applied: list[int] = []
    for m in MIGRATIONS:
        if m.version > target:
            break
        db.execute("BEGIN IMMEDIATE")
        try:
            current = schema_version(db)
            if current > SCHEMA_VERSION:
                raise SchemaError(
                    f"this memory's database has schema version {current}, newer than this covip "
                    f"understands ({SCHEMA_VERSION}); upgrade covip (pip install -U covip)"
                )
            if current >= m.version:
                db.execute("ROLLBACK")
                continue
            if current != m.version - 1:
                raise SchemaError(f"schema version {current} cannot be migrated to {m.version}")
            m.apply(db)
            if m.version == 1:
                db.execute(
                    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                    "applied_at TEXT NOT NULL)"
                )
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                [m.version, m.name, utcnow()],
            )
            db.execute(f"PRAGMA user_version = {int(m.version)}")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, SchemaError):
                raise
            if isinstance(exc, Exception):
                raise SchemaError(f"migration {m.version} ({m.name}) failed: {exc}") from exc
            raise
        log.info("applied schema migration %d (%s)", m.version, m.name)
        applied.append(m.version)
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise SchemaError(
            f"this memory's database has schema version {current}, newer than this covip understands "
            f"({SCHEMA_VERSION}); upgrade covip (pip install -U covip)"
        )
    return applied
