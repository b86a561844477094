"""train_throughput.py's timing hooks: the Recorder of marks and spans, the wrappers that time trl's GRPOTrainer
and the policy's generate without editing either, the step-mark callback, and the per-step split made from them.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _throughput_baseline import Baseline

perf = time.perf_counter


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
