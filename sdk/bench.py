"""``covip bench``: run the scripts in ``benchmarks/`` and regenerate ``benchmarks/RESULTS.md`` from their JSON.

Running (:func:`run_benchmarks`). Every ``benchmarks/*.py`` whose name does not start with ``_`` is a
benchmark; it is run as ``python <script> [--quick] [--out <results>]`` in its own process (``--out`` is
passed only when the script declares it, ``--quick`` only when asked; a script without a ``--quick`` option
is skipped in a quick run rather than run in full). Output lines are shown as they come, prefixed by the
script name, and saved to ``<results>/logs/<name>.log``. A summary of the run (exit codes, seconds) goes
to ``<results>/_bench_runs.json``.

Contract for a benchmark script: it writes ``<out>/<name>.json`` (and PNG plots next to it) with a
``meta`` object holding at least ``date_utc``, the machine (``platform``, ``cpu_model``,
``cpu_count_logical``) and versions (a ``versions`` object and/or ``*_version`` keys), and ``meta.args``
(with ``quick`` when it has that mode). The report shows its key figures as ratios against the baselines
the script measured side by side: scripts known here (``memory_scale``, ``cag_latency``) get a dedicated
table; any other script can add a top-level ``"headline"`` list of rows
``{"figure", "value", "baseline", "baseline_value", "ratio", "note"}`` (all optional but ``figure``);
without one, its ``"ratios"`` object is flattened into rows.

Reporting (:func:`render_results_md`): ``RESULTS.md`` is regenerated from the JSON files only (files whose
name starts with ``_`` are skipped), never edited by hand.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError
from covip.sdk.files import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["find_bench_dir", "discover", "script_options", "run_benchmarks", "BenchRun", "load_results",
           "render_results_md", "write_results_md", "GPU_COMMANDS"]

RUNS_FILE = "_bench_runs.json"
RESULTS_MD = "RESULTS.md"
OPTIONS_NAME = "BENCH_OPTIONS"
"""The module-level tuple a benchmark script declares the runner's options in, e.g. ("--quick", "--out")."""


def find_bench_dir(explicit: str | Path | None = None) -> Path:
    """The ``benchmarks`` folder: ``explicit``, else ``./benchmarks`` or one in a parent folder, else the
    repository this package was installed from (editable installs)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise InputError(f"benchmark folder {path} does not exist")
        return path.resolve()
    here = Path.cwd().resolve()
    for base in (here, *here.parents):
        cand = base / "benchmarks"
        if cand.is_dir() and any(cand.glob("*.py")):
            return cand
    repo = Path(__file__).resolve().parents[2] / "benchmarks"
    if repo.is_dir():
        return repo
    raise InputError("no benchmarks/ folder here or above; run from a covip checkout or pass --dir")


def discover(bench_dir: Path) -> dict[str, Path]:
    """Benchmark scripts by name (``benchmarks/<name>.py``, names starting with ``_`` excluded)."""
    return {p.stem: p for p in sorted(bench_dir.glob("*.py")) if not p.name.startswith("_")}


def script_options(path: Path) -> set[str]:
    """The options a script declares for the runner: its module-level ``BENCH_OPTIONS`` tuple, read from the
    source without running it (an empty set when it declares none)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == OPTIONS_NAME for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                raise InputError(f"{path.name}: {OPTIONS_NAME} must be a literal tuple of option names") from None
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise InputError(f"{path.name}: {OPTIONS_NAME} must be a tuple of option names like '--quick'")
            return set(value)
    return set()


@dataclass
class BenchRun:
    """One script run (or skip)."""

    name: str
    command: list[str]
    returncode: int | None
    seconds: float
    skipped: str | None = None
    log: str | None = None


def _run_one(name: str, cmd: list[str], cwd: Path, log_path: Path, timeout_s: float,
             echo: Callable[[str], None]) -> tuple[int, float]:
    t0 = time.perf_counter()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w", encoding="utf-8") as logf:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, bufsize=1)
        assert proc.stdout is not None
        deadline = t0 + timeout_s
        try:
            for line in proc.stdout:
                logf.write(line)
                echo(f"[{name}] {line.rstrip()}")
                if time.perf_counter() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout_s)
            rc = proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            echo(f"[{name}] killed after {timeout_s:.0f} s (--timeout)")
            logf.write(f"\n[covip bench] killed after {timeout_s:.0f} s\n")
            rc = -9
    return rc, time.perf_counter() - t0


