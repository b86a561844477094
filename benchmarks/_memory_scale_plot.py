"""memory_scale.py's figure: add and search latency, recall and bytes against n for every method, plus the
encryption panels.
"""

from __future__ import annotations

from pathlib import Path

from _memory_scale_data import LABELS, MB, METHODS, TARGET_RECALL, TARGET_SEARCH_MS
from _memory_scale_encryption import plot_encryption

STYLE = {"covip_index_auto": ("tab:blue", "o", "-"), "covip_index_hnsw": ("tab:cyan", "^", "--"),
         "covip_index_flat": ("tab:purple", "v", "--"), "covip_memory": ("tab:green", "s", "-"),
         "numpy_bruteforce": ("tab:orange", "D", "-"), "rebuild_flat": ("tab:red", "x", "-")}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = {int(k): v["methods"] for k, v in results["sizes"].items() if "methods" in v}
    ns = sorted(sizes)

    def series(m, field, scale=1.0):
        xs, ys = [], []
        for n in ns:
            r = sizes[n].get(m)
            v = r.get(field) if r else None
            if isinstance(v, (int, float)):
                xs.append(n)
                ys.append(v * scale)
        return xs, ys

    fig, axes = plt.subplots(2, 3, figsize=(21, 10))
    plot_encryption(results.get("encryption"), axes[0, 2], axes[1, 2])
    ax = axes[0, 0]
    for m in ("covip_index_auto", "covip_memory", "numpy_bruteforce", "rebuild_flat"):
        c, mk, _ = STYLE[m]
        xs, ys = series(m, "add_p50_us")
        ax.plot(xs, ys, color=c, marker=mk, ls="-", label=f"{LABELS[m]} p50")
        xs, ys = series(m, "add_amortized_us")
        ax.plot(xs, ys, color=c, marker=mk, ls=":", mfc="none", label=f"{LABELS[m]} amortized")
    ax.set(xscale="log", yscale="log", xlabel="photos in memory (n)", ylabel="add latency (us)",
           title="Add one photo: latency at size n (solid) and amortized over the fill (dotted)")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[0, 1]
    for m in METHODS:
        c, mk, ls = STYLE[m]
        xs, ys = series(m, "search_p50_ms")
        ax.plot(xs, ys, color=c, marker=mk, ls=ls, alpha=0.7 if ls == "--" else 1.0, label=LABELS[m])
    for m in ("covip_index_auto", "covip_memory"):
        c, mk, _ = STYLE[m]
        xs, ys = series(m, "search_p50_ms_omp1")
        ax.plot(xs, ys, color=c, marker=mk, ls=":", mfc="none", label=f"{LABELS[m]}, 1 OpenMP thread")
    sweep = results.get("threshold_sweep")
    if sweep:
        rows = sweep["rows"]
        ax.plot([r["n"] for r in rows], [r["flat_search_p50_ms_omp1"] for r in rows], color="tab:purple",
                lw=0.8, alpha=0.6, label="flat, threshold sweep (1 thread)")
        ax.plot([r["n"] for r in rows], [r["hnsw_search_p50_ms_omp1"] for r in rows], color="tab:cyan",
                lw=0.8, alpha=0.6, label="HNSW, threshold sweep (1 thread)")
    ax.axhline(TARGET_SEARCH_MS, color="k", ls="--", lw=1, label="target 5 ms")
    if ns and ns[0] <= results["meta"]["hnsw_threshold"] <= ns[-1]:
        ax.axvline(results["meta"]["hnsw_threshold"], color="gray", ls=":", lw=1,
                   label=f"hnsw_threshold={results['meta']['hnsw_threshold']:,}")
    ax.set(xscale="log", yscale="log", xlabel="photos in memory (n)", ylabel="search p50 (ms), k=10",
           title="Search latency p50, one query at a time (dotted: faiss on 1 OpenMP thread)")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 0]
    for m in ("covip_index_auto", "covip_index_hnsw", "covip_memory", "numpy_bruteforce"):
        c, mk, ls = STYLE[m]
        xs, ys = series(m, "recall_at_10")
        ax.plot(xs, ys, color=c, marker=mk, ls=ls, label=LABELS[m])
    if sweep:
        rows = sweep["rows"]
        ax.plot([r["n"] for r in rows], [r["hnsw_recall_at_10"] for r in rows], color="tab:cyan", lw=0.8,
                alpha=0.5, label=f"HNSW, threshold sweep (prefixes of one {sweep['dataset_n']:,} set)")
    ax.axhline(TARGET_RECALL, color="k", ls="--", lw=1, label="target 0.95")
    ax.set(xscale="log", xlabel="photos in memory (n)", ylabel="recall@10 vs exact",
           title="Recall@10 against exact search (clustered data)")
    lo = min([0.93] + [min(series(m, "recall_at_10")[1] or [1]) for m in METHODS])
    ax.set_ylim(max(0.0, lo - 0.01), 1.003)
    uni = results.get("uniform_random", {})
    ux = sorted(int(k) for k, v in uni.items() if "covip_index_hnsw" in v)
    if ux:  # off the scale: written out instead of plotted
        text = ", ".join(f"{uni[str(x)]['covip_index_hnsw']['recall_at_10']:.2f} at {x:,}" for x in ux)
        ax.text(0.02, 0.04, f"HNSW on uniform random vectors\n(pathological, not plotted): recall@10\n{text}",
                transform=ax.transAxes, fontsize=8, color="dimgray")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1, 1]
    for m in ("covip_index_auto", "covip_memory", "numpy_bruteforce", "rebuild_flat"):
        c, mk, _ = STYLE[m]
        xs, ys = series(m, "disk_bytes", 1 / MB)
        ax.plot(xs, ys, color=c, marker=mk, ls="-", label=f"{LABELS[m]} disk")
        xs, ys = series(m, "rss_mb")
        pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
        ax.plot([p[0] for p in pairs], [p[1] for p in pairs], color=c, marker=mk, ls=":", mfc="none",
                label=f"{LABELS[m]} RSS")
    ax.set(xscale="log", yscale="log", xlabel="photos in memory (n)", ylabel="MB",
           title="On-disk bytes (solid) and RSS growth (dotted)")
    ax.legend(fontsize=7, ncol=2)
    for a in axes[:, :2].flat:
        a.grid(True, which="both", alpha=0.3)
    meta = results["meta"]
    fig.suptitle(f"covip memory at scale: 512-d clustered vectors, {meta.get('cpu_count_logical')} CPUs, "
                 f"faiss {meta.get('faiss_version')}, {meta.get('date_utc')} (shared machine: expect noise)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
