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
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish_run, machine_info, median  # noqa: E402

BENCH_OPTIONS = ("--quick", "--out")
"""The options `covip bench` passes (read from here by covip.sdk.bench.script_options)."""

perf = time.perf_counter
TARGET_RATIO = 0.9
SHAPES = ("tiny", "mini", "deep", "qwen3vl-2b", "qwen3vl-8b")

_MROPE = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20], "mrope_interleaved": True}
LARGE_SHAPES: dict[str, dict[str, Any]] = {
    # the published Qwen/Qwen3-VL-2B-Instruct and -8B-Instruct configs; vocabulary: SmolLM2's (from the tiny preset)
    "qwen3vl-2b": {
        "hub": "Qwen/Qwen3-VL-2B-Instruct", "config": "qwen3vl-2b", "tie_word_embeddings": True,
        "text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rope_parameters=_MROPE),
        "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                       num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])},
    "qwen3vl-8b": {
        "hub": "Qwen/Qwen3-VL-8B-Instruct", "config": "qwen3vl-8b-paper", "tie_word_embeddings": False,
        "text": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rope_parameters=_MROPE),
        "vision": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])},
}
DEEP_SHAPE: dict[str, Any] = {
    # the tiny preset's widths with Qwen3-VL-8B's 36 decoder layers and the paper's LoRA (r64, dropout 0.05, on the
    # 7 x 36 decoder projections: 252 peft layers): per-module dispatch dominates a decode step, as on a GPU
    "hub": None, "config": "tiny-cpu", "tie_word_embeddings": False, "text": {"num_hidden_layers": 36}, "vision": {},
    "overrides": {"lora.r": 64, "lora.alpha": 128, "lora.dropout": 0.05}}
BUILT_SHAPES: dict[str, dict[str, Any]] = {**LARGE_SHAPES, "deep": DEEP_SHAPE}
"""Shapes this benchmark builds itself (random weights, no files) and hands to train_gspo in place of load_policy."""
SMALL_SYNTH = {"n_concepts": 12, "n_train": 16, "n_test": 4, "context_size": 2, "max_present": 1, "image_size": 64,
               "similarity": "attributes", "seed": 0}
LARGE_SYNTH = {"n_concepts": 20, "n_train": 24, "n_test": 4, "context_size": 4, "max_present": 2, "image_size": 448,
               "similarity": "attributes", "seed": 0}


# ----------------------------------------------------------------------------- configuration


def run_overrides(shape: str, steps: int, max_new_tokens: int, out_dir: Path, cuda: bool,
                  extra: list[str] | None = None) -> tuple[str, dict]:
    """(bundled config name, dotted overrides) of the benchmark run for ``shape``; ``extra`` (``--set KEY=VALUE``
    strings, e.g. ``model.gradient_checkpointing=true``) is applied last."""
    small = shape in ("tiny", "mini", "deep")
    base = "tiny-cpu" if small else LARGE_SHAPES[shape]["config"]
    o: dict[str, Any] = {
        "gspo.max_steps": steps, "gspo.num_train_epochs": 1, "gspo.max_completion_length": max_new_tokens,
        "data.train": None, "data.synthesize_if_missing": True,
        "data.synth": dict(SMALL_SYNTH if small else LARGE_SYNTH, n_train=max(16, 2 * steps)),
        "judge.spec": "lexical", "judge.options": {},
        "run.output_dir": str(out_dir), "run.save_steps": 0, "run.save_adapter": False, "run.merge": False,
        "run.tensorboard": False, "run.progress": False, "run.logging_steps": 1,
    }
    if shape == "mini":
        o.update({"model.name_or_path": "mini-qwen3-vl", "lora.r": 16, "lora.alpha": 32})
    elif shape == "tiny":
        o["model.name_or_path"] = "tiny-qwen3-vl"
    elif shape == "deep":
        o.update({"model.name_or_path": "random-weight tiny-qwen3-vl widths, 36 layers (built by this benchmark)",
                  **DEEP_SHAPE["overrides"]})
    else:
        o["model.name_or_path"] = f"random-weight {LARGE_SHAPES[shape]['hub']} shape (built by this benchmark)"
    if shape == "qwen3vl-8b":
        o.update({"gspo.gradient_accumulation_steps": 4, "model.max_pixels": 448 * 448})  # one GPU, 448 px photos
    if shape in ("qwen3vl-8b", "deep"):  # trl 1.x refuses a LoRA adapter on lm_head (it scores with lm_head.weight)
        from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX

        o["lora.target_regex"] = DEFAULT_LORA_TARGET_REGEX
    if cuda:
        o.update({"run.use_cpu": False, "run.bf16": True, "model.dtype": "bfloat16"})
    else:
        o.update({"run.use_cpu": True, "run.bf16": False, "model.dtype": "float32"})
    if extra:
        from covip.sdk.support import parse_overrides

        o.update(parse_overrides(extra))
    return base, o