def run_benchmarks(bench_dir: Path, *, out: Path, quick: bool = False, only: Sequence[str] = (),
                   timeout_s: float = 3600.0, echo: Callable[[str], None] = print,
                   python: str = sys.executable) -> list[BenchRun]:
    """Run the benchmark scripts (see the module doc); returns one :class:`BenchRun` per script."""
    scripts = discover(bench_dir)
    unknown = sorted(set(only) - set(scripts))
    if unknown:
        raise InputError(f"unknown benchmark(s) {unknown}; found {sorted(scripts)} in {bench_dir}")
    chosen = [n for n in scripts if not only or n in only]
    out.mkdir(parents=True, exist_ok=True)
    runs: list[BenchRun] = []
    for name in chosen:
        path = scripts[name]
        opts = script_options(path)
        cmd = [python, str(path)]
        if quick:
            if "--quick" not in opts:
                reason = f"{path.name} has no --quick option (a quick run never runs a script in full)"
                echo(f"[{name}] skipped: {reason}")
                runs.append(BenchRun(name, cmd, None, 0.0, skipped=reason))
                continue
            cmd.append("--quick")
        if "--out" in opts:
            cmd += ["--out", str(out)]
        echo(f"[{name}] $ {' '.join(cmd)}")
        log_path = out / "logs" / f"{name}.log"
        rc, seconds = _run_one(name, cmd, bench_dir.parent, log_path, timeout_s, echo)
        runs.append(BenchRun(name, cmd, rc, round(seconds, 2), log=str(log_path)))
        echo(f"[{name}] exit {rc} after {seconds:.0f} s")
    summary = {"quick": quick, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "runs": [asdict(r) for r in runs]}
    atomic_write_text(out / RUNS_FILE, json.dumps(summary, indent=1) + "\n", private=False)
    return runs


# ----------------------------------------------------------------------------------------------- report
GPU_COMMANDS = """\
# 1. the judge: Qwen3-30B-A3B-Instruct (FP8) behind vLLM's OpenAI-compatible server (as the paper)
CUDA_VISIBLE_DEVICES=1 vllm serve Qwen/Qwen3-30B-A3B-Instruct-2507-FP8 --port 8000 --max-model-len 8192 &
export CUDA_VISIBLE_DEVICES=0
JUDGE='http://127.0.0.1:8000/v1#Qwen/Qwen3-30B-A3B-Instruct-2507-FP8'
# the tuned model: the released CoViP-Qwen3-VL-8B-GSPO checkpoint (its hub id or a local copy), or the
# merged/ folder of your own `covip train gspo` run
COVIP_MODEL=/models/CoViP-Qwen3-VL-8B-GSPO

# 2. CapEval-QAs on the authors' public test set (test-set JSONL + QA file; images under --image-root):
#    the base model (with the no-vision shortcut check), then the tuned one
covip eval capeval --test meta_CoViP_testset_cleaned.jsonl --capeval QAS_GT_test.json \\
    --image-root /data/covip --model Qwen/Qwen3-VL-8B-Instruct --judge "$JUDGE" \\
    --judge-opt concurrency=32 --out runs/eval/qwen3-vl-8b --no-vision
covip eval capeval --test meta_CoViP_testset_cleaned.jsonl --capeval QAS_GT_test.json \\
    --image-root /data/covip --model "$COVIP_MODEL" --judge "$JUDGE" \\
    --judge-opt concurrency=32 --out runs/eval/covip-8b

# 3. downstream tasks on the authors' sets (hub ids; offline: a downloaded folder), with and without CAG
for task in lsd lar itr; do
  covip eval downstream --task $task --data hf:Yeongtak/$task --model "$COVIP_MODEL" \\
      --judge "$JUDGE" --both --out runs/eval/covip-8b-downstream
done
# every command above runs the paper's protocol (--protocol paper, the default); add
#   --prompt-pack authors.toml   to prompt with the wording the released checkpoint was trained on
#   --protocol strict            for covip's stricter parsers (not comparable with the paper's tables)"""


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """``{name: parsed JSON}`` of ``<results_dir>/*.json`` (names starting with ``_`` skipped)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        if path.name.startswith("_"):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def _num(x: Any, fmt: str = "{:.3g}") -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, (int, float)):
        return fmt.format(x)
    return str(x)


def _ratio(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{x:.2f}x"


def _met(flag: Any) -> str:
    return {True: "met", False: "**not met**"}.get(flag, "n/a")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def provenance(data: Mapping[str, Any]) -> str:
    """One line: date, mode, machine and versions from a result's ``meta``."""
    meta = data.get("meta") or {}
    args = meta.get("args") or {}
    versions = dict(meta.get("versions") or {})
    versions.update({k[: -len("_version")]: v for k, v in meta.items() if k.endswith("_version")})
    vtext = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v)
    machine = ", ".join(str(x) for x in (meta.get("cpu_model"), meta.get("cpu_count_logical") and
                                         f"{meta['cpu_count_logical']} logical CPUs",
                                         meta.get("ram_total_gb") and f"{meta['ram_total_gb']} GB RAM",
                                         meta.get("platform")) if x)
    parts = [f"run {meta.get('date_utc') or meta.get('date') or 'date unknown'}",
             "**quick mode**" if args.get("quick") else "full mode",
             f"{meta['elapsed_s']:.0f} s" if isinstance(meta.get("elapsed_s"), (int, float)) else None,
             f"machine: {machine or 'unknown'}",
             f"load average at start {meta['loadavg_at_start']}" if meta.get("loadavg_at_start") else None,
             f"python {meta['python']}" if meta.get("python") else None, vtext or None,
             f"commit {str(meta['git_commit'])[:10]}" if meta.get("git_commit") else None]
    return "; ".join(p for p in parts if p)


