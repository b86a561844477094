#!/usr/bin/env python
"""Peak memory of `covip serve` for N concurrent chat requests carrying one very large photo each.

Usage::

    python benchmarks/serve_memory.py [--quick] [--concurrency 1,2,4,8] [--fresh] [--side 8000] [--format PNG]

Starts a real ``covip serve`` process on a fresh home with the offline tiny model and embedder, sends one
small warm-up request, then for each N sends N chat requests at once, each with a side x (side-1) photo as a
data URL (the issue's case: 8000x7999). Peak resident memory of the server process is its kernel high-water
mark (VmHWM, reset through /proc/PID/clear_refs before each round) and, as a cross-check, psutil's RSS
sampled every 10 ms. Each level runs twice, side by side: against a baseline server that decodes every photo at
once (``--max-decodes 64``, the old behaviour) and against covip's bounded default. Writes
``<out>/serve_memory.json`` and ``.png`` (growth per level, both settings, and their ratio). The model's own work is tiny here (random-weight tiny VLM): what is measured is what a
request costs the server around the model (body, JSON, base64, decoding, the model's image processor).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""


def big_photo(side: int, fmt: str) -> bytes:
    """A side x (side-1) photo: smooth colour ramps plus mild noise (compresses to a few MB, decodes huge)."""
    h, w = side - 1, side
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 2, (h, w), dtype=np.uint8)
    rgb = np.empty((h, w, 3), dtype=np.uint8)
    rgb[..., 0] = (x + noise).astype(np.uint8)
    rgb[..., 1] = (y + noise).astype(np.uint8)
    rgb[..., 2] = (255 - x + noise).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 6}))
    return buf.getvalue()


def peak_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_round(base: str, payload: bytes, proc: psutil.Process, n: int) -> dict:
    """Send ``n`` chat requests at once; the server's peak RSS (VmHWM, and psutil samples) over the round."""
    baseline = proc.memory_info().rss
    hwm_ok = reset_hwm(proc.pid)
    sampled = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                sampled.append(proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.01)

    statuses: list[int] = []

    def send() -> None:
        r = httpx.post(base + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"},
                       timeout=900)
        statuses.append(r.status_code)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    senders = [threading.Thread(target=send) for _ in range(n)]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    peak = max(max(sampled), peak_hwm_kb(proc.pid) * 1024 if hwm_ok else 0)
    return {"concurrency": n, "statuses": sorted(statuses), "baseline_mb": round(baseline / 2**20),
            "peak_mb": round(peak / 2**20), "growth_mb": round((peak - baseline) / 2**20),
            "per_request_mb": round((peak - baseline) / 2**20 / n), "seconds": round(seconds, 1), "hwm": hwm_ok}


@contextlib.contextmanager
def running_server(cmd: list[str], env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    """A `covip serve` process, warmed up with one small chat request: (base URL, its psutil.Process)."""
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(s) for s in server.stderr], daemon=True).start()
    try:
        base = None
        while base is None:
            line = lines.get(timeout=300)
            if "web page " in line:
                base = line.split("web page ", 1)[1].split()[0].rstrip("/")
        small = io.BytesIO()
        Image.new("RGB", (64, 64), (10, 200, 10)).save(small, "PNG")
        warm = {"user": "ana", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Who is this?"}, {"type": "image_url", "image_url": {
                "url": "data:image/png;base64," + base64.b64encode(small.getvalue()).decode()}}]}]}
        httpx.post(base + "/v1/chat/completions", json=warm, timeout=600).raise_for_status()
        yield base, psutil.Process(server.pid)
    finally:
        server.terminate()
        server.wait(30)