def large_model_config(shape: str) -> Any:
    """The transformers config of a 2B/8B shape: the real text/vision sizes on the tiny preset's token ids."""
    import transformers as tf

    from covip.sdk.models import build_tiny_vlm

    spec = BUILT_SHAPES[shape]
    cfg = json.loads((build_tiny_vlm("tiny-qwen3-vl") / "config.json").read_text())
    for key in ("architectures", "transformers_version", "dtype", "torch_dtype"):
        cfg.pop(key, None)
    cfg["text_config"].pop("layer_types", None)  # one per layer: rebuilt for the shape's layer count
    cfg["text_config"].update(copy.deepcopy(spec["text"]))
    cfg["vision_config"].update(copy.deepcopy(spec["vision"]))
    cfg["tie_word_embeddings"] = spec["tie_word_embeddings"]
    cfg["text_config"]["tie_word_embeddings"] = spec["tie_word_embeddings"]
    return tf.AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def describe_on_meta(shape: str) -> dict[str, Any]:
    """Parameter count and bf16 weight bytes of a 2B/8B shape, built on the meta device (no memory used)."""
    import torch
    import transformers as tf

    with torch.device("meta"):
        model = tf.AutoModelForImageTextToText.from_config(large_model_config(shape), dtype=torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for name, p in model.named_parameters() if ".visual." in f".{name}")
    return {"parameters": n, "vision_parameters": vision, "bf16_weights_gb": round(2 * n / 1e9, 2),
            "vocab_size": model.config.text_config.vocab_size}


def large_loader(shape: str, device: str) -> Any:
    """A stand-in for ``covip.training.gspo.load_policy``: the random-weight shape, built on ``device``."""

    def load_policy(config: Any) -> tuple[Any, Any, None]:
        import torch
        import transformers as tf

        from covip.sdk.models import build_tiny_vlm
        from covip.sdk.support import set_pixels

        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                 "auto": torch.bfloat16 if config.run.bf16 else torch.float32}[config.model.dtype]
        kwargs = {"dtype": dtype}
        if config.model.attn_implementation:
            kwargs["attn_implementation"] = config.model.attn_implementation
        t0 = perf()
        with torch.device(device):
            torch.manual_seed(0)
            model = tf.AutoModelForImageTextToText.from_config(large_model_config(shape), **kwargs)
        processor = tf.AutoProcessor.from_pretrained(str(build_tiny_vlm("tiny-qwen3-vl")))
        set_pixels(processor.image_processor, config.model.min_pixels, config.model.max_pixels)
        print(f"  built {shape} on {device} in {perf() - t0:.1f} s", flush=True)
        return model, processor, None

    return load_policy


# ----------------------------------------------------------------------------- timing hooks


class Recorder:
    """Marks and spans of one run (perf_counter seconds; on CUDA each mark synchronizes first)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.spans: list[tuple[str, float, float]] = []
        self.events: list[tuple[str, float]] = []
        self.generations: list[dict[str, Any]] = []
        self.captured: list[dict[str, Any]] = []
        self.fwd_log: list[tuple[int, int]] | None = None  # (input length, KV-cache length) while recording
        self.trainer: Any = None
        self.eos_ids: list[int] = []
        self.loss_batches: list[dict[str, Any]] = []  # what each loss forward saw (rows, prompt, completion)

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return perf()

    @contextlib.contextmanager
    def span(self, name: str):
        t0 = self.now()
        try:
            yield
        finally:
            self.spans.append((name, t0, self.now()))

    def event(self, name: str) -> None:
        self.events.append((name, self.now()))


def forward_summary(log: list[tuple[int, int]]) -> dict[str, Any]:
    """What the forwards of one generate call say about the KV cache."""
    if not log:
        return {"forwards": 0}
    later = log[1:]
    return {"forwards": len(log), "first_input_len": log[0][0],
            "later_max_input_len": max((n for n, _ in later), default=None),
            "cache_len_at_end": log[-1][1],
            "kv_cache_used": bool(later) and all(n == 1 for n, _ in later) and log[-1][1] != 0}


def install_forward_hook(model: Any, rec: Recorder) -> None:
    """Record (input length, cache length) of every forward of the policy while ``rec.fwd_log`` is a list."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_tt_hooked", False):
        return

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        if rec.fwd_log is None:
            return
        x = kwargs.get("input_ids")
        if x is None:
            x = kwargs.get("inputs_embeds")
        cache = kwargs.get("past_key_values")
        if cache is None:
            cache = kwargs.get("cache")  # transformers 5.2x names it so
        try:
            past = int(cache.get_seq_length()) if cache is not None else 0
        except (AttributeError, TypeError):
            past = -1
        rec.fwd_log.append((int(x.shape[1]) if x is not None else -1, past))

    base.register_forward_pre_hook(hook, with_kwargs=True)
    base._tt_hooked = True