def _memory_scale(data: Mapping[str, Any]) -> list[str]:
    lines = ["Side by side in one process: covip's vector index (`VectorIndex`, kind auto) vs (a) numpy brute "
             "force and (b) rebuilding a flat index on every add. Ratios are baseline / covip: above 1 means "
             "covip is faster."]
    rows = []
    for key in sorted(data.get("sizes", {}), key=int):
        size = data["sizes"][key]
        methods = size.get("methods") or {}
        c = methods.get("covip_index_auto")
        if not c:
            rows.append([f"{int(key):,}", size.get("skipped", "not measured"), "", "", "", "", ""])
            continue
        r = (data.get("ratios") or {}).get(key, {})
        rows.append([f"{int(key):,}", c.get("kind", ""), _num(c.get("search_p50_ms")),
                     _ratio(r.get("numpy_bruteforce", {}).get("search_p50")),
                     _ratio(r.get("rebuild_flat", {}).get("add_amortized")), _num(c.get("add_amortized_us")),
                     _num(c.get("recall_at_10"), "{:.3f}")])
    lines += [""] + _table(["vectors", "index", "search p50 (ms)", "numpy search / covip", "rebuild add / covip",
                            "add, amortized (µs)", "recall@10"], rows)
    t = data.get("targets") or {}
    s = t.get("search_p50_le_5ms_at_100k") or {}
    a = t.get("add_O1_amortized") or {}
    rc = t.get("recall_at_10_ge_0.95") or {}
    lines += ["", "Targets:",
              f"- add O(1) amortized: {_met(a.get('met'))} (log-log slope of one add vs n: HNSW "
              f"{_num((a.get('slopes_add_p50') or {}).get('covip_index_hnsw'))}, rebuild baseline "
              f"{_num(a.get('rebuild_flat_slope'))})",
              f"- search p50 ≤ 5 ms at 100k: {_met(s.get('met')) if s.get('covip_index_auto_ms') is not None else 'n/a (100k not measured)'}"
              f" (index {_num(s.get('covip_index_auto_ms'))} ms"
              + (f"; through the Memory facade {_num(s['covip_memory_ms'])} ms)" if s.get("covip_memory_ms") else ")"),
              f"- recall@10 ≥ 0.95: {_met(rc.get('met'))}"]
    sweep = (data.get("threshold_sweep") or {}).get("recommendation")
    if sweep and isinstance(sweep.get("hnsw_threshold"), int):
        lines.append(f"- flat→HNSW threshold the data support: {sweep['hnsw_threshold']:,} "
                     f"(current default {_num(sweep.get('current_default'), '{:,}')})")
    enc = data.get("encryption") or {}
    if enc.get("ratios"):
        r, homes = enc["ratios"], enc.get("homes") or {}
        pw = (homes.get("encrypted") or {}).get("open_passphrase_s")
        lines.append(f"- encryption at rest ≤ 1.3x (encrypted / plain home, {enc.get('n', 0):,} photos, same data "
                     f"interleaved): {_met((enc.get('target') or {}).get('met'))} (remember p50 "
                     f"{_ratio(r.get('remember_p50_ms'))}, mean {_ratio(r.get('remember_mean_ms'))}; search p50 "
                     f"{_ratio(r.get('search_p50_ms'))}, p95 {_ratio(r.get('search_p95_ms'))}; opening with a "
                     f"passphrase adds one Argon2id run: {_num(pw and pw * 1e3)} ms)")
    return lines


