"""covip.sdk.memory: the on-device episodic memory (SQLite source of truth + derived FAISS indexes)."""

from covip.sdk.memory.config import MemoryConfig
from covip.sdk.memory.index import IndexConfig, VectorIndex
from covip.sdk.memory.memory import Memory
from covip.sdk.memory.schema import SCHEMA_VERSION, migrate, schema_version
from covip.sdk.memory.types import (
    Concept,
    Episode,
    ForgetReport,
    HistoryItem,
    Hit,
    PhotoRecord,
    PhotoTags,
    Remembered,
    Turn,
    User,
    VerifyReport,
)

__all__ = [
    "Memory",
    "MemoryConfig",
    "IndexConfig",
    "VectorIndex",
    "SCHEMA_VERSION",
    "migrate",
    "schema_version",
    "Concept",
    "Episode",
    "ForgetReport",
    "HistoryItem",
    "Hit",
    "PhotoRecord",
    "PhotoTags",
    "Remembered",
    "Turn",
    "User",
    "VerifyReport",
]