def run_setting(exe: str, payload: bytes, body_mb: float, levels: list[int], max_decodes: int,
                fresh: bool) -> list[dict]:
    """Every concurrency level against servers started with ``--max-decodes max_decodes``."""
    serve = ["serve", "--port", "0", "--max-body-mb", str(int(body_mb * 1.5) + 8), "--max-decodes", str(max_decodes)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="covip-serve-mem-") as tmp:
        env = {**os.environ, "COVIP_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        for cmd in (["init", "--embedder", "tiny", "--model", "tiny"], ["user", "add", "ana"]):
            subprocess.run([exe, *cmd], env=env, check=True, capture_output=True)
        rounds = [[n] for n in levels] if fresh else [levels]
        for group in rounds:  # --fresh: a new server per concurrency level (no memory left from earlier rounds)
            with running_server([exe, *serve], env) as (base, proc):
                for n in group:
                    time.sleep(1.0)
                    row = measure_round(base, payload, proc, n)
                    rows.append(row)
                    print(json.dumps({"max_decodes": max_decodes, **row}))
    return rows


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in doc["settings"].items():
        ax.plot([r["concurrency"] for r in rows], [r["growth_mb"] / 1024 for r in rows], marker="o", label=label)
    ax.set_xlabel("concurrent chat requests (one large photo each)")
    ax.set_ylabel("peak server memory growth (GB)")
    ph = doc["photo"]
    ax.set_title(f"covip serve: {ph['width']}x{ph['height']} {ph['format']} as a data URL")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,2,4,8")
    parser.add_argument("--side", type=int, default=8000)
    parser.add_argument("--format", default="PNG", choices=["PNG", "JPEG"])
    parser.add_argument("--max-decodes", type=int, default=2, help="the bounded setting (covip serve's default)")
    parser.add_argument("--baseline-decodes", type=int, default=64,
                        help="the baseline: so many decodes at once that nothing waits (the old behaviour)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--fresh", action="store_true", help="start a new server for every concurrency level")
    parser.add_argument("--quick", action="store_true", help="a 2000 px photo at 1 and 4 requests (a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.side, args.concurrency = 2000, "1,4"
    exe = str(Path(sys.executable).parent / "covip")
    levels = [int(n) for n in args.concurrency.split(",")]

    photo = big_photo(args.side, args.format)
    url = f"data:image/{args.format.lower()};base64,{base64.b64encode(photo).decode()}"
    body_mb = len(url) / 2**20
    print(f"photo {args.side}x{args.side - 1} {args.format}: {len(photo) / 2**20:.1f} MiB, data URL {body_mb:.1f} MiB")
    request = {"user": "ana", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "Who is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}
    payload = json.dumps(request).encode()
    settings = {f"baseline: --max-decodes {args.baseline_decodes}": args.baseline_decodes,
                f"covip: --max-decodes {args.max_decodes}": args.max_decodes}
    started = time.perf_counter()
    meta = {"date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "platform": platform.platform(),
            "cpu_count_logical": os.cpu_count(), "ram_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "args": vars(args) | {"out": str(args.out)}}
    doc: dict = {"meta": meta, "photo": {"width": args.side, "height": args.side - 1, "format": args.format,
                           "bytes": len(photo), "data_url_bytes": len(url)},
                 "fresh_server_per_level": args.fresh, "mode": "quick" if args.quick else "full",
                 "settings": {label: run_setting(exe, payload, body_mb, levels, n, args.fresh)
                              for label, n in settings.items()}}
    base_rows, ours = doc["settings"].values()
    doc["growth_ratio_bounded_over_baseline"] = {
        str(b["concurrency"]): round(o["growth_mb"] / max(b["growth_mb"], 1), 3) for b, o in zip(base_rows, ours)}
    meta["elapsed_s"] = round(time.perf_counter() - started, 1)
    doc["headline"] = [{"figure": f"peak memory growth, {o['concurrency']} concurrent requests (MB)",
                        "value": o["growth_mb"], "baseline": f"--max-decodes {args.baseline_decodes}",
                        "baseline_value": b["growth_mb"], "ratio": round(o["growth_mb"] / max(b["growth_mb"], 1), 3),
                        "note": f"--max-decodes {args.max_decodes}"} for b, o in zip(base_rows, ours)]
    print("peak growth, bounded / baseline:", doc["growth_ratio_bounded_over_baseline"])
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "serve_memory_quick" if args.quick else "serve_memory"
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(doc, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.json and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