def _cag_latency(data: Mapping[str, Any]) -> list[str]:
    labels = (data.get("design") or {}).get("modes") or {}
    lines = ["Side by side on the same engine, memory and photos: a direct answer (no CAG) and each CAG mode "
             "the script measures (caption pass then answer pass, with and without KV-cache reuse, cold and "
             "with a cached caption; see the JSON's design). Ratios are mode / direct (wall time, ratio of "
             "medians); random-weight tiny models, so the timings are real and the text is not."]
    for name, res in (data.get("engines") or {}).items():
        summ, ratios = res.get("summary") or {}, res.get("ratios") or {}
        rows = []
        for mode, s in summ.items():
            r = ratios.get(f"{mode}/direct", {})
            rows.append([labels.get(mode, mode), _num(1000 * s["wall_s"], "{:.1f}") if "wall_s" in s else "-",
                         "1.00x" if mode == "direct" else _ratio(r.get("wall_s_ratio_of_medians")),
                         _num(s.get("prefill_tokens"), "{:.0f}"), _num(s.get("cached_tokens"), "{:.0f}"),
                         _num(s.get("answer_image_tokens_prefilled"), "{:.0f}")])
        lines += ["", f"**{name}**", ""] + _table(
            ["mode", "wall median (ms)", "vs direct", "tokens prefilled", "tokens from KV cache",
             "image tokens prefilled by the answer pass"], rows)
        t = res.get("targets") or {}
        cold, warm = t.get("cold_cag_no_second_image_prefill") or {}, t.get("warm_cag_wall_le_1.1x_direct") or {}
        lines += ["", f"- cold CAG re-encodes no image in the answer pass: {_met(cold.get('met'))}",
                  f"- warm CAG wall ≤ {warm.get('target', 1.1)}x direct: {_met(warm.get('met'))} "
                  f"({_ratio(warm.get('wall_ratio_of_medians'))})"]
    return lines


def _flatten(prefix: str, obj: Any, rows: list[list[str]], limit: int) -> None:
    if len(rows) >= limit:
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _flatten(f"{prefix} / {k}" if prefix else str(k), v, rows, limit)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        rows.append([prefix, _ratio(obj)])


def _generic(data: Mapping[str, Any]) -> list[str]:
    head = data.get("headline")
    if isinstance(head, list) and head:
        rows = [[h.get("figure", ""), _num(h.get("value")), h.get("baseline", ""), _num(h.get("baseline_value")),
                 _ratio(h.get("ratio")), h.get("note", "")] for h in head if isinstance(h, Mapping)]
        return _table(["figure", "value", "baseline", "baseline value", "ratio", "note"], rows)
    rows: list[list[str]] = []
    _flatten("", data.get("ratios"), rows, 16)
    if rows:
        return ["Ratios as the script reports them (see its JSON for their direction):", ""] + _table(
            ["ratio", "value"], rows)
    return ["(this result has no `headline` or `ratios` to tabulate; see its JSON)"]


