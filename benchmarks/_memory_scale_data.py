"""memory_scale.py's shared ground: the constants, the clustered (or uniform) Dataset with held-out queries, exact
top-k and recall, single-query search timing, the numpy brute-force baseline, and the compared methods' names.

Split out of ``benchmarks/memory_scale.py`` (imported the way the scripts import ``_common``: the scripts' folder
is on ``sys.path``); the other ``_memory_scale_*`` modules build on it.
"""

from __future__ import annotations

import gc
import math
import os
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

D = 512
K = 10
MODEL_ID = "bench/512"
TARGET_SEARCH_MS = 5.0
TARGET_RECALL = 0.95
MB = 1024 * 1024
perf = time.perf_counter


def rss_bytes() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def pct(values, q) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, q)) if len(values) else None


def tree_bytes(root: Path) -> tuple[int, int, int]:
    """(apparent bytes, allocated bytes, file count) of everything under ``root``."""
    apparent = allocated = files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
            files += 1
    return apparent, allocated, files


# ------------------------------------------------------------------------------------------------------ data
class Dataset:
    """Clustered (or uniform) unit vectors plus held-out queries from the same distribution."""

    def __init__(self, n: int, nq: int, seed: int, *, cluster_size: int = 50, uniform: bool = False):
        rng = np.random.default_rng([seed, n, int(uniform)])
        self.n, self.uniform = n, uniform
        inv = np.float32(1.0 / math.sqrt(D))
        if uniform:
            self.X = self._unit(rng.standard_normal((n, D), dtype=np.float32))
            self.Q = self._unit(rng.standard_normal((nq, D), dtype=np.float32))
            self.assign = np.zeros(n, dtype=np.int64)
            self.n_clusters = 0
            return
        nc = max(1, n // cluster_size)
        mean_dir = self._unit(rng.standard_normal((1, D), dtype=np.float32))
        centres = self._unit(rng.standard_normal((nc, D), dtype=np.float32) * inv + np.float32(0.5) * mean_dir)
        sigma = rng.uniform(0.45, 0.85, nc).astype(np.float32)
        self.assign = rng.integers(0, nc, n)
        self.n_clusters = nc
        self.X = np.empty((n, D), dtype=np.float32)
        for s in range(0, n, 50_000):
            a = self.assign[s:s + 50_000]
            noise = rng.standard_normal((len(a), D), dtype=np.float32)
            noise *= (sigma[a] * inv)[:, None]
            noise += centres[a]
            self.X[s:s + len(a)] = self._unit(noise)
        qa = self.assign[rng.integers(0, n, nq)]  # a cluster picked in proportion to its size
        noise = rng.standard_normal((nq, D), dtype=np.float32) * (sigma[qa] * inv)[:, None]
        self.Q = self._unit(centres[qa] + noise)

    @staticmethod
    def _unit(a: np.ndarray) -> np.ndarray:
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        return np.ascontiguousarray(a, dtype=np.float32)

    def stats(self) -> dict:
        """Cosine similarity statistics (query to its nearest neighbour and to random photos)."""
        rng = np.random.default_rng(0)
        q = self.Q[:200]
        rnd = self.X[rng.integers(0, self.n, 200)]
        top1 = faiss.knn(q, self.X, 1, metric=faiss.METRIC_INNER_PRODUCT)[0][:, 0]
        return {"n": self.n, "dim": D, "clusters": self.n_clusters, "uniform": self.uniform,
                "cos_query_to_nn_mean": float(top1.mean()),
                "cos_random_pairs_mean": float((q * rnd).sum(1).mean())}


def exact_topk(Q: np.ndarray, X: np.ndarray, k: int = K) -> np.ndarray:
    return faiss.knn(np.ascontiguousarray(Q), X, k, metric=faiss.METRIC_INNER_PRODUCT)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    hits = [len(np.intersect1d(f[:k][f[:k] >= 0], t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k)


def time_searches(fn, Q: np.ndarray, max_n: int, budget_s: float) -> tuple[np.ndarray, list]:
    """Time single-query calls ``fn(q)`` (returns ids); as many as fit in ``budget_s`` (>= 20, <= max_n)."""
    for q in Q[:3]:
        fn(q)  # warm-up
    times, ids = [], []
    n = max_n
    for i, q in enumerate(Q[:max_n]):
        t = perf()
        ids.append(fn(q))
        times.append(perf() - t)
        if i == 4:
            n = int(min(max_n, max(20, budget_s / max(float(np.median(times)), 1e-6))))
        if i + 1 >= n:
            break
    return np.asarray(times), ids


def search_stats(times: np.ndarray) -> dict:
    return {"search_p50_ms": pct(times, 50) * 1e3, "search_p95_ms": pct(times, 95) * 1e3,
            "search_n": len(times)}


def search_stats_omp1(fn, Q: np.ndarray, args) -> dict:
    """The same single-query timing with faiss limited to one OpenMP thread (the proposed fix)."""
    default = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times, _ = time_searches(fn, Q, args.latency_queries, args.search_budget_s / 2)
    finally:
        faiss.omp_set_num_threads(default)
    return {"search_p50_ms_omp1": pct(times, 50) * 1e3, "search_p95_ms_omp1": pct(times, 95) * 1e3}


# ------------------------------------------------------------------------------------------------ baselines
class NumpyBrute:
    """(a) brute force: rows appended to a preallocated array (capacity doubles), matvec + argpartition."""

    def __init__(self, dim: int, capacity: int = 1024):
        self.a = np.empty((capacity, dim), dtype=np.float32)
        self.n = 0

    def add(self, vec: np.ndarray) -> None:
        if self.n == len(self.a):
            bigger = np.empty((2 * len(self.a), self.a.shape[1]), dtype=np.float32)
            bigger[:self.n] = self.a[:self.n]
            self.a = bigger
        self.a[self.n] = vec
        self.n += 1

    def search(self, q: np.ndarray, k: int = K) -> np.ndarray:
        scores = self.a[:self.n] @ q
        k = min(k, self.n)
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]


# ------------------------------------------------------------------------------------------------- methods
METHODS = ["covip_index_auto", "covip_index_hnsw", "covip_index_flat", "covip_memory", "numpy_bruteforce",
           "rebuild_flat"]
LABELS = {"covip_index_auto": "covip index (auto)", "covip_index_hnsw": "covip index, HNSW forced",
          "covip_index_flat": "covip index, flat forced", "covip_memory": "covip Memory facade",
          "numpy_bruteforce": "(a) numpy brute force", "rebuild_flat": "(b) rebuild flat per add"}
