"""How a memory home is opened: the typed :class:`MemoryConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covip.sdk._config import ConfigMixin
from covip.sdk.config import resolve_home
from covip.sdk.errors import InputError
from covip.sdk.memory.index import IndexConfig

__all__ = ["MemoryConfig"]


@dataclass
class MemoryConfig(ConfigMixin):
    """How a memory home is opened. Pass one to :meth:`covip.sdk.Memory.open`."""

    home: Path | None = field(
        default=None,
        metadata={"help": "Directory holding memory.db and the FAISS index files. Default: $COVIP_HOME, "
                  "else the user data directory."},
    )
    store_copies: bool = field(
        default=True,
        metadata={"help": "Keep a copy of every remembered photo under the home (False: keep only the "
                  "original path; the memory then depends on those files staying put)."},
    )
    max_pixels: int = field(
        default=64_000_000,
        metadata={"help": "Refuse photos with more pixels than this (decompression-bomb guard)."},
    )
    busy_timeout_s: float = field(
        default=30.0,
        metadata={"help": "How long a writer waits for another process's write transaction to finish."},
    )
    synchronous: str = field(
        default="NORMAL",
        metadata={"help": "SQLite synchronous mode: NORMAL survives process crashes (WAL); FULL also "
                  "survives power loss at the cost of an fsync per write."},
    )
    index: IndexConfig = field(
        default_factory=IndexConfig,
        metadata={"help": "Vector index settings (exact vs HNSW, thresholds, flush cadence)."},
    )

    def __post_init__(self) -> None:
        if self.home is not None:
            self.home = resolve_home(self.home)
        if not isinstance(self.synchronous, str) or self.synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InputError(f"synchronous must be NORMAL, FULL or EXTRA, not {self.synchronous!r}")
        self.synchronous = self.synchronous.upper()
        if isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise InputError(f"max_pixels must be a positive integer, not {self.max_pixels!r:.40}")
        if isinstance(self.busy_timeout_s, bool) or not isinstance(self.busy_timeout_s, (int, float)) \
                or not 0 <= self.busy_timeout_s <= 86_400:
            raise InputError(f"busy_timeout_s must be 0 to 86400 seconds, not {self.busy_timeout_s!r:.40}")
        if not isinstance(self.store_copies, bool):
            raise InputError(f"store_copies must be True or False, not {self.store_copies!r:.40}")
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
        if not isinstance(self.index, IndexConfig):
            raise InputError(f"index must be an IndexConfig (or a dict of its fields), not {type(self.index).__name__}")
