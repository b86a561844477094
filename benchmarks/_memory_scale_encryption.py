"""memory_scale.py's encryption section: remember() and search() in a plain and an encrypted home, interleaved on
the same data, with open times (raw key, passphrase); its table lines and its two panels of the figure.
"""

from __future__ import annotations

import gc
import io
import secrets
import shutil
from pathlib import Path

import numpy as np
from _common import loadavg
from _memory_scale_data import MB, MODEL_ID, Dataset, K, pct, perf, tree_bytes

from covip.sdk import IndexConfig, Memory, MemoryConfig

# ----------------------------------------------------------------------------------------------- encryption
TARGET_ENCRYPTION_RATIO = 1.3


def noise_png(i: int, side: int) -> bytes:
    """A unique random RGB PNG (incompressible: ~3 bytes per pixel), as a real photo is for file sealing."""
    from PIL import Image

    px = np.random.default_rng(10_000_000 + i).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def run_encryption(n: int, args, tmp: Path) -> dict:
    """remember() and search() in a plain and an encrypted home, interleaved on the same data (see the doc)."""
    ds = Dataset(n, args.latency_queries, args.seed + 7, cluster_size=args.cluster_size)
    cfg = MemoryConfig(index=IndexConfig(hnsw_threshold=args.hnsw_threshold))
    key = secrets.token_bytes(32)
    homes = {"plain": tmp / "enc-plain", "encrypted": tmp / "enc-encrypted"}
    mems = {"plain": Memory.open(homes["plain"], config=cfg),
            "encrypted": Memory.open(homes["encrypted"], config=cfg, key=key)}
    for mem in mems.values():
        mem.add_user("bench")
    adds = {name: np.zeros(n) for name in mems}
    photo_bytes = 0
    t0 = perf()
    try:
        for chunk, start in enumerate(range(0, n, 50)):
            pngs = [noise_png(i, args.encryption_side) for i in range(start, min(n, start + 50))]
            photo_bytes += sum(len(b) for b in pngs)
            order = ["plain", "encrypted"] if chunk % 2 == 0 else ["encrypted", "plain"]
            for name in order:
                mem = mems[name]
                for j, png in enumerate(pngs):
                    i = start + j
                    c = int(ds.assign[i])
                    t = perf()
                    mem.remember("bench", png, f"User: photo {i} of concept{c} at some place.", [f"concept{c}"],
                                 place=f"place {c}", embedding=ds.X[i], model_id=MODEL_ID)
                    adds[name][i] = perf() - t
        flush = {}
        for name, mem in mems.items():
            t = perf()
            mem.flush()
            flush[name] = perf() - t
        searches = {name: [] for name in mems}
        for qi, q in enumerate(ds.Q[:args.latency_queries]):
            for name in (("plain", "encrypted") if qi % 2 == 0 else ("encrypted", "plain")):
                t = perf()
                mems[name].search("bench", embedding=q, model_id=MODEL_ID, k=K)
                searches[name].append(perf() - t)
        verify = {}
        for name, mem in mems.items():
            t = perf()
            assert mem.verify(deep=True).ok, name
            verify[name] = perf() - t
    finally:
        for mem in mems.values():
            mem.close()
    opens = {}
    for name, kw in (("plain", {}), ("encrypted", {"key": key})):
        ts = []
        for _ in range(3):
            t = perf()
            Memory.open(homes[name], config=cfg, **kw).close()
            ts.append(perf() - t)
        opens[name] = float(np.median(ts))
    pw_home = tmp / "enc-passphrase"
    Memory.open(pw_home, key="benchmark passphrase").close()
    ts = []
    for _ in range(3):
        t = perf()
        Memory.open(pw_home, key="benchmark passphrase").close()
        ts.append(perf() - t)
    opens["encrypted_passphrase"] = float(np.median(ts))
    out = {"n": n, "photo_side": args.encryption_side, "photo_bytes_mean": photo_bytes / n,
           "queries": len(searches["plain"]), "elapsed_s": perf() - t0, "loadavg": loadavg(), "homes": {}}
    for name in mems:
        a, q = adds[name], np.array(searches[name])
        out["homes"][name] = {
            "remember_p50_ms": pct(a, 50) * 1e3, "remember_p95_ms": pct(a, 95) * 1e3,
            "remember_mean_ms": float(a.mean()) * 1e3, "search_p50_ms": pct(q, 50) * 1e3,
            "search_p95_ms": pct(q, 95) * 1e3, "flush_s": flush[name], "verify_deep_s": verify[name],
            "open_s": opens[name], "disk_bytes": tree_bytes(homes[name])[0],
        }
    out["homes"]["encrypted"]["open_passphrase_s"] = opens["encrypted_passphrase"]
    p_, e_ = out["homes"]["plain"], out["homes"]["encrypted"]
    out["ratios"] = {f: e_[f] / p_[f] for f in ("remember_p50_ms", "remember_p95_ms", "remember_mean_ms",
                                                 "search_p50_ms", "search_p95_ms", "verify_deep_s", "disk_bytes")}
    out["target"] = {"max_ratio": TARGET_ENCRYPTION_RATIO,
                     "met": all(out["ratios"][f] <= TARGET_ENCRYPTION_RATIO
                                for f in ("remember_p50_ms", "remember_mean_ms", "search_p50_ms")),
                     "judged_on": ["remember_p50_ms", "remember_mean_ms", "search_p50_ms"]}
    for h in homes.values():
        shutil.rmtree(h, ignore_errors=True)
    shutil.rmtree(pw_home, ignore_errors=True)
    del ds
    gc.collect()
    return out