def completion_lengths(new_ids: Any, eos_ids: list[int]) -> list[int]:
    """Tokens of each row up to and including its first EOS (the whole row when it has none)."""
    out = []
    for row in new_ids.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        out.append(cut)
    return out


def wrap_generate(model: Any, rec: Recorder) -> None:
    """Time the policy's ``generate`` on the instance and keep a copy of each rollout's inputs."""
    if getattr(model, "_tt_original_generate", None) is not None:
        return
    original = model.generate

    def generate(*args: Any, **kwargs: Any) -> Any:
        rec.fwd_log = []
        t0 = rec.now()
        try:
            out = original(*args, **kwargs)
        finally:
            t1 = rec.now()
            fwd, rec.fwd_log = rec.fwd_log, None
        seq = out.sequences if hasattr(out, "sequences") else out
        ids = kwargs["input_ids"]
        new = int(seq.shape[1] - ids.shape[1])
        rows = int(seq.shape[0])
        rec.spans.append(("generate", t0, t1))
        rec.generations.append({
            "t0": t0, "s": t1 - t0, "batch": rows, "prompt_len": int(ids.shape[1]), "new_positions": new,
            "tokens": rows * new, "completion_tokens": sum(completion_lengths(seq[:, ids.shape[1]:], rec.eos_ids)),
            "model_training": bool(model.training), "distinct_prompts": len({tuple(r) for r in ids.tolist()}),
            **forward_summary(fwd)})
        rec.captured.append({k: v.detach().clone() if hasattr(v, "detach") else v for k, v in kwargs.items()
                             if k != "generation_config"})
        return out

    model._tt_original_generate = original
    model.generate = generate


def timed_trainer_class(base: type, rec: Recorder) -> type:
    """A subclass of trl's GRPOTrainer whose overrides time ``super()`` (nothing else changes)."""

    class TimedGRPOTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            rec.trainer = self
            rec.eos_ids = list(getattr(self, "eos_token_ids", None) or [])
            backward = self.accelerator.backward

            def timed_backward(*a: Any, **kw: Any) -> Any:
                with rec.span("backward"):
                    return backward(*a, **kw)

            self.accelerator.backward = timed_backward

        def training_step(self, *args: Any, **kwargs: Any) -> Any:
            with rec.span("training_step"):
                return super().training_step(*args, **kwargs)

        def _prepare_inputs(self, *args: Any, **kwargs: Any) -> Any:
            with rec.span("prepare"):
                return super()._prepare_inputs(*args, **kwargs)

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            with rec.span("rollout"):
                return super()._generate(*args, **kwargs)

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            policy = self.accelerator.unwrap_model(self.model_wrapped)
            install_forward_hook(policy, rec)
            wrap_generate(policy, rec)
            return super()._generate_single_turn(*args, **kwargs)

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            with rec.span("reward"):
                return super()._calculate_rewards(*args, **kwargs)

        def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = perf()
            with rec.span("forward"):
                out = super().compute_loss(model, inputs, *args, **kwargs)
            with contextlib.suppress(KeyError, AttributeError, TypeError, IndexError):
                rows, plen = inputs["prompt_ids"].shape
                clen = inputs["completion_ids"].shape[1]
                rec.loss_batches.append({"t": t0, "positions": int(rows * (plen + clen)),
                                         "completion_tokens": int(inputs["completion_mask"].sum())})
            return out

    return TimedGRPOTrainer


