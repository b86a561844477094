"""train_throughput.py's baseline: plain ``model.generate`` on each step's own rollout inputs, run right after
the step, and the diagnostic generate variants on the last step's prompt.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from _common import median
from _throughput_hooks import Recorder, forward_summary

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