def print_encryption(enc: dict) -> None:
    if not enc or "homes" not in enc:
        return
    p_, e_, r = enc["homes"]["plain"], enc["homes"]["encrypted"], enc["ratios"]
    print(f"\nEncryption at rest (n={enc['n']}, {enc['photo_side']} px photos of ~{enc['photo_bytes_mean'] / 1024:.0f} "
          f"KB, {enc['queries']} searches; encrypted / plain, target <= {enc['target']['max_ratio']}x: "
          f"{'MET' if enc['target']['met'] else 'NOT MET'}):")
    for f, label in (("remember_p50_ms", "remember p50"), ("remember_p95_ms", "remember p95"),
                     ("remember_mean_ms", "remember mean"), ("search_p50_ms", "search p50"),
                     ("search_p95_ms", "search p95")):
        print(f"  {label:<14} plain {p_[f]:8.3f} ms  encrypted {e_[f]:8.3f} ms  x{r[f]:.2f}")
    print(f"  verify (deep)  plain {p_['verify_deep_s']:8.2f} s   encrypted {e_['verify_deep_s']:8.2f} s   "
          f"x{r['verify_deep_s']:.2f}")
    print(f"  open           plain {p_['open_s'] * 1e3:8.1f} ms  raw key {e_['open_s'] * 1e3:8.1f} ms  passphrase "
          f"(Argon2id) {e_['open_passphrase_s'] * 1e3:.1f} ms")
    print(f"  disk           plain {p_['disk_bytes'] / MB:8.1f} MB  encrypted {e_['disk_bytes'] / MB:8.1f} MB  "
          f"x{r['disk_bytes']:.2f}")


def plot_encryption(enc: dict | None, ax_lat, ax_open) -> None:
    if not enc or "homes" not in enc:
        for a in (ax_lat, ax_open):
            a.text(0.5, 0.5, "encryption comparison not run", ha="center", va="center", transform=a.transAxes)
            a.set_axis_off()
        return
    p_, e_, r = enc["homes"]["plain"], enc["homes"]["encrypted"], enc["ratios"]
    fields = [("remember_p50_ms", "remember\np50"), ("remember_p95_ms", "remember\np95"),
              ("search_p50_ms", "search\np50"), ("search_p95_ms", "search\np95")]
    x = np.arange(len(fields))
    ax_lat.bar(x - 0.2, [p_[f] for f, _ in fields], 0.4, color="tab:green", label="plain home")
    ax_lat.bar(x + 0.2, [e_[f] for f, _ in fields], 0.4, color="tab:brown", label="encrypted home")
    for xi, (f, _) in zip(x, fields):
        ax_lat.text(xi + 0.2, e_[f], f"x{r[f]:.2f}", ha="center", va="bottom", fontsize=8)
    ax_lat.set_xticks(x, [label for _, label in fields])
    ax_lat.set(ylabel="ms", xlabel=f"n={enc['n']} photos of {enc['photo_side']} px in each home",
               title=f"Encryption at rest: x = encrypted / plain (target <= {enc['target']['max_ratio']})")
    ax_lat.legend(fontsize=8)
    labels = ["plain", "encrypted\n(raw key)", "encrypted\n(passphrase)"]
    values = [p_["open_s"] * 1e3, e_["open_s"] * 1e3, e_["open_passphrase_s"] * 1e3]
    ax_open.bar(labels, values, color=["tab:green", "tab:brown", "tab:red"])
    for i, v in enumerate(values):
        ax_open.text(i, v, f"{v:.0f} ms", ha="center", va="bottom", fontsize=8)
    ax_open.set(ylabel="ms", title="Memory.open + close (passphrase: one Argon2id run, 64 MiB)")
