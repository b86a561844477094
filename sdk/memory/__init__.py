"""covip.sdk.memory: the on-device episodic memory (SQLite source of truth + derived FAISS indexes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from covip.sdk._config import lazy_exports

if TYPE_CHECKING:  # imported on first use (see __getattr__), so `import covip.sdk...` stays light
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

_LAZY: dict[str, str] = {
    "MemoryConfig": "covip.sdk.memory.config",
    "IndexConfig": "covip.sdk.memory.index",
    "VectorIndex": "covip.sdk.memory.index",
    "Memory": "covip.sdk.memory.memory",
    "SCHEMA_VERSION": "covip.sdk.memory.schema",
    "migrate": "covip.sdk.memory.schema",
    "schema_version": "covip.sdk.memory.schema",
    "Concept": "covip.sdk.memory.types",
    "Episode": "covip.sdk.memory.types",
    "ForgetReport": "covip.sdk.memory.types",
    "HistoryItem": "covip.sdk.memory.types",
    "Hit": "covip.sdk.memory.types",
    "PhotoRecord": "covip.sdk.memory.types",
    "PhotoTags": "covip.sdk.memory.types",
    "Remembered": "covip.sdk.memory.types",
    "Turn": "covip.sdk.memory.types",
    "User": "covip.sdk.memory.types",
    "VerifyReport": "covip.sdk.memory.types",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