def step_callback(rec: Recorder, baseline: Baseline | None) -> Any:
    """A TrainerCallback marking train/step begin and end and the optimizer step; after each step's end mark it
    runs the baseline on that step's rollout inputs (timed as a "baseline" span, left out of the step times)."""
    from transformers import TrainerCallback

    class StepMarks(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if rec.cuda:
                import torch

                torch.cuda.reset_peak_memory_stats()
            rec.event("train_begin")

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.event("step_begin")

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.event("pre_optimizer")

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.event("post_optimizer")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.event("step_end")
            if baseline is not None:
                with rec.span("baseline"):
                    baseline.after_step(state.global_step,
                                        last=state.max_steps > 0 and state.global_step >= state.max_steps)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            rec.event("train_end")
            if rec.cuda and baseline is not None:
                import torch

                baseline.peak_train = max(baseline.peak_train, torch.cuda.max_memory_allocated())

    return StepMarks()


def step_splits(rec: Recorder) -> list[dict[str, Any]]:
    """One row per optimizer step from the marks and spans (seconds)."""
    marks: dict[str, list[float]] = {}
    for name, t in rec.events:
        marks.setdefault(name, []).append(t)
    begins, ends = marks.get("step_begin", []), marks.get("step_end", [])
    pre, post = marks.get("pre_optimizer", []), marks.get("post_optimizer", [])
    prev = (marks.get("train_begin") or begins[:1] or [0.0])[0]
    rows = []
    for k, (b, e) in enumerate(zip(begins, ends)):
        def total(name: str, b: float = b, e: float = e) -> float:
            return sum(t1 - t0 for n, t0, t1 in rec.spans if n == name and b <= t0 < e)

        steps_in = [s for s in rec.spans if s[0] == "training_step" and b <= s[1] < e]
        last = max((s[2] for s in steps_in), default=b)
        opt = next((q - p for p, q in zip(pre, post) if b <= p < e), None)
        gens = [g for g in rec.generations if b <= g["t0"] < e]
        row: dict[str, Any] = {
            "step": k + 1, "step_s": e - b,
            "between_steps_s": b - prev - sum(t1 - t0 for n, t0, t1 in rec.spans if n == "baseline" and prev <= t0 < b),
            "rollout_s": total("rollout"), "generate_s": total("generate"), "reward_s": total("reward"),
            "prepare_s": total("prepare"), "training_step_s": total("training_step"), "forward_s": total("forward"),
            "backward_s": total("backward"), "optimizer_s": e - last, "optimizer_step_s": opt,
            "rollout_tokens": sum(g["tokens"] for g in gens),
            "completion_tokens": sum(g["completion_tokens"] for g in gens),
            "generate_calls": len(gens), "prompt_len": [g["prompt_len"] for g in gens],
            "rollout_kv_cache_used": all(g.get("kv_cache_used") for g in gens) if gens else None,
            "loss_positions": sum(x["positions"] for x in rec.loss_batches if b <= x["t"] < e),
            "loss_completion_tokens": sum(x["completion_tokens"] for x in rec.loss_batches if b <= x["t"] < e),
            "rollout_model_training": [g["model_training"] for g in gens],
        }
        row["rollout_overhead_s"] = row["rollout_s"] - row["generate_s"]
        row["rollout_phase_other_s"] = row["prepare_s"] - row["rollout_s"] - row["reward_s"]
        row["train_other_s"] = row["training_step_s"] - row["prepare_s"] - row["forward_s"] - row["backward_s"]
        row["step_other_s"] = row["step_s"] - row["training_step_s"] - row["optimizer_s"]
        tok = row["rollout_tokens"]
        row["rollout_tok_s"] = tok / row["rollout_s"] if row["rollout_s"] > 0 and tok else None
        row["generate_tok_s"] = tok / row["generate_s"] if row["generate_s"] > 0 and tok else None
        rows.append(row)
        prev = e
    return rows


SPLIT_KEYS = (("generate_s", "rollout: generate"), ("rollout_overhead_s", "rollout: template, images, decode"),
              ("reward_s", "reward"), ("rollout_phase_other_s", "rollout phase: log-probs, advantages"),
              ("forward_s", "forward (loss)"), ("backward_s", "backward"), ("train_other_s", "training_step other"),
              ("optimizer_s", "optimizer (clip, step, zero_grad)"), ("step_other_s", "step other"))


# ----------------------------------------------------------------------------- resources


class Monitor:
    """RSS and CPU % (psutil) and, on CUDA, nvidia-smi utilization and memory, sampled in threads."""

    def __init__(self, cuda: bool, interval: float = 0.25) -> None:
        self.cuda, self.interval = cuda, interval
        self.proc_samples: list[tuple[float, float, float]] = []  # (t, rss MB, process CPU %)
        self.gpu_samples: list[tuple[float, float, float]] = []  # (t, utilization %, memory used MB)
        self.smi_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._smi: subprocess.Popen | None = None

    def __enter__(self) -> Monitor:
        self._threads.append(threading.Thread(target=self._poll_process, daemon=True))
        if self.cuda:
            self._start_smi()
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._smi.wait(5)
        for t in self._threads:
            t.join(5)

    def _poll_process(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        proc = psutil.Process()
        proc.cpu_percent(None)
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.proc_samples.append((perf(), proc.memory_info().rss / 2**20, proc.cpu_percent(None)))

    def _start_smi(self) -> None:
        exe = shutil.which("nvidia-smi")
        if exe is None:
            self.smi_error = "nvidia-smi not found"
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        cmd = [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
               "-lms", str(int(self.interval * 1000)), "-i", visible or "0"]
        try:
            self._smi = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.smi_error = str(exc)
            return

        def read() -> None:
            assert self._smi is not None and self._smi.stdout is not None
            for line in self._smi.stdout:
                parts = [p.strip() for p in line.split(",")]
                with contextlib.suppress(ValueError, IndexError):
                    self.gpu_samples.append((perf(), float(parts[0]), float(parts[1])))

        self._threads.append(threading.Thread(target=read, daemon=True))

    @staticmethod
    def mean_in(samples: list[tuple[float, float, float]], col: int, spans: list[tuple[float, float]],
                inside: bool = True) -> float | None:
        vals = [s[col] for s in samples if any(a <= s[0] < b for a, b in spans) == inside]
        return sum(vals) / len(vals) if vals else None


def peak_rss_mb() -> float | None:
    try:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- baseline


VARIANTS = ("plain", "plain_suppress_tokens", "trl_generation_config", "trl_train_no_grad", "adapters_off",
            "covip_rollout", "gradient_checkpointing_on")


class Baseline:
    """Plain ``generate`` on each step's rollout inputs, run from the callback right after that step (so load
    drift on a shared machine hits rollout and baseline alike), and the diagnostic variants after the last step.
    The trainer's RNG, train mode and gradient-checkpointing state are restored afterwards."""

    def __init__(self, rec: Recorder, reps: int, max_new_tokens: int, gc_variant: bool, diag_rounds: int) -> None:
        self.rec, self.reps, self.max_new_tokens, self.gc_variant = rec, reps, max_new_tokens, gc_variant
        self.diag_rounds = diag_rounds
        self.per_step: list[dict[str, Any]] = []
        self.diag: dict[str, list[dict[str, Any]]] = {}
        self.peak_train = self.peak_baseline = 0
        self._next = 0
        self._warm = False
        self.plain_cfg: Any = None
        self.suppress_cfg: Any = None
        self._lora_merge: Any = None

    def _setup(self) -> None:
        from transformers import GenerationConfig

        trl_cfg = self.rec.trainer.generation_config
        self.plain_cfg = GenerationConfig(
            do_sample=True, temperature=trl_cfg.temperature, top_p=trl_cfg.top_p, top_k=trl_cfg.top_k,
            max_new_tokens=self.max_new_tokens, use_cache=True, pad_token_id=trl_cfg.pad_token_id,
            eos_token_id=trl_cfg.eos_token_id, bos_token_id=trl_cfg.bos_token_id)
        self.suppress_cfg = copy.deepcopy(self.plain_cfg)
        self.suppress_cfg.suppress_tokens = trl_cfg.suppress_tokens

    def _one(self, model: Any, inputs: dict, variant: str) -> dict[str, Any]:
        import warnings

        import torch

        trainer, rec = self.rec.trainer, self.rec
        cfg = {"plain": self.plain_cfg, "adapters_off": self.plain_cfg,
               "plain_suppress_tokens": self.suppress_cfg}.get(variant, trainer.generation_config)
        train_mode = variant in ("trl_train_no_grad", "gradient_checkpointing_on")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            gc_was = bool(getattr(model, "is_gradient_checkpointing", False))
            gc_want = {"trl_train_no_grad": False, "gradient_checkpointing_on": True}.get(variant, gc_was)
            gc_kwargs = trainer.args.gradient_checkpointing_kwargs or {"use_reentrant": False}
            if gc_want != gc_was:
                (model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs) if gc_want
                 else model.gradient_checkpointing_disable())
            adapters = (model.disable_adapter() if variant == "adapters_off" else
                        self._merge(model).merged() if variant == "covip_rollout" else contextlib.nullcontext())
            model.train(train_mode)
            try:
                with torch.no_grad(), adapters:
                    rec.fwd_log = []
                    t0 = rec.now()
                    out = model._tt_original_generate(**inputs, generation_config=cfg)
                    s = rec.now() - t0
            finally:
                fwd, rec.fwd_log = rec.fwd_log, None
                if gc_want != gc_was:
                    (model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs) if gc_was
                     else model.gradient_checkpointing_disable())
        seq = out.sequences if hasattr(out, "sequences") else out
        new = int(seq.shape[1] - inputs["input_ids"].shape[1])
        tokens = int(seq.shape[0]) * new
        return {"s": s, "tokens": tokens, "new_positions": new, "tok_s": tokens / s if s > 0 else None,
                **forward_summary(fwd or [])}

    def _merge(self, model: Any) -> Any:
        """covip's rollout merge of this model (the trainer's own where it has one)."""
        if self._lora_merge is None:
            from covip.training.gspo import LoraRolloutMerge

            self._lora_merge = getattr(self.rec.trainer, "covip_merge", None) or LoraRolloutMerge(model)
        return self._lora_merge

    def after_step(self, step: int, last: bool) -> None:
        import torch

        rec = self.rec
        if rec.trainer is None or self._next >= len(rec.captured):
            return
        if self.plain_cfg is None:
            self._setup()
        model = rec.trainer.accelerator.unwrap_model(rec.trainer.model_wrapped)
        was_training = model.training
        if rec.cuda:
            self.peak_train = max(self.peak_train, torch.cuda.max_memory_allocated())
            torch.cuda.reset_peak_memory_stats()
        devices = [torch.cuda.current_device()] if rec.cuda else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(1000 + self._next)
                if not self._warm:
                    self._one(model, rec.captured[self._next], "plain")  # warm-up, not counted
                    self._warm = True
                runs = []
                while self._next < len(rec.captured):  # this step's rollouts (one generate call per group batch)
                    runs += [self._one(model, rec.captured[self._next], "plain") for _ in range(self.reps)]
                    self._next += 1
                self.per_step.append({"step": step, "runs": runs, "tok_s": median(r["tok_s"] for r in runs),
                                      "kv_cache_used": all(r.get("kv_cache_used") for r in runs)})
                if last:
                    self._diagnostics(model)
        finally:
            model.train(was_training)
            if rec.cuda:
                self.peak_baseline = max(self.peak_baseline, torch.cuda.max_memory_allocated())
                torch.cuda.reset_peak_memory_stats()

    def _diagnostics(self, model: Any) -> None:
        suppress = self.rec.trainer.generation_config.suppress_tokens
        variants = [v for v in VARIANTS if (v not in ("adapters_off", "covip_rollout")
                                            or hasattr(model, "disable_adapter"))
                    and (v != "gradient_checkpointing_on" or self.gc_variant)
                    and (v != "plain_suppress_tokens" or suppress)]
        self.diag = {v: [] for v in variants}
        inputs = self.rec.captured[-1]
        for _ in range(self.diag_rounds):  # interleaved, so drift on a shared machine hits every variant alike
            for v in variants:
                self.diag[v].append(self._one(model, inputs, v))

    def summary(self) -> dict[str, Any]:
        trl_cfg = self.rec.trainer.generation_config
        return {"generation_config_plain": self.plain_cfg.to_diff_dict() if self.plain_cfg else None,
                "generation_config_trl": trl_cfg.to_diff_dict(), "per_step": self.per_step,
                "diagnostics_prompt": "the last step's rollout inputs",
                "diagnostics": {v: {"tok_s": median(r["tok_s"] for r in runs), "s": median(r["s"] for r in runs),
                                    "runs_tok_s": [r["tok_s"] for r in runs],
                                    "kv_cache_used": all(r.get("kv_cache_used") for r in runs),
                                    "forwards": runs[-1].get("forwards"),
                                    "later_max_input_len": runs[-1].get("later_max_input_len")}
                                for v, runs in self.diag.items()}}


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
