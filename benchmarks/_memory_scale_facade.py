"""memory_scale.py's Memory facade section: one home grown through the sizes with remember(), measured at each
checkpoint (remember and search latency, recall, RSS, disk, reopen).
"""

from __future__ import annotations

import gc
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from _common import loadavg
from _memory_scale_data import (
    MB,
    MODEL_ID,
    Dataset,
    K,
    exact_topk,
    pct,
    perf,
    recall_at_k,
    rss_bytes,
    search_stats,
    search_stats_omp1,
    time_searches,
    tree_bytes,
)

from covip.sdk import IndexConfig, Memory, MemoryConfig


# --------------------------------------------------------------------------------------------- memory facade
def tiny_png(i: int) -> bytes:
    from PIL import Image

    px = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    px.reshape(-1)[:8] = np.frombuffer(int(i).to_bytes(8, "little"), dtype=np.uint8)  # unique per photo
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


def run_memory(checkpoints: list[int], args, deadline: float, results: dict, save) -> None:
    """Grow one Memory home through ``checkpoints`` via remember(); measure at each one."""
    top = max(checkpoints)
    ds = Dataset(top, args.queries, args.seed, cluster_size=args.cluster_size)
    facade = results["memory_facade"]
    facade["dataset"] = ds.stats()
    facade["note"] = ("one home grown through the checkpoints with prefixes of one clustered dataset of "
                      f"{top} vectors ({ds.n_clusters} concepts); each remember() writes a PNG file (fsync), "
                      "a SQLite transaction (photo, embedding, concept link, episode, audit rows) and one index "
                      "add; index files are flushed every max(flush_every, n/10) adds")
    home = Path(tempfile.mkdtemp(prefix="covip-bench-home-", dir=args.workdir))
    facade["home"] = str(home)
    cfg = IndexConfig(hnsw_threshold=args.hnsw_threshold)
    r0 = rss_bytes()
    mem = Memory.open(home, config=MemoryConfig(index=cfg))
    mem.add_user("bench")
    times = np.zeros(top)
    pid_to_row: dict[int, int] = {}
    count = 0
    t_start = perf()
    try:
        for n in checkpoints:
            if count:
                rate = times[:count].mean()
                est = rate * (n - count) * 1.3 + (60.0 if count < args.hnsw_threshold <= n else 0.0)
                left = deadline - perf()
                if est > left or est > args.max_minutes * 60:
                    facade["skipped"][str(n)] = (f"skipped: estimated {est / 60:.1f} min to grow the home to {n} "
                                                 f"(remember ~{rate * 1e3:.2f} ms each) exceeds the budget left "
                                                 f"({left / 60:.1f} min) or --max-minutes")
                    print(f"[memory] {facade['skipped'][str(n)]}", flush=True)
                    break
            print(f"[memory] growing home to {n} photos via remember()...", flush=True)
            seg_start = count
            stop = min(deadline, perf() + args.max_minutes * 60)
            for i in range(count, n):
                if i % 1000 == 0 and perf() > stop:
                    break
                c = int(ds.assign[i])
                png = tiny_png(i)
                t = perf()
                r = mem.remember("bench", png, f"User: photo {i} of concept{c}.", [f"concept{c}"],
                                 embedding=ds.X[i], model_id=MODEL_ID)
                times[i] = perf() - t
                pid_to_row[r.photo.id] = i
                count = i + 1
            if count < n:
                facade["skipped"][str(n)] = (f"skipped: ran out of time growing the home to {n}: reached {count} "
                                             f"photos (remember ~{times[:count].mean() * 1e3:.2f} ms each)")
                print(f"[memory] {facade['skipped'][str(n)]}", flush=True)
                break
            n_single = min(args.single_adds, max(1, n // 5))
            last = times[n - n_single:n]
            seg = times[seg_start:n]
            big = np.flatnonzero(times[:n] > 0.05)
            t = perf()
            mem.flush()
            flush_s = perf() - t

            gt = exact_topk(ds.Q[:args.latency_queries], ds.X[:n])

            def search(q, mem=mem):
                hits = mem.search("bench", embedding=q, model_id=MODEL_ID, k=K)
                return np.array([pid_to_row[h.photo.id] for h in hits])

            stimes, ids = time_searches(search, ds.Q, args.latency_queries, args.search_budget_s)
            omp1 = search_stats_omp1(search, ds.Q, args)
            groups_ms = lookup_ms = None
            try:  # attribution: the per-search GROUP BY over all embeddings, vs an indexed point lookup
                gts, lts = [], []
                for _ in range(5):
                    t = perf()
                    mem.store.embedding_groups()
                    gts.append(perf() - t)
                    t = perf()
                    mem.store.db.execute("SELECT dim FROM embeddings WHERE user_id = ? AND model_id = ? LIMIT 1",
                                         [1, MODEL_ID]).fetchall()
                    lts.append(perf() - t)
                groups_ms = float(np.median(gts)) * 1e3
                lookup_ms = float(np.median(lts)) * 1e3
            except Exception as exc:  # noqa: BLE001 - internal API, may change
                groups_ms = f"n/a ({exc.__class__.__name__})"
            kind = None
            try:
                kind = next(iter(mem.indexes.entries.values())).index.kind
            except Exception:  # noqa: BLE001
                pass
            apparent, allocated, nfiles = tree_bytes(home)
            index_bytes = sum(p.stat().st_size for p in (home / "index").glob("*"))
            db_bytes = sum(p.stat().st_size for p in home.glob("memory.db*"))
            rss_mb = (rss_bytes() - r0) / MB
            # cold reopen: open + first search (loads the index file)
            mem.close()
            t = perf()
            mem = Memory.open(home, config=MemoryConfig(index=cfg))
            open_s = perf() - t
            t = perf()
            mem.search("bench", embedding=ds.Q[0], model_id=MODEL_ID, k=K)
            first_search_s = perf() - t
            entry = {
                "kind": kind,
                "add_p50_us": pct(last, 50) * 1e6, "add_p95_us": pct(last, 95) * 1e6, "add_n": n_single,
                "add_max_us": float(times[:n].max()) * 1e6,
                "add_max_at_n": int(np.argmax(times[:n])) + 1,
                "add_amortized_us": times[:n].mean() * 1e6,
                "add_segment_amortized_us": seg.mean() * 1e6,
                "add_p99_us_whole_fill": pct(times[:n], 99) * 1e6,
                "adds_over_50ms": [[int(i) + 1, round(float(times[i]) * 1e3, 1)] for i in big[:40]],
                **search_stats(stimes), **omp1,
                "recall_at_10": recall_at_k(np.array([np.pad(x, (0, K - len(x)), constant_values=-1)
                                                      for x in ids]), gt[:len(ids)]),
                "recall_n": len(ids),
                "embedding_groups_query_ms": groups_ms, "dim_point_lookup_ms": lookup_ms,
                "rss_mb": rss_mb, "disk_bytes": apparent, "disk_allocated_bytes": allocated,
                "disk_files": nfiles, "index_file_bytes": index_bytes, "db_bytes": db_bytes,
                "flush_s": flush_s, "reopen_s": open_s, "first_search_after_reopen_s": first_search_s,
                "elapsed_s": perf() - t_start, "loadavg": loadavg(),
            }
            results["sizes"].setdefault(str(n), {"n": n}).setdefault("methods", {})["covip_memory"] = entry
            facade["checkpoints"][str(n)] = entry
            print(f"[memory] n={n}: remember p50 {entry['add_p50_us'] / 1e3:.2f} ms, amortized "
                  f"{entry['add_amortized_us'] / 1e3:.2f} ms, search p50 {entry['search_p50_ms']:.2f} ms "
                  f"(GROUP BY {groups_ms} ms), recall {entry['recall_at_10']:.3f}", flush=True)
            save()
    finally:
        mem.close()
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
        del ds
        gc.collect()
