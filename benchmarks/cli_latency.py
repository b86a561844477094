#!/usr/bin/env python
"""How long `covip` commands take from the shell: in-process (every call loads what it needs) against the
same commands while `covip serve` runs for the home (ask and caption hand their work to it).

Usage::

    python benchmarks/cli_latency.py [--quick] [--reps 3] [--out benchmarks/results]

Builds a fresh home with the offline tiny model and embedder (`covip init --embedder tiny --model tiny`), one
user and three remembered demo photos, then times each command as a user runs it: the installed `covip`
console script in a new process, wall clock from start to exit, ``--reps`` times (median and min). The
baseline is the in-process run of each command (``--local`` for ask and caption, which would otherwise use the
server); the comparison is the same command with `covip serve` up for the home. Commands that never need a
model (history, user list, concepts, verify) run in-process either way and show the start-up cost alone.
Writes ``<out>/cli_latency.json`` and ``.png``. The tiny model has random weights; its answers are capped at
32 tokens, so generation is a small part of each ask: what is measured is start-up and loading.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish_run, machine_info  # noqa: E402

BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""

perf = time.perf_counter


def covip_exe() -> list[str]:
    """The installed console script next to this Python (what a user runs), else ``python -m``."""
    exe = Path(sys.executable).with_name("covip")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from covip.sdk.cli import main; main()"]


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> float:
    """Wall seconds of one `covip --home HOME ARGS` process (it must succeed)."""
    t0 = perf()
    proc = subprocess.run([*covip_exe(), "--home", str(home), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    wall = perf() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"covip {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall


def make_home(root: Path) -> tuple[Path, Path]:
    """A home with the tiny model, ana and three remembered demo photos; returns (home, query photo)."""
    from covip.sdk.demo import DEMO_CONCEPTS, draw_concept

    home, photos = root / "home", root / "photos"
    photos.mkdir(parents=True)
    for concept in DEMO_CONCEPTS[:3]:
        buf = io.BytesIO()
        draw_concept(concept, 0, size=128).save(buf, "PNG")
        (photos / f"{concept.name}.png").write_bytes(buf.getvalue())
    query = photos / "new.png"
    draw_concept(DEMO_CONCEPTS[0], 3, size=128).save(query, "PNG")
    run(home, "init", "--embedder", "tiny", "--model", "tiny")
    run(home, "user", "add", "ana")
    for concept in DEMO_CONCEPTS[:3]:
        run(home, "remember", str(photos / f"{concept.name}.png"), "--user", "ana", "-c", concept.name,
            "-d", f"User: This is {concept.name}.")
    run(home, "caption", str(query), "--user", "ana", "--local")  # the caption is cached from here on
    return home, query


def start_server(home: Path) -> subprocess.Popen:
    """`covip serve --port 0` for the home; returns once it announced itself and answers."""
    from covip.sdk.cli.remote import find_server

    proc = subprocess.Popen([*covip_exe(), "--home", str(home), "serve", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while find_server(home) is None:
        if proc.poll() is not None:
            raise RuntimeError(f"covip serve stopped: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("covip serve did not come up within 300 s")
        time.sleep(0.2)
    return proc


def measure(home: Path, commands: dict[str, list[str]], reps: int, env: dict[str, str] | None = None) -> dict:
    out = {}
    for name, args in commands.items():
        runs = [run(home, *args, env=env) for _ in range(reps)]
        out[name] = {"args": args, "runs_s": [round(r, 3) for r in runs], "median_s": round(statistics.median(runs), 3),
                     "min_s": round(min(runs), 3)}
        print(f"  {name:<22} median {out[name]['median_s']:.2f} s  (runs {out[name]['runs_s']})", flush=True)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["in_process"])
    local = [results["in_process"][n]["median_s"] for n in names]
    served = [results["with_serve"].get(n, {}).get("median_s") for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], local, height=0.4, label="in-process (baseline)", color="#b0b0b0")
    ax.barh([i - 0.2 for i in y], [s or 0 for s in served], height=0.4, label="with covip serve up", color="#3070b0")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds per command (median)")
    ax.set_title("covip CLI latency, tiny model, 2 CPU cores")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    print(f"\n{'command':<22} {'in-process s':>12} {'with serve s':>12} {'ratio':>7}")
    for name, row in results["in_process"].items():
        served = results["with_serve"].get(name, {}).get("median_s")
        ratio = results["ratios"].get(name)
        print(f"{name:<22} {row['median_s']:>12.2f} {served if served is not None else float('nan'):>12.2f} "
              f"{ratio if ratio is not None else float('nan'):>7.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="one run of each command (about two minutes)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "cli_latency.json", args.out / "cli_latency.png"
    start = perf()
    meta = machine_info(["covip", "torch", "transformers", "open_clip_torch", "faiss-cpu"], reps=reps,
                        mode="quick" if args.quick else "full")
    root = Path(tempfile.mkdtemp(prefix="covip-cli-latency-"))
    results: dict = {"meta": meta, "in_process": {}, "with_serve": {}, "ratios": {}, "notes": []}
    try:
        home, query = make_home(root)
        fresh = root / "photos" / "Mom.png"
        light = {"--help": ["--help"], "user list": ["user", "list"], "history": ["history", "--user", "ana"],
                 "concepts": ["concepts", "--user", "ana"], "verify": ["verify"]}
        heavy = {"recall": ["recall", str(query), "--user", "ana"],
                 "remember": ["remember", str(fresh), "--user", "ana", "-c", "Mom", "-d", "User: Mom again."],
                 "caption (cached)": ["caption", str(query), "--user", "ana"],
                 "ask": ["ask", str(query), "Who is this?", "--user", "ana", "--no-stream"]}
        print("in-process (baseline):", flush=True)
        results["in_process"] = measure(home, {**light, **heavy}, reps, env={"COVIP_NO_SERVER": "1"})
        print("with covip serve up for the home:", flush=True)
        t0 = perf()
        server = start_server(home)
        results["serve_start_s"] = round(perf() - t0, 2)
        try:
            results["with_serve"] = measure(home, {**light, **heavy}, reps)
        finally:
            server.terminate()
            server.wait(30)
        for name, row in results["in_process"].items():
            served = results["with_serve"].get(name)
            if served:
                results["ratios"][name] = round(row["median_s"] / served["median_s"], 2)
        results["notes"].append(
            "With the server up, ask and caption are answered by it (no model or embedder to load here), remember "
            "and recall get the photo's embedding from it (POST /v1/embed) and write/search the memory here; "
            "history, user list, concepts and verify never load a model and run in-process either way.")
        results["notes"].append(f"`covip serve` itself took {results['serve_start_s']} s to come up (loading once).")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return finish_run(results, meta, start, json_path, png_path, plot=plot, print_table=print_table)


if __name__ == "__main__":
    sys.exit(main())
