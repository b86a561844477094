#!/usr/bin/env python
"""Training throughput of `covip train gspo`: where one GSPO optimizer step's time goes, and how fast its rollouts
generate against the same model's plain ``model.generate`` (the baseline, measured in the same run).

Usage::

    python benchmarks/train_throughput.py [--quick] [--shape tiny|mini|deep|qwen3vl-2b|qwen3vl-8b] [--steps N]
                                          [--max-new-tokens N] [--baseline-reps N] [--threads 1] [--cpu]
                                          [--set group.key=value ...] [--compare-trl | --no-compare-trl]
                                          [--allow-cpu-large] [--out benchmarks/results]

What runs
    ``covip.training.gspo.train_gspo`` itself (the function behind `covip train gspo`; default shape: deep): the
    shape's bundled config
    (tiny/mini: ``tiny-cpu``; qwen3vl-2b: ``qwen3vl-2b``; qwen3vl-8b: ``qwen3vl-8b-paper`` with gradient accumulation
    4 for one GPU), the lexical judge, the synthetic world generated small into a temporary run folder, LoRA as the
    config says, ``--steps`` optimizer steps, no checkpoints, adapter or merge (see "config" in the JSON for every
    override; ``--set`` adds covip config overrides last, e.g. ``model.gradient_checkpointing=true``). The rollouts
    run with the config's ``gspo.rollout_*`` settings (covip's: eval mode, LoRA merged while generating); with
    ``--compare-trl`` (default for the small shapes) a second run with trl's own rollouts (train mode, LoRA
    unmerged; no baseline) gives the "covip vs trl" rows. Shapes: tiny/mini are the built-in random-weight
    presets; deep is the tiny widths with Qwen3-VL-8B's 36 decoder layers and the paper's LoRA (r64, dropout
    0.05, 252 peft layers), where per-module dispatch dominates a decode step as it does on a GPU at batch 4
    (trl 1.x refuses LoRA on lm_head, so deep and qwen3vl-8b adapt the decoder projections only); qwen3vl-2b/8b
    are random weights of the real Qwen3-VL-2B/8B configurations with the SmolLM2 vocabulary (the tiny preset's tokenizer and processor),
    described on the meta device first (parameter count, refusal on CPU without ``--allow-cpu-large``), then built
    directly on the GPU in bf16 and handed to train_gspo in place of ``load_policy`` (no weights on disk).
How it is timed (wrapping, nothing in trl or covip is edited)
    trl's ``GRPOTrainer`` is swapped, for the duration of the call, for a subclass whose overrides time
    ``super()``: ``training_step``, ``_prepare_inputs`` (rollout + scoring), ``_generate`` (the whole rollout:
    chat template, image processing, generation, decoding), ``_calculate_rewards`` (the CoViP reward with its
    judge), ``compute_loss`` (forward) and ``accelerator.backward`` (backward); the policy's ``generate`` is wrapped
    on the instance (generation proper, its tokens and its inputs), a forward pre-hook records each forward's
    input length and KV-cache length, and a ``TrainerCallback`` marks step begin/end and the optimizer step. On
    CUDA every mark synchronizes first. Per step: rollout (generate + rollout overhead), reward, the rest of the
    rollout phase (old log-probs, advantages), forward, backward, optimizer (clipping, step, scheduler,
    zero_grad), and what lies between steps (data loading, logging). Medians leave out step 1 (warm-up: first
    forward/backward, lazy initializations) whenever there are 2 or more steps. On the CPU, torch runs
    ``--threads`` threads (default 1: steadier on a shared 2-core machine; ``run.torch_threads`` of the config).
Baseline (same process, same model object, same prompts, measured right after each step)
    Plain ``model.generate`` on each step's own rollout inputs (one prompt x num_generations: the rollout batch),
    same max_new_tokens and sampling (temperature, top_p, top_k), KV cache on, eval mode, no_grad; one warm-up
    call first, then ``--baseline-reps`` timed calls per step. It runs from the callback at each step's end, so
    load drift on a shared machine hits rollout and baseline alike; the trainer's RNG state, train mode and
    gradient-checkpointing state are restored afterwards and its time is left out of every step figure.
    Tokens/s = batch x generated positions / seconds for both (generation stops when every row has ended).
    Figure of merit: rollout tokens/s (the whole trl rollout phase) / plain tokens/s, target >= 0.9; also
    generate-only / plain, and the step time.
Diagnostics (the last step's prompt, interleaved with the plain baseline; max(reps, 2) rounds, 2b/8b: reps)
    Plain plus trl's suppress_tokens alone (the image token, one logits processor per decoded token); trl's own
    GenerationConfig (its logits processors) in eval mode; trl's config in train mode under no_grad
    (how trl calls generate: trl's rollout mode); LoRA adapters disabled (the cost of unmerged adapters); covip's
    rollout mode (trl's config, eval mode, LoRA merged by covip's LoraRolloutMerge); gradient checkpointing
    left on in train mode (what a rollout would cost if trl did not switch it off; only when max_new_tokens <= 64,
    as it may drop the KV cache). A forward pre-hook tells whether each generate call reused the KV cache.
Resources
    CUDA: torch.cuda.max_memory_allocated in training and in the baseline, nvidia-smi utilization and memory
    sampled every 0.25 s in a thread (mean inside and outside generation). CPU: peak RSS (VmHWM) and RSS and CPU %
    sampled with psutil.

Writes ``<out>/train_throughput.json`` and ``.png`` (stacked step-time split per step; rollout vs plain tok/s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish_run, machine_info, median  # noqa: E402

# The helper modules split out of this script (same folder, imported like _common). Every name that was defined
# here before the split stays importable from here (hence F401: some are only re-exported; the tests use them).
from _throughput_baseline import VARIANTS, Baseline  # noqa: E402, F401
from _throughput_hooks import (  # noqa: E402, F401
    SPLIT_KEYS,
    Recorder,
    completion_lengths,
    forward_summary,
    install_forward_hook,
    step_callback,
    step_splits,
    timed_trainer_class,
    wrap_generate,
)
from _throughput_monitor import Monitor, peak_rss_mb  # noqa: E402, F401
from _throughput_shapes import (  # noqa: E402, F401
    BUILT_SHAPES,
    DEEP_SHAPE,
    LARGE_SHAPES,
    LARGE_SYNTH,
    SHAPES,
    SMALL_SYNTH,
    describe_on_meta,
    large_loader,
    large_model_config,
    run_overrides,
)

BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""

perf = time.perf_counter
TARGET_RATIO = 0.9


# ----------------------------------------------------------------------------- the run


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


TRL_ROLLOUTS = {"gspo.rollout_eval_mode": False, "gspo.rollout_merge_lora": False, "gspo.rollout_compile": False}
"""The covip settings under which rollouts run as trl runs them (train mode, LoRA unmerged, no compile)."""


def measure_trl_rollouts(args: argparse.Namespace, cuda: bool, work: Path) -> dict[str, Any]:
    """Medians of the step split with trl's own rollouts (``TRL_ROLLOUTS`` over the run's config), no baseline:
    the comparison run of ``--compare-trl``."""
    import unittest.mock as mock

    import trl

    import covip.training.gspo as gspo_mod
    from covip.training.gspo_config import load_config

    base, overrides = run_overrides(args.shape, args.steps, args.max_new_tokens, work / "run-trl", cuda, args.set)
    overrides.update(TRL_ROLLOUTS)
    if not cuda:
        overrides["run.torch_threads"] = args.threads
    rec = Recorder(cuda)
    patches = [mock.patch.object(trl, "GRPOTrainer", timed_trainer_class(trl.GRPOTrainer, rec))]
    if args.shape in BUILT_SHAPES:
        patches.append(mock.patch.object(gspo_mod, "load_policy", large_loader(args.shape, "cuda" if cuda else "cpu")))
    print(f"GSPO {args.shape} with trl's own rollouts (train mode, LoRA unmerged), for comparison", flush=True)
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        gspo_mod.train_gspo(load_config(base, overrides), callbacks=[step_callback(rec, None)])
    steps = step_splits(rec)
    measured = steps[1:] if len(steps) >= 2 else steps
    keys = ("step_s", "rollout_s", "generate_s", "rollout_overhead_s", "forward_s", "backward_s", "rollout_tok_s",
            "generate_tok_s")
    return {"overrides": TRL_ROLLOUTS, "medians": {k: median(r[k] for r in measured) for k in keys},
            "steps": steps, "kv_cache_used": [r["rollout_kv_cache_used"] for r in steps]}


def measure(args: argparse.Namespace, cuda: bool, work: Path) -> dict[str, Any]:
    import unittest.mock as mock

    import torch
    import trl

    import covip.training.gspo as gspo_mod
    from covip.training.gspo_config import load_config

    base, overrides = run_overrides(args.shape, args.steps, args.max_new_tokens, work / "run", cuda, args.set)
    if not cuda:
        overrides["run.torch_threads"] = args.threads
    config = load_config(base, overrides)
    rec = Recorder(cuda)
    baseline = Baseline(rec, args.baseline_reps, args.max_new_tokens, gc_variant=args.max_new_tokens <= 64,
                        diag_rounds=args.baseline_reps if args.shape in LARGE_SHAPES else max(args.baseline_reps, 2))
    marks = step_callback(rec, baseline)
    patches = [mock.patch.object(trl, "GRPOTrainer", timed_trainer_class(trl.GRPOTrainer, rec))]
    shape_info: dict[str, Any] = {"name": args.shape}
    if args.shape in BUILT_SHAPES:
        spec = BUILT_SHAPES[args.shape]
        shape_info.update(hub=spec["hub"], text_config=spec["text"], vision_config=spec["vision"],
                          tie_word_embeddings=spec["tie_word_embeddings"], **describe_on_meta(args.shape))
        patches.append(mock.patch.object(gspo_mod, "load_policy", large_loader(args.shape, "cuda" if cuda else "cpu")))
    print(f"GSPO {args.shape}: {args.steps} steps, {config.gspo.num_generations} x {args.max_new_tokens} tokens per "
          f"group, {'CUDA' if cuda else f'CPU ({args.threads} torch threads)'}", flush=True)
    t0 = perf()
    with Monitor(cuda) as mon, contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        result = gspo_mod.train_gspo(config, callbacks=[marks])
    wall = perf() - t0
    if rec.trainer is None:
        raise RuntimeError("train_gspo did not build trl.GRPOTrainer through the module attribute this benchmark "
                           "wraps; the timings would be empty")
    if not rec.captured:
        raise RuntimeError("no rollout went through the policy's generate (vLLM rollouts?); nothing to compare")
    baseline_s = sum(t1 - t0 for n, t0, t1 in rec.spans if n == "baseline")
    print(f"  {result.global_step} steps in {wall - baseline_s:.1f} s (+ {baseline_s:.1f} s of baseline)", flush=True)
    base_res = baseline.summary()
    steps = step_splits(rec)
    by_step = {b["step"]: b for b in base_res["per_step"]}
    for row in steps:
        b = by_step.get(row["step"], {})
        row["plain_generate_tok_s"] = b.get("tok_s")
        row["ratio_rollout_vs_plain"] = ratio(row["rollout_tok_s"], b.get("tok_s"))
        row["ratio_generate_vs_plain"] = ratio(row["generate_tok_s"], b.get("tok_s"))
    measured = steps[1:] if len(steps) >= 2 else steps
    keys = [k for k, _ in SPLIT_KEYS] + ["step_s", "between_steps_s", "rollout_s", "prepare_s", "training_step_s",
                                         "optimizer_step_s", "rollout_tokens", "completion_tokens", "rollout_tok_s",
                                         "generate_tok_s", "plain_generate_tok_s", "loss_positions",
                                         "loss_completion_tokens"]
    med = {k: median(r[k] for r in measured) for k in keys}
    med["ratio_rollout_vs_plain"] = ratio(med["rollout_tok_s"], med["plain_generate_tok_s"])
    med["ratio_generate_vs_plain"] = ratio(med["generate_tok_s"], med["plain_generate_tok_s"])

    gen_spans = [(g["t0"], g["t0"] + g["s"]) for g in rec.generations]
    step_spans = [(b, e) for b, e in zip([t for n, t in rec.events if n == "step_begin"],
                                         [t for n, t in rec.events if n == "step_end"])]
    non_gen = [s for s in mon.proc_samples if any(a <= s[0] < b for a, b in step_spans)]
    resources: dict[str, Any] = {
        "peak_rss_mb": peak_rss_mb(), "sampled_max_rss_mb": max((s[1] for s in mon.proc_samples), default=None),
        "process_cpu_pct_in_generate": Monitor.mean_in(mon.proc_samples, 2, gen_spans),
        "process_cpu_pct_in_steps_outside_generate": Monitor.mean_in(non_gen, 2, gen_spans, inside=False),
        "torch_threads": args.threads if not cuda else torch.get_num_threads()}
    if cuda:
        gpu_in_steps = [s for s in mon.gpu_samples if any(a <= s[0] < b for a, b in step_spans)]
        resources.update({
            "device_name": torch.cuda.get_device_name(), "peak_cuda_allocated_train_gb": baseline.peak_train / 1e9,
            "peak_cuda_allocated_baseline_gb": baseline.peak_baseline / 1e9,
            "gpu_util_pct_in_steps": Monitor.mean_in(gpu_in_steps, 1, step_spans),
            "gpu_util_pct_in_generate": Monitor.mean_in(mon.gpu_samples, 1, gen_spans),
            "gpu_util_pct_in_steps_outside_generate": Monitor.mean_in(gpu_in_steps, 1, gen_spans, inside=False),
            "gpu_memory_used_max_mb": max((s[2] for s in mon.gpu_samples), default=None),
            "gpu_samples": len(mon.gpu_samples), "nvidia_smi_error": mon.smi_error})
    shape_info["trainable_parameters"] = result.trainable_parameters
    model = rec.trainer.accelerator.unwrap_model(rec.trainer.model_wrapped)
    shape_info.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    try:  # trl >= 1.x: its fused LM head scores only completion tokens where Triton runs, every position elsewhere
        from trl.kernels.chunked_logprob import _use_triton

        compact: bool | None = bool(_use_triton(torch.device("cuda" if cuda else "cpu")))
    except (ImportError, AttributeError):
        compact = None
    g = config.gspo
    return {"shape": shape_info, "trl_lm_head_scores_completion_only": compact,
            "config": {"base": base, "overrides": dict(overrides, **{"run.output_dir": "<temporary folder>/run"}),
                       "gspo": {k: getattr(g, k) for k in ("num_generations", "per_device_train_batch_size",
                                                           "gradient_accumulation_steps", "max_completion_length",
                                                           "temperature", "top_p", "top_k", "max_steps",
                                                           "rollout_eval_mode", "rollout_merge_lora",
                                                           "rollout_compile", "use_vllm")},
                       "model": {"dtype": config.model.dtype, "gradient_checkpointing":
                                 config.model.gradient_checkpointing, "max_pixels": config.model.max_pixels},
                       "lora": {"r": config.lora.r, "alpha": config.lora.alpha, "dropout": config.lora.dropout}},
            "steps": steps, "medians": med, "medians_over_steps": [r["step"] for r in measured],
            "generations": [{k: v for k, v in gen.items() if k != "t0"} for gen in rec.generations],
            "baseline": base_res, "resources": resources,
            "timing": {"train_gspo_wall_s": wall, "of_which_baseline_s": baseline_s,
                       "train_gspo_runtime_s": result.runtime_s}}


def _settings_note(res: dict[str, Any]) -> str:
    g = res["config"]["gspo"]
    keys = ("rollout_eval_mode", "rollout_merge_lora", "rollout_compile")
    on = [k.removeprefix("rollout_") for k in keys if g.get(k)]
    return f"covip: {', '.join(on) or 'none'}; trl: train mode, LoRA unmerged"


def findings(res: dict[str, Any]) -> list[str]:
    """Plain-language notes computed from the measured numbers."""
    med, diag = res["medians"], res["baseline"]["diagnostics"]
    plain = diag.get("plain", {}).get("tok_s")
    notes = []
    r, rg = med.get("ratio_rollout_vs_plain"), med.get("ratio_generate_vs_plain")
    if r is not None:
        notes.append(f"Rollout phase {med['rollout_tok_s']:.1f} tok/s vs plain generate "
                     f"{med['plain_generate_tok_s']:.1f} tok/s: {r:.2f}x (target >= {TARGET_RATIO}); generation "
                     f"proper alone {rg:.2f}x. Rollout overhead outside generate (chat template, image processing, "
                     f"decoding) is {med['rollout_overhead_s']:.3f} s per step of {med['rollout_s']:.3f} s.")
    kv = [s["rollout_kv_cache_used"] for s in res["steps"]]
    notes.append("Rollouts used the KV cache (every forward after the prompt saw 1 new token): "
                 + ("yes, every step" if all(kv) else f"no (per step: {kv})") + ".")
    labels = {"plain_suppress_tokens": "plain + trl's suppress_tokens (the image token) alone, eval",
              "trl_generation_config": "trl's GenerationConfig (its logits processors, e.g. suppress_tokens), eval",
              "trl_train_no_grad": "trl's config in train mode under no_grad (as trl calls generate)",
              "adapters_off": "LoRA adapters disabled (what a merged model / vLLM would not pay)",
              "covip_rollout": "covip's rollout mode (trl's config, eval, LoRA merged: LoraRolloutMerge)",
              "gradient_checkpointing_on": "gradient checkpointing left on, train mode"}
    for v, label in labels.items():
        d = diag.get(v)
        if d and d.get("tok_s") and plain:
            notes.append(f"{label}: {d['tok_s']:.1f} tok/s = {d['tok_s'] / plain:.2f}x plain"
                         + ("" if d.get("kv_cache_used") else f" (KV cache NOT used: later forwards up to "
                            f"{d.get('later_max_input_len')} tokens)") + ".")
    lp, lc = med.get("loss_positions"), med.get("loss_completion_tokens")
    if lp and lc and res.get("trl_lm_head_scores_completion_only") is False:
        fb = (med.get("forward_s") or 0) + (med.get("backward_s") or 0)
        notes.append(f"Forward + backward ({fb:.2f} s per step) run over {lp:.0f} positions (prompt + completion) for "
                     f"{lc:.0f} completion tokens; trl's chunked log-prob LM head projects only the completion tokens "
                     "onto the vocabulary where Triton runs (CUDA/XPU) but every position here "
                     f"(trl.kernels.chunked_logprob._use_triton is False): {lp / lc:.0f}x the LM-head work.")
    trl_d, covip_d = diag.get("trl_train_no_grad", {}).get("tok_s"), diag.get("covip_rollout", {}).get("tok_s")
    if trl_d and covip_d:
        notes.append(f"Same prompt, interleaved in one process: covip's rollout mode {covip_d:.1f} tok/s vs trl's "
                     f"(train mode, LoRA unmerged) {trl_d:.1f} tok/s: {covip_d / trl_d:.2f}x.")
    trl_res = res.get("trl_rollouts")
    if trl_res:
        tm = trl_res["medians"]
        ours = _settings_note(res).split(";")[0].removeprefix("covip: ")
        notes.append(f"trl's own rollouts (gspo.rollout_eval_mode/rollout_merge_lora/rollout_compile off) in a second "
                     f"run: {tm['rollout_tok_s']:.1f} tok/s, step {tm['step_s']:.2f} s; covip's settings "
                     f"({ours}): {med['rollout_tok_s']:.1f} tok/s, "
                     f"step {med['step_s']:.2f} s ({med['rollout_tok_s'] / tm['rollout_tok_s']:.2f}x the rollout "
                     "speed).")
    steps = med.get("step_s")
    if steps:
        parts = sorted(((med.get(k) or 0.0, label) for k, label in SPLIT_KEYS), reverse=True)[:3]
        notes.append("Largest parts of a step (median " + f"{steps:.2f} s): "
                     + ", ".join(f"{label} {v:.2f} s ({100 * v / steps:.0f}%)" for v, label in parts) + ".")
    return notes


# ----------------------------------------------------------------------------- output


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = results["steps"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"step {r['step']}" for r in steps] + ["median\n(steps 2+)" if len(steps) > 1 else "median"]
    rows = steps + [results["medians"]]
    bottom = [0.0] * len(rows)
    colors = plt.cm.tab10.colors
    for i, (key, name) in enumerate(SPLIT_KEYS):
        vals = [max(r.get(key) or 0.0, 0.0) for r in rows]
        ax1.bar(labels, vals, bottom=bottom, label=name, color=colors[i % len(colors)])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_ylabel("seconds per optimizer step")
    ax1.set_title(f"GSPO step time split ({results['shape']['name']}, {results['meta'].get('device')})")
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    ax1.grid(axis="y", alpha=0.3)
    med, diag = results["medians"], results["baseline"]["diagnostics"]
    bars = [("rollout phase (trl)", med.get("rollout_tok_s"), "#3070b0"),
            ("rollout generate only (trl)", med.get("generate_tok_s"), "#5090d0"),
            ("plain generate (baseline)", med.get("plain_generate_tok_s"), "#808080")]
    short = {"plain": "diag: plain, last prompt", "plain_suppress_tokens": "diag: plain + suppress_tokens",
             "trl_generation_config": "diag: trl config, eval", "trl_train_no_grad": "diag: trl config, train",
             "adapters_off": "diag: plain, LoRA off", "covip_rollout": "diag: covip rollout (eval, merged)",
             "gradient_checkpointing_on": "diag: grad. checkpointing on"}
    bars += [(short[v], d.get("tok_s"), "#c8c8c8") for v, d in diag.items() if v in short]
    ax2.barh([b[0] for b in bars], [b[1] or 0 for b in bars], color=[b[2] for b in bars])
    ax2.invert_yaxis()
    ax2.tick_params(axis="y", labelsize=8)
    r = med.get("ratio_rollout_vs_plain")
    ax2.set_title(f"generated tokens/s (rollout / plain = {r:.2f}x)" if r else "generated tokens/s")
    ax2.set_xlabel(f"tokens/s (batch {results['config']['gspo']['num_generations']}, medians)")
    ax2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    cols = [("step", "{:>4}"), ("step_s", "{:>7.2f}"), ("rollout_s", "{:>9.2f}"), ("generate_s", "{:>10.2f}"),
            ("reward_s", "{:>8.3f}"), ("forward_s", "{:>9.2f}"), ("backward_s", "{:>10.2f}"),
            ("optimizer_s", "{:>11.3f}"), ("rollout_tokens", "{:>14}"), ("rollout_tok_s", "{:>13.1f}"),
            ("plain_generate_tok_s", "{:>20.1f}"), ("ratio_rollout_vs_plain", "{:>22.2f}")]
    print("\n" + " ".join(f"{c:>{max(len(c), 4)}}" for c, _ in cols))
    for row in results["steps"] + [dict(results["medians"], step="med")]:
        cells = []
        for c, fmt in cols:
            v = row.get(c)
            width = max(len(c), 4)
            cells.append(f"{'-':>{width}}" if v is None else (f"{v:>{width}}" if isinstance(v, str) else
                                                               f"{fmt.format(v).strip():>{width}}"))
        print(" ".join(cells))
    print()
    for note in results["notes"]:
        print(f"- {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=SHAPES, default="deep",
                        help="model shape (default deep: 36 layers, where the rollout cost of LoRA shows as on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default 6; deep 4; --quick 2; 2b/8b 3)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="rollout length = gspo.max_completion_length (default 64; --quick 16; 2b/8b 512)")
    parser.add_argument("--baseline-reps", type=int, default=None,
                        help="timed plain-generate calls per step (default 3; --quick and 2b/8b 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads on the CPU (default 1)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is available")
    parser.add_argument("--allow-cpu-large", action="store_true", help="run the 2b/8b shapes on the CPU anyway")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted covip config override applied after the shape's (repeatable), e.g. "
                             "model.gradient_checkpointing=true, lora.dropout=0.05, gspo.top_k=20")
    parser.add_argument("--compare-trl", action=argparse.BooleanOptionalAction, default=None,
                        help="a second run with trl's own rollouts (train mode, LoRA unmerged) for comparison "
                             "(default: on for tiny/mini/deep, off for the 2b/8b shapes)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--quick", action="store_true", help="2 short steps (16 tokens; a minute or two)")
    args = parser.parse_args(argv)
    large = args.shape in LARGE_SHAPES
    args.steps = args.steps or (2 if args.quick else 3 if large else 4 if args.shape == "deep" else 6)
    args.max_new_tokens = args.max_new_tokens or (16 if args.quick else 512 if large else 64)
    args.baseline_reps = args.baseline_reps or (1 if args.quick or large else 3)
    args.compare_trl = (not large) if args.compare_trl is None else args.compare_trl
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda:
        torch.set_num_threads(args.threads)
    if large and not cuda and not args.allow_cpu_large:
        info = describe_on_meta(args.shape)
        print(f"refusing --shape {args.shape} on the CPU: {info['parameters'] / 1e9:.2f} B parameters "
              f"({info['bf16_weights_gb']} GB of bf16 weights, float32 on the CPU doubles it), "
              f"{args.max_new_tokens}-token rollouts; this shape is meant for a GPU. Pass --allow-cpu-large to run "
              "it here anyway, or use --shape tiny|mini.", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / "train_throughput.json", args.out / "train_throughput.png"
    start = perf()
    meta = machine_info(["covip", "torch", "transformers", "trl", "peft", "accelerate", "datasets"],
                        args={"quick": args.quick, "shape": args.shape, "steps": args.steps,
                              "max_new_tokens": args.max_new_tokens, "baseline_reps": args.baseline_reps,
                              "cpu": args.cpu, "threads": args.threads, "set": args.set,
                              "compare_trl": args.compare_trl}, mode="quick" if args.quick else "full",
                        device=torch.cuda.get_device_name() if cuda else "cpu")
    work = Path(tempfile.mkdtemp(prefix="covip-train-throughput-"))
    try:
        res = measure(args, cuda, work)
        trl_res = measure_trl_rollouts(args, cuda, work) if args.compare_trl else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = res["medians"]
    results: dict[str, Any] = {"meta": meta, **res}
    if trl_res is not None:
        results["trl_rollouts"] = trl_res
    results["ratios"] = {"rollout_vs_plain_generate": med["ratio_rollout_vs_plain"],
                         "rollout_generate_only_vs_plain_generate": med["ratio_generate_vs_plain"]}
    results["targets"] = {f"rollout_ge_{TARGET_RATIO}x_plain_generate": {
        "met": None if med["ratio_rollout_vs_plain"] is None else med["ratio_rollout_vs_plain"] >= TARGET_RATIO,
        "ratio": med["ratio_rollout_vs_plain"], "target": TARGET_RATIO}}
    results["headline"] = [
        {"figure": "rollout tok/s (trl rollout phase)", "value": med["rollout_tok_s"],
         "baseline": "plain model.generate tok/s", "baseline_value": med["plain_generate_tok_s"],
         "ratio": med["ratio_rollout_vs_plain"], "note": f"target >= {TARGET_RATIO}x; shape {args.shape}, "
                                                        f"batch {res['config']['gspo']['num_generations']}"},
        {"figure": "rollout generate-only tok/s", "value": med["generate_tok_s"],
         "baseline": "plain model.generate tok/s", "baseline_value": med["plain_generate_tok_s"],
         "ratio": med["ratio_generate_vs_plain"], "note": "model.generate inside trl"},
        {"figure": "GSPO step s (median)", "value": med["step_s"], "baseline": "rollout phase s",
         "baseline_value": med["rollout_s"], "ratio": ratio(med["rollout_s"], med["step_s"]),
         "note": "ratio: share of the step spent in rollouts"}]
    diag = res["baseline"]["diagnostics"]
    trl_d, covip_d = diag.get("trl_train_no_grad", {}).get("tok_s"), diag.get("covip_rollout", {}).get("tok_s")
    if trl_d and covip_d:
        results["headline"].append(
            {"figure": "covip's rollout mode tok/s (eval, LoRA merged)", "value": covip_d,
             "baseline": "trl's rollout mode tok/s (train, LoRA unmerged)", "baseline_value": trl_d,
             "ratio": ratio(covip_d, trl_d), "note": "same prompt and process, interleaved"})
    if trl_res is not None:
        tm = trl_res["medians"]
        results["headline"] += [
            {"figure": "rollout tok/s, covip's rollout settings", "value": med["rollout_tok_s"],
             "baseline": "rollout tok/s, trl's own rollouts", "baseline_value": tm["rollout_tok_s"],
             "ratio": ratio(med["rollout_tok_s"], tm["rollout_tok_s"]), "note": _settings_note(res)},
            {"figure": "GSPO step s, covip's rollout settings", "value": med["step_s"],
             "baseline": "GSPO step s, trl's own rollouts", "baseline_value": tm["step_s"],
             "ratio": ratio(med["step_s"], tm["step_s"]), "note": "same model, data and seed; lower is faster"}]
    results["notes"] = findings(results) + [
        f"Shape {args.shape}: random weights, so the text is meaningless; timings are real. Device: {meta['device']}."]
    return finish_run(results, meta, start, json_path, png_path, plot=plot, print_table=print_table)


if __name__ == "__main__":
    sys.exit(main())
