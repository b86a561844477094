"""FAISS vector index for one (user, embedding model): ids are SQLite ``embeddings.id`` values.

Exact inner-product search (``IndexFlatIP``) below a size threshold, HNSW above it (chosen
automatically, overridable). The index is derived data: SQLite holds every vector, so a lost,
stale or damaged index file is rebuilt from it. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from covip.sdk._config import ConfigMixin
from covip.sdk.errors import DecryptError, IndexCorruptError, InputError
from covip.sdk.memory import crypto
from covip.sdk.memory.crypto import HomeKey
from covip.sdk.memory.validate import MAX_K


def _faiss():  # noqa: ANN202 - faiss loads on first use, so commands that never search stay fast to start
    import faiss

    return faiss

log = logging.getLogger(__name__)

__all__ = ["IndexConfig", "VectorIndex"]

IndexKind = Literal["auto", "flat", "hnsw"]


@dataclass
class IndexConfig(ConfigMixin):
    """How the per-user vector index is built and persisted."""

    kind: IndexKind = field(
        default="auto",
        metadata={"help": "'flat' = exact search, 'hnsw' = approximate graph search, 'auto' = flat "
                  "below `hnsw_threshold` vectors and HNSW above it."},
    )
    hnsw_threshold: int = field(
        default=25_000,
        metadata={"help": "With kind='auto', switch from exact to HNSW search at this many vectors "
                  "(and back below half of it)."},
    )
    hnsw_m: int = field(default=32, metadata={"help": "HNSW graph degree (more = better recall, more RAM)."})
    ef_construction: int = field(default=64, metadata={"help": "HNSW build-time search depth."})
    ef_search: int = field(default=128, metadata={"help": "HNSW query-time search depth (recall vs speed)."})
    flush_every: int = field(
        default=1000,
        metadata={"help": "Persist the index file after this many unsaved adds (or 10% of its size, "
                  "whichever is larger), and always on close. Unsaved adds are caught up from SQLite."},
    )

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "flat", "hnsw"):
            raise InputError(f"index kind must be 'auto', 'flat' or 'hnsw', not {self.kind!r}")
        for name, low, high in (("hnsw_threshold", 1, 10**9), ("hnsw_m", 2, 512), ("ef_construction", 1, 10**5),
                                ("ef_search", 1, 10**5), ("flush_every", 1, 10**9)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InputError(f"index setting {name} must be a whole number from {low} to {high}, "
                                 f"not {value!r:.40}")


class VectorIndex:
    """One FAISS index of L2-normalized vectors keyed by int64 ids, with inner-product (cosine) scores."""

    def __init__(self, dim: int, config: IndexConfig | None = None, *, kind: str | None = None) -> None:
        self.dim = int(dim)
        self.config = config or IndexConfig()
        self.kind = kind or ("hnsw" if self.config.kind == "hnsw" else "flat")
        self._index = self._empty(self.kind)
        self.unsaved = 0

    # ----------------------------------------------------------------- building
    def _empty(self, kind: str) -> Any:  # a faiss.IndexIDMap2
        if kind == "hnsw":
            inner = _faiss().IndexHNSWFlat(self.dim, self.config.hnsw_m, _faiss().METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = self.config.ef_construction
            inner.hnsw.efSearch = self.config.ef_search
        else:
            inner = _faiss().IndexFlatIP(self.dim)
        return _faiss().IndexIDMap2(inner)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        """All ids in the index (int64, insertion order)."""
        return _faiss().vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def vectors(self) -> np.ndarray:
        """All stored vectors, in the order of :meth:`ids`."""
        if self.ntotal == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.index.reconstruct_n(0, self.ntotal)

    def _check(self, ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) != len(vectors):
            raise InputError(f"{len(ids)} ids but {len(vectors)} vectors")
        return ids, vectors

    def _target_kind(self, n: int) -> str:
        if self.config.kind != "auto":
            return self.config.kind
        if self.kind == "flat":
            return "hnsw" if n >= self.config.hnsw_threshold else "flat"
        return "flat" if n < self.config.hnsw_threshold // 2 else "hnsw"

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under ``ids`` (switching to HNSW when the size threshold is crossed)."""
        ids, vectors = self._check(ids, vectors)
        if len(ids) == 0:
            return
        target = self._target_kind(self.ntotal + len(ids))
        if target != self.kind:
            self.rebuild(np.concatenate([self.ids(), ids]), np.concatenate([self.vectors(), vectors]))
        else:
            self._index.add_with_ids(vectors, ids)
        self.unsaved += len(ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids``; HNSW cannot delete in place, so it is rebuilt without them. Returns how many."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0 or self.ntotal == 0:
            return 0
        if self.kind == "flat":
            removed = int(self._index.remove_ids(_faiss().IDSelectorBatch(ids)))
        else:
            all_ids = self.ids()
            keep = ~np.isin(all_ids, ids)
            removed = int((~keep).sum())
            if removed:
                self.rebuild(all_ids[keep], self.vectors()[keep])
        self.unsaved += removed
        return removed

    def rebuild(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Replace the whole content (kind re-chosen from the size)."""
        ids, vectors = self._check(ids, vectors)
        if self.config.kind == "auto":
            self.kind = "hnsw" if len(ids) >= self.config.hnsw_threshold else "flat"
        else:
            self.kind = self.config.kind
        index = self._empty(self.kind)
        if len(ids):
            index.add_with_ids(vectors, ids)
        self._index = index
        self.unsaved = max(self.unsaved, 1)
        log.debug("rebuilt %s index with %d vectors", self.kind, len(ids))

    # ----------------------------------------------------------------- searching
    def search(
        self, queries: np.ndarray, k: int, *, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, at most as many columns as there are vectors (k is capped
        before FAISS allocates anything); missing slots have id -1. ``allowed_ids`` restricts results."""
        queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, self.dim))
        k = int(k)
        if k > MAX_K:
            raise InputError(f"k={k} is more results than one search may ask for ({MAX_K})")
        allowed = None if allowed_ids is None else np.asarray(allowed_ids, dtype=np.int64).reshape(-1)
        k = min(k, self.ntotal, self.ntotal if allowed is None else len(allowed))
        if k <= 0:
            return (np.full((len(queries), 0), -np.inf, dtype=np.float32),
                    np.full((len(queries), 0), -1, dtype=np.int64))
        params = None
        if allowed is not None:
            sel = _faiss().IDSelectorBatch(allowed)
            if self.kind == "hnsw":
                params = _faiss().SearchParametersHNSW(sel=sel, efSearch=max(self.config.ef_search, k))
            else:
                params = _faiss().SearchParameters(sel=sel)
        elif self.kind == "hnsw":
            params = _faiss().SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        with _few_threads(len(queries)):
            scores, ids = self._index.search(queries, k, params=params)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    # ----------------------------------------------------------------- persistence
    def needs_flush(self) -> bool:
        return self.unsaved >= max(self.config.flush_every, self.ntotal // 10)

    def save(self, path: Path, tmp_dir: Path, *, meta: dict | None = None, key: HomeKey | None = None) -> None:
        """Write the index atomically, then its small JSON sidecar (count and max id, for cheap staleness checks);
        both sealed with ``key`` in an encrypted home."""
        crypto.write_file(path, memoryview(_faiss().serialize_index(self._index)), tmp_dir, key, "index")
        ids = self.ids()
        sidecar = {
            "kind": self.kind,
            "dim": self.dim,
            "count": int(len(ids)),
            "max_id": int(ids.max()) if len(ids) else 0,
            **(meta or {}),
        }
        crypto.write_file(sidecar_path(path), json.dumps(sidecar, indent=1).encode(), tmp_dir, key, "index-meta")
        self.unsaved = 0

    @classmethod
    def load(cls, path: Path, dim: int, config: IndexConfig | None = None, *,
             key: HomeKey | None = None) -> VectorIndex:
        """Read an index file (decrypted with ``key`` in an encrypted home); a damaged file raises
        :class:`IndexCorruptError` (rebuild it with repair)."""
        try:
            raw = _faiss().deserialize_index(np.frombuffer(crypto.read_file(path, key, "index"), dtype=np.uint8))
        except DecryptError as exc:
            raise IndexCorruptError(f"FAISS index file {path} fails authentication ({exc}); it is derived data: "
                                    "run `covip verify --repair` to rebuild it from SQLite") from exc
        except RuntimeError as exc:
            raise IndexCorruptError(
                f"FAISS index file {path} cannot be read ({str(exc).splitlines()[0][:200]}); it is derived "
                "data: run `covip verify --repair` (or Memory.repair()) to rebuild it from SQLite"
            ) from exc
        if not isinstance(raw, _faiss().IndexIDMap2) or raw.d != dim:
            raise IndexCorruptError(
                f"FAISS index file {path} is not a covip index of dimension {dim}; "
                "run `covip verify --repair` to rebuild it"
            )
        inner = _faiss().downcast_index(raw.index)
        kind = "hnsw" if isinstance(inner, _faiss().IndexHNSW) else "flat"
        self = cls(dim, config, kind=kind)
        self._index = raw
        if kind == "hnsw":
            inner.hnsw.efSearch = self.config.ef_search
        return self


_omp_lock = threading.Lock()


@contextlib.contextmanager
def _few_threads(n_queries: int) -> Iterator[None]:
    """Run small searches on one OpenMP thread: FAISS's thread team stalls single queries whenever another
    core is busy (measured: flat p95 36 ms -> 4.6 ms at 10k). Bulk searches keep all threads."""
    if n_queries > 4:
        yield
        return
    with _omp_lock:
        before = _faiss().omp_get_max_threads()
        _faiss().omp_set_num_threads(1)
        try:
            yield
        finally:
            _faiss().omp_set_num_threads(before)


def sidecar_path(index_path: Path) -> Path:
    """Where the JSON sidecar of an index file lives."""
    return index_path.with_suffix(".json")


def read_sidecar(index_path: Path, key: HomeKey | None = None) -> dict | None:
    """The sidecar's content (decrypted with ``key`` in an encrypted home), or None when it is missing or
    unreadable."""
    try:
        return json.loads(crypto.read_file(sidecar_path(index_path), key, "index-meta"))
    except (OSError, ValueError, DecryptError):
        return None


def describe(config: IndexConfig) -> dict:
    """The config as a plain dict (for manifests and --json output)."""
    return asdict(config)
