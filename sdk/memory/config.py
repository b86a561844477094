"""How a memory home is opened: the typed :class:`MemoryConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covip.sdk.errors import InputError
from covip.sdk.memory.index import IndexConfig

__all__ = ["MemoryConfig"]


@dataclass
class MemoryConfig:
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
            self.home = Path(self.home).expanduser()
        if self.synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InputError(f"synchronous must be NORMAL, FULL or EXTRA, not {self.synchronous!r}")
        self.synchronous = self.synchronous.upper()
        if self.max_pixels < 1:
            raise InputError("max_pixels must be positive")
        if isinstance(self.index, dict):
            self.index = IndexConfig(**self.index)