def _mini_embedder(data: Mapping[str, Any]) -> list[str]:
    """Held-out retrieval of the mini embedder against the random tiny CLIP and raw pixels (same queries)."""
    rows = []
    for name, e in (data.get("embedders") or {}).items():
        ci = e.get("recall_at_5_ci95") or [None, None]
        rows.append([name, _num(e.get("recall_at_1")), _num(e.get("recall_at_5")),
                     f"[{_num(ci[0])}, {_num(ci[1])}]" if ci[0] is not None else "", _num(e.get("mrr")),
                     _num(e.get("pair_recall_at_5")), str(e.get("n_queries", ""))])
    world = data.get("world") or {}
    return [f"Memory retrieval for held-out concepts of the synthetic world ({world.get('n_concepts', '?')} "
            f"concepts, {world.get('image_size', '?')} px): the right concept's memory among the top 1 / 5 "
            f"(chance {_num(world.get('chance_recall_at_1'))} / {_num(world.get('chance_recall_at_5'))}; training "
            f"took {_num(data.get('train_s'))} s). Baselines in the same run: the random `tiny` embedder and raw "
            "pixels.", ""] + _table(
        ["embedder", "recall@1", "recall@5", "recall@5 95% CI", "MRR", "two-concept photos recall@5", "queries"],
        rows)


def _cli_latency(data: Mapping[str, Any]) -> list[str]:
    """Wall time of `covip` commands in a new process: in-process (baseline) vs with `covip serve` up."""
    rows = []
    served = data.get("with_serve") or {}
    for name, row in (data.get("in_process") or {}).items():
        rows.append([f"`covip {name}`" if not name.startswith("-") else f"`covip {name}`",
                     _num(row.get("median_s")), _num((served.get(name) or {}).get("median_s")),
                     _ratio((data.get("ratios") or {}).get(name))])
    return [f"Each command as a user runs it (a new `covip` process, tiny model, a home with 3-4 photos), median "
            f"of {(data.get('meta') or {}).get('reps', '?')} runs. Baseline: everything in-process (`--local`); "
            f"then the same with `covip serve` up for the home (it took {_num(data.get('serve_start_s'))} s to "
            "start): ask and caption are answered by it, remember and recall get their embedding from it.", ""] + \
        _table(["command", "in-process s", "with serve s", "speed-up"], rows) + [""] + \
        [f"- {n}" for n in data.get("notes") or []]


def _ci(ci: Any) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "-"


def _miniature(data: Mapping[str, Any]) -> list[str]:
    """`covip repro mini`: the three models on held-out concepts, paired differences, targets."""
    labels = {"random": "random init", "sft": "SFT", "gspo": "SFT+GSPO"}
    cis = data.get("stages_ci95") or {}
    rows = [[labels.get(name, name), _num(s.get("acc_pos")), _ci((cis.get(name) or {}).get("acc_pos")),
             _num(s.get("acc_neg")), _ci((cis.get(name) or {}).get("acc_neg")), _num(s.get("recognition_f1")),
             _num(s.get("recognition_null_f1"))] for name, s in (data.get("stages") or {}).items()]
    lines = [f"The miniature CoViP reproduction (`covip repro mini{' --quick' if data.get('mode') == 'quick' else ''}`): "
             f"per seed ({data.get('seeds')}), SFT then GSPO of the mini Qwen3-VL on one synthetic world; "
             "every figure is on held-out concepts (never trained on), seed means with 95% intervals (seeds, then "
             "samples, resampled). Acc+/Acc-: CapEval-QAs with the lexical judge; recognition F1 against its "
             "permutation null.", ""]
    lines += _table(["model", "Acc+", "Acc+ 95% CI", "Acc-", "Acc- 95% CI", "recognition F1", "F1 null"], rows)
    diffs = []
    for name, block in (("SFT - random", data.get("sft_minus_random")), ("SFT+GSPO - SFT", data.get("gspo_minus_sft"))):
        for pol, label in (("acc_pos", "Acc+"), ("acc_neg", "Acc-")):
            d = (block or {}).get(pol) or {}
            if d:
                diffs.append([f"{name}, {label}", _num(d.get("mean")), _ci(d.get("ci95"))])
    if diffs:
        lines += [""] + _table(["paired difference", "mean", "95% CI"], diffs)
    cag = data.get("cag_minus_direct") or {}
    if cag:
        lines += ["", f"CAG minus direct answering ({labels.get(str(data.get('cag_model')), '?')} model): " +
                  ", ".join(f"{t.upper()} {_num(v)}" for t, v in cag.items())]
    ret = data.get("retrieval") or {}
    if ret:
        lines += ["", f"Memory retrieval of held-out concepts ({ret.get('embedder')}): recall@1 "
                      f"{_num(ret.get('recall_at_1'))}, recall@5 {_num(ret.get('recall_at_5'))}."]
    lap = data.get("laptop_path") or {}
    if lap:
        rec = lap.get("llamacpp_recognition") or {}
        n, agree = rec.get("n"), rec.get("agreement_with_transformers")
        # agreement is a share of the n samples; the sentence counts them
        same = round(agree * n) if isinstance(agree, (int, float)) and isinstance(n, int) else "?"
        lines += ["", f"Laptop path (first seed's final model): GGUF parity {_met((lap.get('gguf') or {}).get('parity_ok'))}"
                      f", ONNX parity {_met((lap.get('onnx') or {}).get('parity_ok'))}; llama.cpp ({rec.get('quant')}) "
                      f"held-out recognition F1 {_num(rec.get('f1'))} on {n} samples, same answer as "
                      f"transformers on {same} of them."]
    targets = data.get("targets") or {}
    if targets:
        lines += ["", "Targets (full mode): " + "; ".join(f"{k} {_met(t.get('met'))}" for k, t in targets.items())]
    return lines


