#!/usr/bin/env python
"""Memory scale benchmark: covip's vector memory vs brute-force numpy vs "rebuild a flat index on every add".

Usage::

    python benchmarks/memory_scale.py [--sizes 1000,10000,100000,1000000] [--out benchmarks/results]

Writes ``<out>/memory_scale.json`` and ``<out>/memory_scale.png`` and prints a table plus side-by-side ratios.

Targets (issue): add O(1) amortized; search p50 <= 5 ms at 100k; recall@10 >= 0.95 (on clustered data).

Design (also recorded in the JSON under "design")
------------------------------------------------
Data
    512-d float32, L2-normalized, fixed seed (``--seed``, one stream per size). Photo embeddings cluster by
    concept, so each size n gets n/50 cluster centres (``--cluster-size``). A centre is a random unit vector
    plus a shared "CLIP-like" mean direction (random centres have cosine ~0.2, as unrelated photos do with
    CLIP); a photo is centre + gaussian noise with a per-cluster sigma in [0.45, 0.85] (same-concept photos
    have cosine ~0.6-0.8), normalized. Cluster membership is uniform, so cluster sizes are ~Poisson(50).
    Queries are held-out points drawn the same way (cluster chosen proportionally to its size); none of them is
    in the database. Uniform random vectors on the sphere (pathological for any ANN) are an extra row only.
Methods (all in the same process and run, one after the other, so they share machine noise)
    covip_index_auto   covip.sdk.memory.index.VectorIndex with IndexConfig(kind="auto"): IndexIDMap2 over
                       IndexFlatIP below ``hnsw_threshold`` vectors, IndexHNSWFlat (M=32, efC=64, efSearch=128)
                       above; ids are int64 row numbers (SQLite row ids in the product). Filled in batches of
                       ``--fill-batch`` (the threshold switch, a full rebuild, happens inside one batch and is
                       reported as threshold_switch_s); the last ``--single-adds`` vectors are added one at a
                       time and timed individually (add p50/p95 = the cost of one remember() at size n).
                       add_amortized_us = whole fill time / n (batched fill + single adds). Search = one
                       query at a time, k=10. save/load = VectorIndex.save / VectorIndex.load; disk = the
                       .faiss file + its JSON sidecar.
    covip_index_hnsw   the same with kind="hnsw" forced (aliased to covip_index_auto where auto is HNSW).
    covip_index_flat   the same with kind="flat" forced (aliased to covip_index_auto where auto is flat).
    covip_memory       the full facade: Memory.open(home) + remember(user, photo, dialogue, [concept],
                       embedding=vec, model_id="bench/512") for every photo (one SQLite transaction, one
                       tiny unique 8x8 PNG written + fsynced under the home, one index add, periodic index
                       flushes), growing one home through the sizes <= ``--memory-max``; search =
                       Memory.search(k=10), which includes the SQLite lookups that hydrate each hit
                       (photo row, concepts, episodes). Disk = the whole home directory.
    numpy_bruteforce   (a) vectors appended one at a time to a preallocated float32 array that doubles its
                       capacity when full; search = matrix-vector product over the filled rows + argpartition.
    rebuild_flat       (b) what a concept database that "rebuilds on change" does: every add builds a new
                       faiss.IndexFlatIP from all vectors. Timed by a handful of single rebuilds at size n
                       (not n rebuilds); amortized add = median rebuild at n/2 (the mean of a cost that is
                       linear in size over a fill 1..n) - an estimate. Search = flat search.
Metrics
    latency percentiles from per-call time.perf_counter; the number of timed searches adapts so that slow
    methods (flat at 1M) stay within a few seconds (count recorded as search_n). recall@10 = mean over
    ``--queries`` held-out queries of |top10 & exact top10| / 10, exact = faiss.knn (brute force) on the same
    vectors (numpy and the memory facade: over the timed queries). rss_mb = growth of this process's resident
    set while the structure is built and held (psutil, after gc; approximate: allocator reuse can hide a
    little); disk_bytes = bytes of the saved files (the facade: apparent size of the whole home; allocated
    blocks are recorded too). Sizes whose estimated time (scaled from the previous size) exceeds
    ``--max-minutes`` or the rest of ``--budget-minutes``, or whose memory would not fit, are skipped with a
    reason. The machine is shared (other jobs may run concurrently): load averages are recorded per stage.
    Everything runs with faiss's default OpenMP thread count, as the SDK ships.
Extra sections
    threshold_sweep    flat vs HNSW (covip VectorIndex, forced kinds) search p50/p95 and HNSW recall@10 on
                       prefixes of one clustered dataset; recommends an hnsw_threshold (rule in the JSON).
    omp_contention     single-query search p50/p95 at one size with faiss's default OpenMP threads vs 1, with
                       and without one busy-loop process (started and stopped by this script) holding a core,
                       as on a phone where other apps run.
    uniform_random     HNSW recall@10 on uniform random unit vectors (pathological for ANN; not the target).
    encryption         remember() and search() in a plain home and an encrypted one (``covip init --encrypt``:
                       SQLCipher database, AES-GCM sealed photos and index files) side by side: the same
                       ``--encryption-n`` photos (random ``--encryption-side`` px PNGs, ~200 KB at 256 px, so
                       file sealing is not flattered by tiny files) and vectors go into both homes in
                       alternating chunks of 50, searches alternate query by query, so both share machine
                       noise. Ratios encrypted / plain; target <= 1.3x. Open times: plain, raw key, and
                       passphrase (one Argon2id run, 64 MiB). ``--encryption-only`` runs just this section
                       and merges it into the existing JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import _common  # benchmarks/_common.py: the helpers every benchmark shares
import faiss
import numpy as np
import psutil
from _common import loadavg, write_json

# The helper modules split out of this script (same folder, imported like _common). Every name that was defined
# here before the split stays importable from here (hence F401: some are only re-exported).
from _memory_scale_data import (  # noqa: F401
    LABELS,
    MB,
    METHODS,
    MODEL_ID,
    TARGET_RECALL,
    TARGET_SEARCH_MS,
    D,
    Dataset,
    K,
    NumpyBrute,
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
from _memory_scale_encryption import (  # noqa: F401
    TARGET_ENCRYPTION_RATIO,
    noise_png,
    plot_encryption,
    print_encryption,
    run_encryption,
)
from _memory_scale_facade import run_memory, tiny_png  # noqa: F401
from _memory_scale_index import (  # noqa: F401
    DEADLINE,
    OutOfTime,
    alias,
    check_deadline,
    measure_numpy,
    measure_rebuild,
    measure_vector_index,
    run_contention,
    run_size,
    run_threshold_sweep,
    run_uniform,
)
from _memory_scale_plot import STYLE, plot  # noqa: F401

from covip.sdk import IndexConfig

# ----------------------------------------------------------------------------------------------------- utils
BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""


def machine_info() -> dict:
    return _common.machine_info(
        ("faiss-cpu", "numpy", "psutil", "matplotlib"), cpu_count_physical=psutil.cpu_count(logical=False),
        ram_available_gb_at_start=round(psutil.virtual_memory().available / 2**30, 1), faiss_version=faiss.__version__,
        faiss_omp_threads=faiss.omp_get_max_threads(), numpy_version=np.__version__,
        sqlite_version=sqlite3.sqlite_version)


# ----------------------------------------------------------------------------------------------- reporting
def fmt(v, spec="{:.3g}") -> str:
    return "-" if v is None or isinstance(v, str) else spec.format(v)


def print_table(results: dict) -> None:
    hdr = (f"{'n':>8} {'method':<27} {'kind':<5} {'add p50':>9} {'add p95':>9} {'amort':>9} "
           f"{'srch p50':>9} {'srch p95':>9} {'p50 1thr':>9} {'p95 1thr':>9} {'recall':>6} {'rss MB':>7} "
           f"{'disk MB':>8}")
    print("\n" + hdr)
    print(f"{'':>8} {'':<27} {'':<5} {'us':>9} {'us':>9} {'us':>9} {'ms':>9} {'ms':>9} {'ms':>9} {'ms':>9}")
    print("-" * len(hdr))
    for key in sorted(results["sizes"], key=int):
        size = results["sizes"][key]
        if "skipped" in size:
            print(f"{int(key):>8} {size['skipped']}")
        for m in METHODS:
            r = size.get("methods", {}).get(m)
            if not r:
                continue
            kind = "=auto" if r.get("same_as") else str(r.get("kind", ""))[:5]
            print(f"{int(key):>8} {LABELS[m]:<27} {kind:<5} {fmt(r.get('add_p50_us')):>9} "
                  f"{fmt(r.get('add_p95_us')):>9} {fmt(r.get('add_amortized_us')):>9} "
                  f"{fmt(r.get('search_p50_ms')):>9} {fmt(r.get('search_p95_ms')):>9} "
                  f"{fmt(r.get('search_p50_ms_omp1')):>9} {fmt(r.get('search_p95_ms_omp1')):>9} "
                  f"{fmt(r.get('recall_at_10'), '{:.3f}'):>6} {fmt(r.get('rss_mb'), '{:.1f}'):>7} "
                  f"{fmt((r.get('disk_bytes') or 0) / MB, '{:.1f}'):>8}")
    print("\nSide by side (baseline / covip; > 1 means covip is faster or smaller):")
    for key in sorted(results["ratios"], key=int):
        for base, r in results["ratios"][key].items():
            print(f"{int(key):>8} covip index (auto) vs {LABELS[base]:<26}: add p50 x{fmt(r['add_p50'])}, "
                  f"amortized add x{fmt(r['add_amortized'])}, search p50 x{fmt(r['search_p50'])}, "
                  f"disk x{fmt(r['disk'])}")


def compute_ratios(results: dict) -> dict:
    out = {}
    for key, size in results["sizes"].items():
        ms = size.get("methods", {})
        c = ms.get("covip_index_auto")
        if not c:
            continue
        out[key] = {}
        for base in ("numpy_bruteforce", "rebuild_flat"):
            b = ms.get(base)
            if not b:
                continue

            def ratio(field, b=b, c=c):
                bv, cv = b.get(field), c.get(field)
                return bv / cv if isinstance(bv, (int, float)) and isinstance(cv, (int, float)) and cv else None

            out[key][base] = {"add_p50": ratio("add_p50_us"), "add_amortized": ratio("add_amortized_us"),
                              "search_p50": ratio("search_p50_ms"), "disk": ratio("disk_bytes")}
    return out


def loglog_slope(ns, ys) -> float | None:
    pts = [(n, y) for n, y in zip(ns, ys) if isinstance(y, (int, float)) and y > 0]
    if len(pts) < 2:
        return None
    x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def evaluate_targets(results: dict) -> dict:
    sizes = {int(k): v for k, v in results["sizes"].items() if "methods" in v}
    ns = sorted(sizes)
    out = {}
    slopes = {}
    for m in METHODS:
        pts = [(n, sizes[n]["methods"].get(m, {})) for n in ns]
        slopes[m] = {
            "add_p50_us": loglog_slope([n for n, _ in pts], [r.get("add_p50_us") for _, r in pts]),
            "add_amortized_us": loglog_slope([n for n, _ in pts], [r.get("add_amortized_us") for _, r in pts]),
        }
    out["add_cost_loglog_slope"] = slopes
    judged = {m: slopes[m]["add_p50_us"] for m in ("covip_index_flat", "covip_index_hnsw", "covip_memory")}
    out["add_O1_amortized"] = {
        "met": (None if judged["covip_index_flat"] is None or judged["covip_index_hnsw"] is None else
                all(v < 0.5 for v in judged.values() if v is not None)),
        "detail": "log-log slope over n of the cost of one add at size n (0 = O(1), 1 = O(n)), per index kind; "
                  "met if < 0.5 for each (clearly sublinear: HNSW inserts grow ~log n, which over 1k..1M is a "
                  "slope of ~0.1-0.3; rebuilding is ~1). covip_index_auto is piecewise (flat adds below "
                  "the threshold, HNSW adds above, plus ONE full rebuild when crossing it: see "
                  "threshold_switch), so its slope across the threshold says nothing about growth with n.",
        "slopes_add_p50": judged,
        "covip_index_auto_slope": slopes["covip_index_auto"]["add_p50_us"],
        "rebuild_flat_slope": slopes["rebuild_flat"]["add_p50_us"],
    }
    at = sizes.get(100_000, {}).get("methods", {})
    p50_auto = at.get("covip_index_auto", {}).get("search_p50_ms")
    p50_mem = at.get("covip_memory", {}).get("search_p50_ms")
    out["search_p50_le_5ms_at_100k"] = {
        "met": p50_auto is not None and p50_auto <= TARGET_SEARCH_MS,
        "covip_index_auto_ms": p50_auto, "covip_memory_ms": p50_mem,
        "covip_memory_met": p50_mem is not None and p50_mem <= TARGET_SEARCH_MS,
        "covip_index_auto_ms_omp1": at.get("covip_index_auto", {}).get("search_p50_ms_omp1"),
        "covip_memory_ms_omp1": at.get("covip_memory", {}).get("search_p50_ms_omp1"),
    }
    recalls = {n: sizes[n]["methods"].get("covip_index_auto", {}).get("recall_at_10") for n in ns}
    out["recall_at_10_ge_0.95"] = {
        "met": all(r is not None and r >= TARGET_RECALL for r in recalls.values()) and bool(recalls),
        "covip_index_auto_by_n": recalls,
        "covip_index_hnsw_by_n": {n: sizes[n]["methods"].get("covip_index_hnsw", {}).get("recall_at_10")
                                  for n in ns},
    }
    return out


def report(results: dict) -> None:
    print_table(results)
    print_encryption(results.get("encryption"))
    t = results["targets"]
    print("\nTargets:")
    a = t["add_O1_amortized"]
    verdict = {True: "MET", False: "NOT MET", None: "n/a"}
    print(f"  add O(1) amortized:        {verdict[a['met']]} (log-log slope of add p50 vs n: "
          + ", ".join(f"{LABELS[k]} {fmt(v)}" for k, v in a["slopes_add_p50"].items())
          + f"; rebuild baseline {fmt(a['rebuild_flat_slope'])})")
    s = t["search_p50_le_5ms_at_100k"]
    print(f"  search p50 <= 5 ms @100k:  {'MET' if s['met'] else 'NOT MET'} (index {fmt(s['covip_index_auto_ms'])} "
          f"ms, {fmt(s['covip_index_auto_ms_omp1'])} ms with 1 OpenMP thread; Memory facade "
          f"{fmt(s['covip_memory_ms'])} ms ({fmt(s['covip_memory_ms_omp1'])} with 1 thread): "
          f"{'met' if s['covip_memory_met'] else 'NOT met'})")
    r = t["recall_at_10_ge_0.95"]
    by_n = ", ".join(f"{n}: {fmt(v, '{:.3f}')}" for n, v in r["covip_index_auto_by_n"].items())
    print(f"  recall@10 >= 0.95:         {'MET' if r['met'] else 'NOT MET'} ({by_n})")
    if results.get("threshold_sweep"):
        rec = results["threshold_sweep"]["recommendation"]
        print(f"  hnsw_threshold: data support {rec['hnsw_threshold']:,} (current default {rec['current_default']:,};"
              f" flat p50 (1 thread) reaches 2.5 ms at ~{fmt(rec['flat_p50_reaches_2_5ms_at_n'], '{:,.0f}')} and "
              f"5 ms at ~{fmt(results['threshold_sweep']['flat_p50_ms_omp1_reaches_5ms_at_n'], '{:,.0f}')} vectors)")
    c = results.get("omp_contention")
    if c and "rows" in c:
        print(f"  OpenMP contention (search at n={c['n']}, one other core busy):")
        for r in c["rows"]:
            print(f"    {r['index']:<22} omp_threads={r['omp_threads']} busy_core={r['busy_core']!s:<5} "
                  f"p50 {r['search_p50_ms']:.3f} ms  p95 {r['search_p95_ms']:.3f} ms  max {r['search_max_ms']:.2f} ms")


# ----------------------------------------------------------------------------------------------------- main
QUICK_DEFAULTS = {"sizes": [1000, 10_000, 100_000], "memory_max": 1000, "uniform_sizes": [5000],
                  "sweep": [1000, 5000, 20_000, 50_000], "queries": 300, "latency_queries": 100,
                  "sweep_queries": 50, "search_budget_s": 2.0, "single_adds": 100, "rebuild_reps": 5,
                  "rebuild_budget_s": 1.5, "contention_n": 5000, "budget_minutes": 5.0, "max_minutes": 3.0,
                  "encryption_n": 500}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x.replace("_", "")) for x in s.split(",") if x.strip()]  # noqa: E731
    p.add_argument("--sizes", type=ints, default=[1000, 10_000, 100_000, 1_000_000])
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--budget-minutes", type=float, default=25.0, help="whole run (default 25)")
    p.add_argument("--max-minutes", type=float, default=15.0, help="per size / per memory checkpoint")
    p.add_argument("--memory-max", type=int, default=100_000,
                   help="largest size measured through the Memory facade (0 = skip the facade)")
    p.add_argument("--uniform-sizes", type=ints, default=[10_000, 100_000],
                   help="sizes for the extra uniform-random HNSW recall row ('' = none)")
    p.add_argument("--sweep", type=ints, default=[1000, 2000, 5000, 10_000, 20_000, 30_000, 50_000, 75_000,
                                                   100_000], help="threshold sweep sizes ('' = none)")
    p.add_argument("--hnsw-threshold", type=int, default=IndexConfig().hnsw_threshold)
    p.add_argument("--queries", type=int, default=1000, help="held-out queries for recall")
    p.add_argument("--latency-queries", type=int, default=200, help="max single queries timed per method")
    p.add_argument("--sweep-queries", type=int, default=100)
    p.add_argument("--search-budget-s", type=float, default=6.0, help="seconds of timed searches per method")
    p.add_argument("--single-adds", type=int, default=200, help="single adds timed at the end of each fill")
    p.add_argument("--fill-batch", type=int, default=1000)
    p.add_argument("--rebuild-reps", type=int, default=15)
    p.add_argument("--rebuild-budget-s", type=float, default=4.0)
    p.add_argument("--cluster-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=20240501)
    p.add_argument("--workdir", type=Path, default=None, help="where temp homes/files go (default: $TMPDIR)")
    p.add_argument("--keep-home", action="store_true")
    p.add_argument("--replot", action="store_true",
                   help="measure nothing: redraw the PNG and reprint the table from <out>/memory_scale.json")
    p.add_argument("--contention-n", type=int, default=10_000,
                   help="size for the OpenMP contention check (0 = skip; briefly runs one busy-loop process)")
    p.add_argument("--encryption-n", type=int, default=3000,
                   help="photos remembered into each of a plain and an encrypted home (0 = skip)")
    p.add_argument("--encryption-side", type=int, default=256, help="side of the random PNG photos (px)")
    p.add_argument("--encryption-only", action="store_true",
                   help="run only the encryption comparison and merge it into the existing <out>/memory_scale.json")
    # --quick (for `covip bench --quick`): smaller sizes and fewer repetitions; explicit options still win
    p.add_argument("--quick", action="store_true", help="a short run (~2 min on 2 cores): " + ", ".join(
        f"--{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in QUICK_DEFAULTS.items()))
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK_DEFAULTS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = perf()
    deadline = start + args.budget_minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "memory_scale.json", args.out / "memory_scale.png"
    if args.replot:
        results = json.loads(json_path.read_text())
        report(results)
        plot(results, png_path)
        print(f"\nredrew {png_path} from {json_path}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="covip-bench-", dir=args.workdir))
    if args.encryption_only:
        results = json.loads(json_path.read_text()) if json_path.exists() else {"sizes": {}, "meta": machine_info()}
        try:
            print(f"encryption comparison at n={args.encryption_n}...", flush=True)
            results["encryption"] = run_encryption(args.encryption_n, args, tmp)
            results["encryption"]["meta"] = machine_info()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_json(json_path, results)
        print_encryption(results["encryption"])
        plot(results, png_path)
        print(f"\nmerged the encryption comparison into {json_path} and redrew {png_path}")
        return 0
    meta = machine_info()
    meta.update({"hnsw_threshold": args.hnsw_threshold, "index_config": vars(IndexConfig()),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
    results = {
        "meta": meta,
        "design": {"doc": __doc__.split("Design (also recorded in the JSON under \"design\")")[1].strip(),
                   "dim": D, "k": K, "targets": {"search_p50_ms_at_100k": TARGET_SEARCH_MS,
                                                 "recall_at_10": TARGET_RECALL, "add": "O(1) amortized"}},
        "sizes": {}, "memory_facade": {"checkpoints": {}, "skipped": {}}, "uniform_random": {},
        "threshold_sweep": None,
    }

    def save():
        results["ratios"] = compute_ratios(results)
        results["targets"] = evaluate_targets(results)
        results["meta"]["elapsed_s"] = perf() - start
        results["meta"]["loadavg_at_end"] = loadavg()
        write_json(json_path, results)

    sizes = sorted(set(args.sizes))
    mem_sizes = [n for n in sizes if n <= args.memory_max] if args.memory_max > 0 else []
    first = [n for n in sizes if n <= max(mem_sizes + [100_000])]
    later = [n for n in sizes if n not in first]
    last_done: tuple[int, float, float] | None = None

    def try_size(n: int) -> None:
        nonlocal last_done
        left = deadline - perf()
        need_gb = n * D * 4 * 5 / 2**30  # dataset + numpy (2x capacity) + one index + transient copies
        avail_gb = psutil.virtual_memory().available / 2**30
        est = None
        if last_done:
            pn, ps, scaled = last_done
            # fills, data and exact search grow with n (HNSW inserts ~log n: 1.3x per decade); the timed
            # searches are budgeted (--search-budget-s) and do not.
            est = scaled * (n / pn) * 1.3 + (ps - scaled) * 1.5
        reason = None
        if need_gb > 0.8 * avail_gb:
            reason = f"skipped: needs ~{need_gb:.1f} GB, {avail_gb:.1f} GB available"
        elif est is not None and est > args.max_minutes * 60:
            reason = f"skipped: estimated {est / 60:.1f} min > --max-minutes {args.max_minutes}"
        elif est is not None and est > left:
            reason = f"skipped: estimated {est / 60:.1f} min > {left / 60:.1f} min left of the budget"
        if reason:
            print(f"[{n:>8}] {reason}", flush=True)
            results["sizes"][str(n)] = {"n": n, "skipped": reason, "estimated_s": est}
            save()
            return
        DEADLINE[0] = min(deadline, perf() + args.max_minutes * 60)
        t_size = perf()
        try:
            res = run_size(n, args, tmp)
        except OutOfTime as exc:
            reason = (f"skipped: ran out of time after {(perf() - t_size) / 60:.1f} min ({exc}); "
                      f"estimate was {fmt(est and est / 60)} min")
            print(f"[{n:>8}] {reason}", flush=True)
            results["sizes"][str(n)] = {"n": n, "skipped": reason, "estimated_s": est}
            save()
            return
        finally:
            DEADLINE[0] = math.inf
            gc.collect()
        res["estimated_s"] = est
        existing = results["sizes"].get(str(n), {}).get("methods", {})
        res["methods"].update({k: v for k, v in existing.items() if k == "covip_memory"})
        results["sizes"][str(n)] = res
        scaled = res["data_s"] + sum(m.get("fill_s", 0) for m in res["methods"].values() if not m.get("same_as"))
        last_done = (n, res["seconds"], min(scaled, res["seconds"]))
        print(f"[{n:>8}] done in {res['seconds']:.0f}s", flush=True)
        save()

    try:
        for n in first:
            try_size(n)
        if args.sweep:
            grid = [m for m in args.sweep if m <= max(first, default=0)] or args.sweep[:1]
            if deadline - perf() > 120:
                print("threshold sweep (flat vs HNSW on prefixes)...", flush=True)
                results["threshold_sweep"] = run_threshold_sweep(grid, args, tmp)
                save()
        if args.contention_n and deadline - perf() > 120:
            print(f"OpenMP contention check at n={args.contention_n}...", flush=True)
            results["omp_contention"] = run_contention(args.contention_n, args)
            save()
        if mem_sizes:
            run_memory(mem_sizes, args, deadline, results, save)
            save()
        if args.encryption_n and deadline - perf() > 120:
            print(f"encryption comparison at n={args.encryption_n}...", flush=True)
            results["encryption"] = run_encryption(args.encryption_n, args, tmp)
            save()
        for n in args.uniform_sizes:
            if deadline - perf() < 90 + n / 5000:
                results["uniform_random"][str(n)] = {"skipped": "skipped: not enough budget left"}
                continue
            print(f"[uniform {n}] HNSW recall on uniform random vectors...", flush=True)
            results["uniform_random"][str(n)] = run_uniform(n, args, tmp)
            save()
        for n in later:
            try_size(n)
    finally:
        save()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)
    plot(results, png_path)
    print(f"\nwrote {json_path} and {png_path} in {(perf() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
