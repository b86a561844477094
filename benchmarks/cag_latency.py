#!/usr/bin/env python
"""CAG latency benchmark: direct answer vs Caption-Augmented Generation (cold, warm) on the same engine.

Usage::

    python benchmarks/cag_latency.py [--engines llamacpp,transformers] [--reps 15] [--llamacpp-reps 15]
                                     [--photos 4] [--size 128] [--k 4] [--caption-tokens 128] [--answer-tokens 48]
                                     [--omp-wait-policy passive|default] [--plot-only] [--out benchmarks/results]

Writes ``<out>/cag_latency.json`` and ``<out>/cag_latency.png`` and prints a table plus side-by-side ratios.

Targets (issue): cold CAG costs no second image prefill (the answer pass reuses the caption pass's KV cache,
images included); warm CAG (cached caption) wall time <= 1.1 x the direct answer (met by restoring the KV
snapshot of the caption pass, covip.sdk.cag.KvSnapshots).

Design (also recorded in the JSON under "design")
------------------------------------------------
Models
    transformers  covip.sdk.engines.transformers.TransformersEngine on the built-in tiny Qwen3-VL (random
                  weights, build_tiny_vlm("tiny-qwen3-vl")), CPU float32, torch's default thread count.
    llamacpp      covip.sdk.engines.llamacpp.LlamaCppEngine on the same model converted to GGUF (f32) + mmproj
                  with llama.cpp's own converter (covip.export.converter.convert_tiny_to_gguf), CPU, the engine's
                  default thread count (half the cores).
    Both models have random weights: the text is meaningless, the token counts and timings are real.
Memory
    One covip Memory (tiny open_clip embedder) holding the demo photos of covip.sdk.demo (Bori, Mom, blue bike,
    drawn with draw_concept at --size px) plus one extra person ("Dad") so that k=4 concepts exist; every
    photo is remembered with its dialogue. ContextConfig(k=--k, similarity_floor=-1) so every query gets k
    context items (the tiny embedder's similarities are meaningless; the floor would otherwise decide).
    Query photos: draw_concept(concept, variant 7, 8, ...) (never in memory), one per concept, --photos of them.
Generation
    Greedy, fixed budgets: caption pass max_new_tokens=--caption-tokens, answer pass --answer-tokens (random
    weights rarely emit EOS, so passes normally decode exactly that many tokens; decode counts are recorded).
Modes (every mode goes through covip.sdk.cag.CaptionAugmentedGenerator.ask, which Assistant.ask wraps)
    direct             ask(cag=False): context + query image + question, one pass.
    cag_cold           ask(cag=True) with no cached caption (the memory is wrapped so cached_caption() misses):
                       caption pass, then the answer pass continues the same chat and reuses its KV cache;
                       the caption pass's KV state is snapshotted (Engine.snapshot) into the KvSnapshots store
                       shared with cag_warm.
    cag_cold_no_kv     the same, but the engine is wrapped so its KV cache is reset before *every* call: the
                       answer pass prefills everything again, images included (baseline that shows what KV
                       reuse saves).
    cag_warm           ask(cag=True) with the caption cached in memory and a KV snapshot of its caption pass in
                       the store (both from an earlier cold run): the snapshot is restored (Engine.restore), then
                       only the answer pass runs and prefills the end of the caption turn + the question.
    cag_warm_no_snapshot  the same with CagConfig(kv_snapshot_mb=0) (the behaviour before snapshots): the answer
                       pass prefills context + query + instruction + caption + question.
    cag_cold_paper / cag_warm_paper  cold and warm CAG with CagConfig(layout="paper"), the answer-pass layout of
                       the paper's evaluation (`covip eval --protocol paper`): the captioning instruction is a
                       system turn and the user turn holds context + photo only, so the answer pass shares only
                       the chat's first tokens with the caption pass and prefills the images again (no snapshot
                       is taken or restored: nothing past the system turn matches).
    Before every mode the engine's KV cache is reset (Engine.reset()), so each mode starts as a new request
    would and no mode borrows another mode's prefix (cag_warm brings its own state back by restoring it).
Procedure
    Per engine: one unmeasured warm-up cycle (a cold CAG run per photo fills the caption cache and the snapshot
    store, then all modes on the first photo), then --reps repetitions x --photos query photos; within a
    (rep, photo) cycle the order of the modes is shuffled (fixed seed). llama.cpp runs first (fast), then
    transformers; a --budget-minutes deadline stops repetitions early (recorded).
Metrics (per run; summaries are medians over runs, p25/p75 of wall time)
    wall_s          end-to-end ask() time (context search with the embedder, photo loading, caption cache
                    lookup/store, the engine passes).
    prefill_s, decode_s  the engine's own Generation timings summed over the passes (transformers' prefill_s
                    includes chat rendering + image preprocessing; llama.cpp's starts after tokenization).
    other_s         wall_s - prefill_s - decode_s.
    prefill_tokens  tokens prefilled (run through the model) in all passes = sum of Generation.prompt_tokens.
    cached_tokens   prompt tokens reused from the KV cache = sum of Generation.cached_tokens.
    decode_tokens   sum of Generation.completion_tokens.
    image_tokens_prefilled  image placeholder tokens among the prefilled ones, from the prompt layout (image
                    spans of the engine's tokenized prompt) and the pass's cached prefix length; for the cold
                    CAG answer pass this is the "second image prefill" of the target (should be 0).
    Ratios: ratio of the medians (mode / direct), and the median of per-cycle paired ratios (same photo and
    repetition, run back to back, so slow drifts of the shared machine's load cancel).
    caption_pass_tokens_reprefilled  (cold CAG) tokens the caption pass left in the KV cache (its prompt + all
                    generated tokens but the last) that the answer pass prefilled again because the re-tokenized
                    caption did not match the generated ids.
    kv_snapshot_s, kv_restore_s, kv_restored  Answer.timings / tokens: time to snapshot the caption pass (cold)
                    and to restore it (warm; part of other_s), tokens the restored state holds.
    The machine is shared (2 cores, other jobs): load averages are recorded per engine and per cycle.
Threads
    OMP_WAIT_POLICY=PASSIVE is set before torch loads (unless the environment sets it; --omp-wait-policy
    default keeps the runtime's spinning): with spinning OpenMP threads on this loaded 2-core machine the
    embedder's query embedding (2 ms) took 0.1-0.5 s at random and the transformers engine ran 3-10x slower,
    which buried the differences between the modes in noise. Recorded in meta.omp_wait_policy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# OpenMP's wait policy must be chosen before torch / faiss start their OpenMP runtime (see --omp-wait-policy)
_OMP_DEFAULT = os.environ.get("OMP_WAIT_POLICY")


BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""


def _omp_policy_from_argv(argv: list[str]) -> str:
    joined = [a.split("=", 1)[1] for a in argv if a.startswith("--omp-wait-policy=")]
    spaced = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--omp-wait-policy"]
    return (joined + spaced + ["passive"])[0]


if _omp_policy_from_argv(sys.argv[1:]) == "passive":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import _common  # noqa: E402  (benchmarks/_common.py: the helpers every benchmark shares)

# The helper modules split out of this script (same folder, imported like _common; after the OpenMP choice above).
# Every name that was defined here before the split stays importable from here (hence F401: some are only
# re-exported).
from _cag_measure import (  # noqa: E402, F401
    ENGINE_LABELS,
    EXTRA_CONCEPT,
    MODES,
    QUESTION,
    TARGET_WARM_RATIO,
    USER,
    ColdMemory,
    EngineBench,
    Probe,
    build_memory,
    images_after,
    open_engine,
    perf,
    prompt_layout,
    query_photos,
    reset_kv,
    run_engine,
)
from _cag_plot import SHORT, plot  # noqa: E402, F401
from _common import finish_run, loadavg, median, quantile  # noqa: E402

LABELS = {"direct": "direct (no CAG)", "cag_cold": "CAG cold", "cag_cold_no_kv": "CAG cold, no KV reuse",
          "cag_warm": "CAG warm (KV snapshot)", "cag_warm_no_snapshot": "CAG warm, no snapshot",
          "cag_cold_paper": "CAG cold, paper layout", "cag_warm_paper": "CAG warm, paper layout"}


# ----------------------------------------------------------------------------------------------------- utils
RUN_COLUMNS = ("mode", "rep", "photo_index", "photo", "order", "wall_s", "prefill_s", "decode_s", "engine_s", "other_s",
               "prefill_tokens", "cached_tokens", "decode_tokens", "image_tokens_prefilled",
               "answer_image_tokens_prefilled", "caption_cached", "n_memories", "caption_pass_kv_tokens",
               "caption_pass_tokens_reprefilled", "kv_snapshot_s", "kv_restore_s", "kv_restored")
PASS_COLUMNS = ("prompt_tokens_total", "prefill_tokens", "cached_tokens", "decode_tokens", "prefill_s", "decode_s",
                "image_tokens_in_prompt", "image_tokens_prefilled", "finish_reason")


def compact_runs(runs: list[dict]) -> dict:
    """Per-run records as one table (columns + rows) to keep the JSON small; passes flattened."""
    columns = [*RUN_COLUMNS, *(f"{p}_{c}" for p in ("caption", "answer") for c in PASS_COLUMNS), "problems"]
    rows = []
    for r in runs:
        by = {p["pass"]: p for p in r["passes"]}
        row = [r.get(c) for c in RUN_COLUMNS]
        row += [by.get(p, {}).get(c) for p in ("caption", "answer") for c in PASS_COLUMNS]
        rows.append([*row, r["problems"] or None])
    return {"columns": columns, "rows": rows}


def write_json(path: Path, data: dict) -> None:
    """The results as JSON, each run table with one row per line (indent=1 alone puts every value on a line)."""
    engines, tables = {}, []
    for name, res in data.get("engines", {}).items():
        if isinstance(res.get("runs"), list):
            table = _common.jsonable(compact_runs(res["runs"]))
            tables.append(table["rows"])
            res = dict(res, runs={"columns": table["columns"], "rows": f"\0ROWS{len(tables) - 1}\0"})
        engines[name] = res
    text = _common.dumps(dict(data, engines=engines), compact_lists=False)
    for i, rows in enumerate(tables):
        text = text.replace(json.dumps(f"\0ROWS{i}\0"), "[\n" + ",\n".join("  " + json.dumps(r) for r in rows) + "\n ]")
    _common.write_text(path, text)


def machine_info() -> dict:
    import torch

    return _common.machine_info(
        ("torch", "transformers", "llama-cpp-python", "open_clip_torch", "matplotlib"),
        torch_threads=torch.get_num_threads(), llamacpp_threads=max(1, (os.cpu_count() or 2) // 2),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), omp_wait_policy_from_environment=_OMP_DEFAULT)


# ------------------------------------------------------------------------------------------------ summaries
SUM_FIELDS = ("wall_s", "prefill_s", "decode_s", "engine_s", "other_s", "prefill_tokens", "cached_tokens",
              "decode_tokens", "image_tokens_prefilled", "answer_image_tokens_prefilled", "kv_snapshot_s",
              "kv_restore_s", "kv_restored")


def summarize(runs: list[dict]) -> dict:
    out: dict[str, dict] = {}
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        if not rs:
            continue
        s: dict[str, Any] = {"n": len(rs)}
        for f in SUM_FIELDS:
            s[f] = median([r.get(f) for r in rs])
        s["wall_s_p25"] = quantile([r["wall_s"] for r in rs], 0.25)
        s["wall_s_p75"] = quantile([r["wall_s"] for r in rs], 0.75)
        s["answer_image_tokens_prefilled_max"] = max(
            (r["answer_image_tokens_prefilled"] for r in rs if r["answer_image_tokens_prefilled"] is not None),
            default=None)
        for pname in ("caption", "answer"):
            ps = [p for r in rs for p in r["passes"] if p["pass"] == pname]
            if ps:
                s[pname] = {f: median([p[f] for p in ps]) for f in (
                    "prompt_tokens_total", "prefill_tokens", "cached_tokens", "decode_tokens", "prefill_s",
                    "decode_s", "image_tokens_in_prompt", "image_tokens_prefilled")}
        s["problems"] = sorted({p for r in rs for p in r["problems"]})
        out[mode] = s
    return out


def ratios(runs: list[dict], summary: dict) -> dict:
    out = {}
    base = summary.get("direct")
    paired: dict[tuple, dict[str, dict]] = {}
    for r in runs:
        paired.setdefault((r["rep"], r["photo_index"]), {})[r["mode"]] = r
    for mode in MODES[1:]:
        s = summary.get(mode)
        if not s or not base:
            continue
        entry = {}
        for f in ("wall_s", "engine_s", "prefill_s", "decode_s", "prefill_tokens"):
            entry[f"{f}_ratio_of_medians"] = (s[f] / base[f]) if base[f] else None
            pr = [c[mode][f] / c["direct"][f] for c in paired.values()
                  if mode in c and "direct" in c and c["direct"][f]]
            entry[f"{f}_paired_median_ratio"] = median(pr)
        out[f"{mode}/direct"] = entry
    cold, nokv = summary.get("cag_cold"), summary.get("cag_cold_no_kv")
    if cold and nokv:
        pr = [c["cag_cold_no_kv"]["wall_s"] / c["cag_cold"]["wall_s"] for c in paired.values()
              if "cag_cold" in c and "cag_cold_no_kv" in c]
        out["cag_cold_no_kv/cag_cold"] = {
            "wall_s_ratio_of_medians": nokv["wall_s"] / cold["wall_s"],
            "wall_s_paired_median_ratio": median(pr),
            "answer_pass_prefill_tokens_saved": nokv["answer"]["prefill_tokens"] - cold["answer"]["prefill_tokens"],
            "answer_pass_image_tokens_saved": (nokv["answer"]["image_tokens_prefilled"]
                                               - cold["answer"]["image_tokens_prefilled"]),
            "answer_pass_prefill_s_saved": nokv["answer"]["prefill_s"] - cold["answer"]["prefill_s"],
        }
    return out


def targets_and_notes(name: str, res: dict) -> tuple[dict, list[str]]:
    s, rt, info = res["summary"], res["ratios"], res["engine"]
    cold, nokv, warm, direct = s.get("cag_cold"), s.get("cag_cold_no_kv"), s.get("cag_warm"), s.get("direct")
    t: dict[str, Any] = {}
    notes: list[str] = []
    if cold:
        cold_runs = [r for r in res["runs"] if r["mode"] == "cag_cold"]
        worst = max(r["answer_image_tokens_prefilled"] for r in cold_runs)
        images = all(r.get("answer_cached_covers_images") for r in cold_runs)
        n = len(cold_runs)
        t["cold_cag_no_second_image_prefill"] = {
            "met": worst == 0 and images,
            "answer_pass_image_tokens_prefilled_max": worst,
            "answer_pass_cached_prefix_covers_all_images_in_all_runs": images,
            "runs": n,
            "runs_where_cached_prefix_covers_whole_caption_prompt":
                sum(bool(r.get("answer_cached_covers_caption_prompt")) for r in cold_runs),
            "runs_where_cached_prefix_covers_whole_caption_pass":
                sum(bool(r.get("answer_cached_covers_caption_pass")) for r in cold_runs),
            "caption_pass_tokens_reprefilled_median": median([r["caption_pass_tokens_reprefilled"]
                                                              for r in cold_runs]),
            "caption_pass_tokens_reprefilled_max": max(r["caption_pass_tokens_reprefilled"] for r in cold_runs),
            "answer_pass_prefill_tokens_median": cold["answer"]["prefill_tokens"],
            "answer_pass_cached_tokens_median": cold["answer"]["cached_tokens"],
            "caption_pass_prompt_tokens_median": cold["caption"]["prompt_tokens_total"],
            "image_tokens_in_prompt": cold["caption"]["image_tokens_in_prompt"],
            "without_kv_reuse_answer_pass_image_tokens_prefilled": nokv["answer"]["image_tokens_prefilled"]
            if nokv else None,
        }
        full = t["cold_cag_no_second_image_prefill"]["runs_where_cached_prefix_covers_whole_caption_pass"]
        if full < n:
            notes.append(
                f"{name}: cold CAG answer pass prefilled no image tokens in any of {n} runs (max {worst}), but in "
                f"{n - full} of {n} runs it re-ran part of the caption (median "
                f"{t['cold_cag_no_second_image_prefill']['caption_pass_tokens_reprefilled_median']:.0f}, max "
                f"{t['cold_cag_no_second_image_prefill']['caption_pass_tokens_reprefilled_max']} tokens): the "
                "engines re-tokenize the caption text and compare ids, and the random-weight model's generated "
                "ids are often not the tokenizer's canonical split of their own text (and a caption starting "
                "with whitespace merges with the template's 'assistant\\n' token, so the prefix ends before "
                "the caption). Images sit before that point, so they are never re-encoded.")
    if warm and direct:
        r, nosnap = rt["cag_warm/direct"], s.get("cag_warm_no_snapshot")
        rn = rt.get("cag_warm_no_snapshot/direct", {})
        met = r["wall_s_ratio_of_medians"] <= TARGET_WARM_RATIO
        warm_runs = [x for x in res["runs"] if x["mode"] == "cag_warm"]
        t["warm_cag_wall_le_1.1x_direct"] = {
            "met": met, "target": TARGET_WARM_RATIO,
            "wall_ratio_of_medians": r["wall_s_ratio_of_medians"],
            "wall_paired_median_ratio": r["wall_s_paired_median_ratio"],
            "engine_time_ratio_of_medians": r["engine_s_ratio_of_medians"],
            "runs": len(warm_runs), "runs_with_snapshot_restored": sum(x["kv_restored"] is not None for x in warm_runs),
            "prefill_tokens_warm": warm["prefill_tokens"], "prefill_tokens_direct": direct["prefill_tokens"],
            "decode_tokens_warm": warm["decode_tokens"], "decode_tokens_direct": direct["decode_tokens"],
            "kv_restored_tokens_median": warm["kv_restored"], "kv_restore_s_median": warm["kv_restore_s"],
            "kv_snapshot_s_median_in_cold_runs": cold["kv_snapshot_s"] if cold else None,
            "no_snapshot_wall_ratio_of_medians": rn.get("wall_s_ratio_of_medians"),
            "no_snapshot_wall_paired_median_ratio": rn.get("wall_s_paired_median_ratio"),
            "no_snapshot_prefill_tokens": nosnap["prefill_tokens"] if nosnap else None,
        }
        t["warm_cag_wall_le_1.1x_direct"].update(_deltas(warm, direct))
        d = _deltas(warm, direct)
        notes.append(
            f"{name}: warm CAG restores the caption pass's KV snapshot ({warm['kv_restored']:.0f} tokens, "
            f"{warm['kv_restore_s'] * 1000:.2f} ms; taking it cost the cold run "
            f"{(cold or {}).get('kv_snapshot_s', 0) * 1000:.2f} ms) and prefills {warm['prefill_tokens']:.0f} tokens "
            f"(the end of the caption turn, the question, and caption tokens that re-tokenize differently) vs direct "
            f"{direct['prefill_tokens']:.0f}. Wall {warm['wall_s'] * 1000:.1f} vs {direct['wall_s'] * 1000:.1f} ms = "
            f"{r['wall_s_ratio_of_medians']:.2f}x (paired {r['wall_s_paired_median_ratio']:.2f}x; engine time "
            f"{r['engine_s_ratio_of_medians']:.2f}x); {_delta_text(d)}. Target <= {TARGET_WARM_RATIO}x "
            + ("met." if met else "missed."))
        if nosnap:
            dn = _deltas(nosnap, direct)
            notes.append(
                f"{name}: without the snapshot (CagConfig(kv_snapshot_mb=0), the behaviour before) warm CAG prefills "
                f"{nosnap['prefill_tokens']:.0f} tokens (+{dn['extra_prefill_tokens']:.0f} vs direct: the "
                f"{info['instruction_tokens']}-token caption instruction, the ~{int(cold['caption']['decode_tokens']) if cold else '?'}"
                f"-token caption and the turn markers) and takes {nosnap['wall_s'] * 1000:.1f} ms = "
                f"{rn['wall_s_ratio_of_medians']:.2f}x direct (paired {rn['wall_s_paired_median_ratio']:.2f}x); "
                f"{_delta_text(dn)}.")
    t_paper, note = _paper_layout_cost(name, s)
    if t_paper:  # a measurement, not a target
        res["paper_layout_cost"] = t_paper
        notes.append(note)
    return t, notes


def _paper_layout_cost(name: str, s: dict) -> tuple[dict, str]:
    """What the paper's answer-pass layout costs against covip's prefix layout (same caption, same question)."""
    pairs = [(p, q) for p, q in (("cag_cold_paper", "cag_cold"), ("cag_warm_paper", "cag_warm")) if p in s and q in s]
    if not pairs:
        return {}, ""
    out = {}
    for paper, prefix in pairs:
        a, b = s[paper]["answer"], s[prefix]["answer"]
        out[paper] = {"wall_s": s[paper]["wall_s"], "wall_s_prefix_layout": s[prefix]["wall_s"],
                      "wall_ratio_paper_over_prefix": s[paper]["wall_s"] / s[prefix]["wall_s"],
                      "answer_prefill_tokens": a["prefill_tokens"], "answer_prefill_tokens_prefix_layout":
                          b["prefill_tokens"], "answer_image_tokens_prefilled": a["image_tokens_prefilled"],
                      "answer_image_tokens_prefilled_prefix_layout": b["image_tokens_prefilled"],
                      "answer_prefill_s": a["prefill_s"], "answer_prefill_s_prefix_layout": b["prefill_s"]}
    text = "; ".join(
        f"{'cold' if 'cold' in k else 'warm'}: answer pass prefills {v['answer_prefill_tokens']:.0f} tokens "
        f"({v['answer_image_tokens_prefilled']:.0f} of them image tokens) vs {v['answer_prefill_tokens_prefix_layout']:.0f} "
        f"({v['answer_image_tokens_prefilled_prefix_layout']:.0f}), wall {v['wall_s'] * 1000:.0f} vs "
        f"{v['wall_s_prefix_layout'] * 1000:.0f} ms = {v['wall_ratio_paper_over_prefix']:.2f}x" for k, v in out.items())
    return out, (f"{name}: the paper's answer-pass layout (instruction as system turn, `covip eval --protocol paper`) "
                 f"cannot reuse the caption pass's KV cache past the first tokens, so it reads the images again; {text}.")


def _deltas(mode: dict, direct: dict) -> dict:
    """Where a mode's median wall time differs from direct's (s), and its decode cost per answer token (ms)."""
    return {"extra_prefill_tokens": mode["prefill_tokens"] - direct["prefill_tokens"],
            "delta_wall_s": mode["wall_s"] - direct["wall_s"], "delta_prefill_s": mode["prefill_s"] - direct["prefill_s"],
            "delta_decode_s": mode["decode_s"] - direct["decode_s"], "delta_other_s": mode["other_s"] - direct["other_s"],
            "answer_decode_ms_per_token": 1000 * mode["answer"]["decode_s"] / max(1, mode["answer"]["decode_tokens"]),
            "answer_decode_ms_per_token_direct":
                1000 * direct["answer"]["decode_s"] / max(1, direct["answer"]["decode_tokens"])}


def _delta_text(d: dict) -> str:
    return (f"of the medians' {d['delta_wall_s'] * 1000:+.1f} ms: prefill {d['delta_prefill_s'] * 1000:+.1f}, decode "
            f"{d['delta_decode_s'] * 1000:+.1f} ({d['answer_decode_ms_per_token']:.2f} vs "
            f"{d['answer_decode_ms_per_token_direct']:.2f} ms per answer token: decode attends over the longer "
            f"KV cache), other (context search, photos, rendering, restore) {d['delta_other_s'] * 1000:+.1f} ms")


FIX_PROPOSALS = [
    "Done: the KV state at the end of the caption pass is snapshotted (llama.cpp: llama_state_seq_get_data of "
    "sequence 0; transformers: a deep copy of the DynamicCache) into covip.sdk.cag.KvSnapshots, an LRU in RAM "
    "bounded by CagConfig.kv_snapshot_mb and keyed by the caption cache key (user, model id, prompt version, "
    "photo sha256, context photo ids); a warm ask restores it, and a caption cache miss drops it.",
    "Next, for longer contexts: decode of the warm answer pass still attends over the whole caption prompt; a "
    "caption-only answer chat (context dialogues + caption + question, no images, no caption instruction) "
    "would shorten it, but changes the prompt the model was trained on, so it needs an accuracy check.",
    "Snapshots are lost with the process: persisting them (llama_state_seq_save_file, torch.save) would make "
    "the first warm ask after a restart fast too, at the cost of disk space.",
]


# ------------------------------------------------------------------------------------------------ output
def print_table(results: dict) -> None:
    head = (f"{'engine':<12} {'mode':<28} {'wall s med [p25-p75]':>22} {'prefill s':>9} {'decode s':>8} "
            f"{'other s':>7} {'prefill tok':>11} {'cached tok':>10} {'decode tok':>10} {'img tok ans':>11} "
            f"{'wall/direct':>11}")
    print("\n" + head)
    print("-" * len(head))
    for name, res in results["engines"].items():
        s, rt = res["summary"], res["ratios"]
        for mode in MODES:
            m = s.get(mode)
            if not m:
                continue
            ratio = "1.00" if mode == "direct" else f"{rt[f'{mode}/direct']['wall_s_ratio_of_medians']:.2f}"
            img = m["answer_image_tokens_prefilled"]
            wall = f"{m['wall_s']:.3f} [{m['wall_s_p25']:.3f}-{m['wall_s_p75']:.3f}]"
            print(f"{name:<12} {LABELS[mode]:<28} {wall:>22} {m['prefill_s']:>9.3f} {m['decode_s']:>8.3f} "
                  f"{m['other_s']:>7.3f} {m['prefill_tokens']:>11.0f} {m['cached_tokens']:>10.0f} "
                  f"{m['decode_tokens']:>10.0f} {img:>11.0f} {ratio:>11}")
    print("\nRatios (ratio of medians | paired median):")
    for name, res in results["engines"].items():
        for key, r in res["ratios"].items():
            rest = (f"engine {r['engine_s_ratio_of_medians']:.2f}   prefill tokens "
                    f"{r['prefill_tokens_ratio_of_medians']:.2f}" if key.endswith("/direct") else
                    f"answer pass saves {r['answer_pass_prefill_tokens_saved']:.0f} prefill tokens "
                    f"({r['answer_pass_image_tokens_saved']:.0f} image), {r['answer_pass_prefill_s_saved'] * 1000:.1f} ms")
            print(f"  {name:<12} {key:<30} wall {r['wall_s_ratio_of_medians']:.2f} | "
                  f"{r['wall_s_paired_median_ratio']:.2f}   {rest}")
    print("\nTargets:")
    for name, res in results["engines"].items():
        for key, t in res["targets"].items():
            print(f"  {name:<12} {key:<36} {'MET' if t['met'] else 'MISSED'}")
    print("\nNotes:")
    for note in results["notes"]:
        print(f"  - {note}")


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="llamacpp,transformers", help="comma-separated: llamacpp,transformers")
    p.add_argument("--reps", type=int, default=15, help="repetitions over the query photos (transformers)")
    p.add_argument("--llamacpp-reps", type=int, default=15, help="repetitions for llama.cpp")
    p.add_argument("--photos", type=int, default=4, help="query photos (one per concept, then new variants)")
    p.add_argument("--size", type=int, default=128, help="photo size in px (the tiny model's max is 128x128)")
    p.add_argument("--k", type=int, default=4, help="context items (memories shown with the query)")
    p.add_argument("--image-tokens", type=int, default=16, help="ContextConfig.image_tokens (budget estimate)")
    p.add_argument("--caption-tokens", type=int, default=128, help="caption pass max_new_tokens")
    p.add_argument("--answer-tokens", type=int, default=48, help="answer pass max_new_tokens")
    p.add_argument("--budget-minutes", type=float, default=9.0, help="stop repetitions after this long")
    p.add_argument("--seed", type=int, default=20240501, help="mode order shuffling")
    p.add_argument("--omp-wait-policy", choices=("passive", "default"), default="passive",
                   help="passive (default): OMP_WAIT_POLICY=PASSIVE unless set in the environment; OpenMP threads "
                   "of torch (embedder, transformers engine) then sleep instead of spinning, which on a loaded "
                   "2-core machine otherwise makes the embedder's 2 ms jump to 0.1-0.5 s at random; default: "
                   "leave the runtime's default (active spinning)")
    p.add_argument("--plot-only", action="store_true", help="redraw <out>/cag_latency.png from the JSON, run nothing")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary memory home goes")
    # --quick: added for `covip bench --quick` (issue 6); a short run, same modes; explicit options still win
    p.add_argument("--quick", action="store_true",
                   help="a short run (~1-2 min): --reps 2 --llamacpp-reps 3 --photos 2 --budget-minutes 3")
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(reps=2, llamacpp_reps=3, photos=2, budget_minutes=3.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = perf()
    deadline = start + args.budget_minutes * 60
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINE_LABELS]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}; choose from {sorted(ENGINE_LABELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "cag_latency.json", args.out / "cag_latency.png"
    if args.plot_only:
        plot(json.loads(json_path.read_text()), png_path)
        print(f"wrote {png_path}")
        return 0
    meta = machine_info()
    meta["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results: dict[str, Any] = {
        "meta": meta,
        "design": {"doc": __doc__.split('Design (also recorded in the JSON under "design")')[1].strip(),
                   "modes": LABELS, "question": QUESTION,
                   "targets": {"cold_cag": "the answer pass prefills no image tokens (second image prefill = 0)",
                               "warm_cag": f"wall time <= {TARGET_WARM_RATIO} x direct (ratio of medians)"}},
        "engines": {}, "notes": [], "fix_proposals": FIX_PROPOSALS,
    }
    with tempfile.TemporaryDirectory(prefix="covip-cag-bench-", dir=args.workdir) as tmp:
        tmp_path = Path(tmp)
        mem, concepts = build_memory(tmp_path / "home", tmp_path / "photos", args.size)
        try:
            photos = query_photos(concepts, args.photos, args.size, tmp_path / "photos")
            meta["memory"] = {"photos": len(mem.photos(USER)), "concepts": [c.name for c in concepts],
                              "query_photos": [p.name for p in photos]}
            for name in engines:
                reps = args.llamacpp_reps if name == "llamacpp" else args.reps
                print(f"[{name}] {reps} reps x {len(photos)} photos x {len(MODES)} modes ...", flush=True)
                res = run_engine(name, mem, photos, reps, args, deadline)
                res["summary"] = summarize(res["runs"])
                res["ratios"] = ratios(res["runs"], res["summary"])
                res["targets"], notes = targets_and_notes(name, res)
                results["engines"][name] = res
                results["notes"].extend(notes)
                meta["elapsed_s"] = perf() - start
                meta["loadavg_at_end"] = loadavg()
                write_json(json_path, results)
        finally:
            mem.close()
    problems = sorted({p for res in results["engines"].values() for s in res["summary"].values()
                       for p in s["problems"]})
    results["notes"].append(
        "The machine is shared (2 cores, other jobs running: see the load averages in meta and per cycle); "
        "every number is a median over repetitions and query photos, and the paired ratios compare modes "
        "run back to back on the same photo.")
    results["notes"].append(
        "transformers' Generation.prefill_s includes chat rendering and image preprocessing; llama.cpp's starts "
        "after tokenization (its rendering, tokenization and image bitmaps fall under other_s).")
    if problems:
        results["notes"].append(f"problems seen: {problems}")
    return finish_run(results, meta, start, json_path, png_path, plot=plot, print_table=print_table,
                      write=write_json)


if __name__ == "__main__":
    sys.exit(main())