RENDERERS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {"miniature": _miniature,
                                                                   "memory_scale": _memory_scale,
                                                                   "cag_latency": _cag_latency,
                                                                   "mini_embedder": _mini_embedder,
                                                                   "cli_latency": _cli_latency}


def render_results_md(results_dir: Path, md_path: Path) -> str:
    """The text of RESULTS.md built from the JSON files in ``results_dir`` (links relative to ``md_path``)."""
    results = load_results(results_dir)
    rel = os.path.relpath(results_dir, md_path.parent)
    lines = ["# Benchmark results", "",
             "<!-- generated by `covip bench` from benchmarks/results/*.json; do not edit by hand: rerun "
             "`covip bench --report-only` -->", "",
             "Regenerate: `covip bench` (full), `covip bench --report-only` (this file only); `covip bench "
             "--quick` (under 10 minutes on 2 cores) writes its own report under `results/quick/` and leaves "
             "this one alone. Each section comes from one JSON file written by "
             "the script of the same name in `benchmarks/`; every figure is a ratio against a baseline the "
             "script measured in the same run. These sections measure speed and retrieval, to which no "
             "scoring protocol applies; quality figures (CapEval, LSD/LAR/ITR) record theirs in their own JSON "
             "(`protocol`, `prompt_pack`) and come from the commands at the end, all under the paper's "
             "protocol (`--protocol paper`, the default).", ""]
    if not results:
        lines += ["No results yet: run `covip bench --quick`.", ""]
    for name, data in results.items():
        lines += [f"## {name}", "", f"_{provenance(data)}_", ""]
        try:
            lines += RENDERERS.get(name, _generic)(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log.warning("results %s: cannot tabulate (%s)", name, exc)
            lines += [f"(cannot tabulate this result: {exc}; see its JSON)"] + _generic(data)
        pngs = sorted(results_dir.glob(f"{name}*.png"))
        lines += [""] + [f"![{p.stem}]({rel}/{p.name})" for p in pngs]
        lines += ["", f"Data: [{name}.json]({rel}/{name}.json)", ""]
    lines += ["## Quality of a real model", "",
              "Personalization quality (CapEval-QAs Acc+/Acc−, downstream LSD/LAR/ITR with and without CAG) "
              "cannot be measured on machines without model weights: the offline `tiny` models have random "
              "weights, so their scores only show that the pipeline runs. Run these on a GPU box: the judge "
              "on one GPU, the model being evaluated (Qwen3-VL-8B in bf16: about 20 GB) on another "
              "(`CUDA_VISIBLE_DEVICES` picks them; the judge may also run on another machine, its URL goes "
              "in `--judge`):", "",
              "```bash", GPU_COMMANDS, "```", "",
              "Each command prints its table and writes JSON, a PNG and per-question / per-answer JSONL to "
              "`--out`; rerunning resumes (captions and answers are kept, judge answers are cached).", ""]
    return "\n".join(lines)


def write_results_md(results_dir: Path, md_path: Path) -> Path:
    """Regenerate ``md_path`` from ``results_dir`` (atomically)."""
    return atomic_write_text(md_path, render_results_md(results_dir, md_path), private=False)
