"""GSPO post-training of a personalized VLM on CoViP's verifiable rewards (trl ``GRPOTrainer``).

:func:`train_gspo` runs one training job described by a :class:`~covip.training.gspo_config.GspoConfig`
(a YAML file: ``load_config("qwen3vl-8b-paper")``):

1. data: the config's covip Sample JSONL (synthesized on the fly when ``data.synthesize_if_missing``) ->
   a ``datasets.Dataset`` whose prompts come from :mod:`covip.sdk.prompts` (:mod:`.gspo_data`);
2. model: ``AutoModelForImageTextToText`` + ``AutoProcessor``; the vision tower is frozen; LoRA (peft)
   on the language model's linear layers only. The target regex is checked before training: the matched
   module names are listed, and the run stops with an error when the regex matches nothing or anything
   under the vision tower (and, after wrapping, when any trainable parameter is not a LoRA parameter
   outside the vision tower). ``lora.enabled: false`` trains every non-vision weight instead;
3. reward: :class:`~covip.training.rewards.CoViPReward` (dispatch by sample type: r_vis, r_caps with the
   configured judge + degeneration / over-length penalty, yes/no) wrapped by
   :class:`~covip.training.gspo_logging.LoggedReward`;
4. trl: ``GRPOConfig(importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4, beta=0.0,
   loss_type="grpo", ...)`` = GSPO (see :mod:`.gspo_config` for when it differs from GRPO), run by a subclass of
   trl's ``GRPOTrainer`` (:func:`rollout_trainer_class`) whose transformers rollouts generate in eval mode with the
   LoRA merged into the base weights (restored exactly afterwards; ``gspo.rollout_*``: why, with the measurements,
   above :class:`LoraRolloutMerge`), or trl's vLLM rollouts (``gspo.use_vllm``, colocate or server; vllm must be
   installed, checked before anything is loaded: :func:`require_vllm`);
5. outputs under ``run.output_dir``: ``checkpoint-N/`` (every ``run.save_steps``; resume with
   ``run.resume_from_checkpoint``), ``adapter/`` (LoRA adapter + processor), ``merged/`` (base + LoRA
   merged with ``merge_and_unload``, plus the processor: what the export package takes),
   ``logs/metrics.jsonl``, ``logs/samples.jsonl``, ``logs/tensorboard/``, ``config.yaml``, ``result.json``.

Multi-GPU: ``accelerate launch --config_file training/accelerate/zero2.yaml -m covip.training.cli train gspo
--config qwen3vl-8b-paper`` (every process runs this function; only the main one writes the outputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError, MissingExtraError
from covip.sdk.support import require, set_pixels
from covip.training.data.schema import write_json
from covip.training.gspo_config import GspoConfig, load_config

__all__ = [
    "GspoResult",
    "train_gspo",
    "load_policy",
    "vision_prefixes",
    "is_vision_module",
    "lora_target_modules",
    "check_lora_targets",
    "make_judge_from_config",
    "grpo_args",
    "vllm_args",
    "require_vllm",
    "VllmMissingError",
    "rollout_trainer_class",
    "LoraRolloutMerge",
]

log = logging.getLogger(__name__)

PROVENANCE_FILE = "covip_gspo.json"


@dataclass
class GspoResult:
    """What :func:`train_gspo` produced (paths are None for outputs that were not written)."""

    output_dir: Path
    adapter_dir: Path | None
    merged_dir: Path | None
    metrics_path: Path
    samples_path: Path | None
    tensorboard_dir: Path | None
    config_path: Path
    global_step: int
    epoch: float | None
    runtime_s: float
    n_samples: int
    lora_modules: list[str] = field(default_factory=list)
    trainable_parameters: int = 0
    reward_history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (paths as strings)."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            out[key] = str(value) if isinstance(value, Path) else value
        out["lora_modules"] = len(self.lora_modules)
        return out


# ----------------------------------------------------------------------------- model


def is_vision_module(name: str, vision_names: Sequence[str]) -> bool:
    """True when a dotted module/parameter name lies in the vision tower (a component in ``vision_names``)."""
    return any(part in vision_names for part in name.split("."))


def vision_prefixes(model: Any, vision_names: Sequence[str]) -> list[str]:
    """The outermost modules of the vision tower(s) (e.g. ``['model.visual']``)."""
    found = [n for n, _ in model.named_modules() if n and n.split(".")[-1] in vision_names]
    return [n for n in found if not any(n != o and n.startswith(o + ".") for o in found)]


def lora_target_modules(model: Any, regex: str) -> list[str]:
    """Names of the modules peft would adapt for ``target_modules=regex`` (``re.fullmatch``, as peft does)."""
    pattern = re.compile(regex)
    return [n for n, _ in model.named_modules() if n and pattern.fullmatch(n)]


def check_lora_targets(model: Any, regex: str, vision_names: Sequence[str]) -> list[str]:
    """The matched module names; raise InputError if none, any is in the vision tower, or any is not Linear."""
    import torch

    matched = lora_target_modules(model, regex)
    if not matched:
        raise InputError(f"the LoRA target regex {regex!r} matches no module of this model; "
                         "check lora.target_regex against model.named_modules()")
    bad = [n for n in matched if is_vision_module(n, vision_names)]
    if bad:
        raise InputError(f"the LoRA target regex {regex!r} matches {len(bad)} vision-tower module(s), e.g. "
                         f"{bad[:3]}; LoRA must adapt the language model only (fix lora.target_regex)")
    modules = dict(model.named_modules())
    not_linear = [n for n in matched if not isinstance(modules[n], torch.nn.Linear)]
    if not_linear:
        raise InputError(f"the LoRA target regex {regex!r} matches non-Linear modules, e.g. {not_linear[:3]}")
    return matched


def _resolve_source(name: str) -> tuple[str, Path | None]:
    """(what from_pretrained gets, the local directory when there is one)."""
    from covip.sdk.models import build_tiny_vlm
    from covip.sdk.models.tiny import resolve_tiny_name

    path = Path(name).expanduser()
    if path.is_dir():
        return str(path), path
    if resolve_tiny_name(name) is not None:
        built = build_tiny_vlm(resolve_tiny_name(name))
        return str(built), built
    return name, None


def load_policy(config: GspoConfig) -> tuple[Any, Any, Path | None]:
    """(model, processor, local model dir or None) for ``config.model``, vision tower frozen."""
    torch = require("torch", feature="GSPO training", extra="train")
    tf = require("transformers", feature="GSPO training", extra="train")
    m = config.model
    source, local = _resolve_source(m.name_or_path)
    dtype = {"auto": torch.bfloat16 if config.run.bf16 else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": m.trust_remote_code}
    if m.attn_implementation:
        kwargs["attn_implementation"] = m.attn_implementation
    try:
        processor = tf.AutoProcessor.from_pretrained(source, trust_remote_code=m.trust_remote_code)
        model = tf.AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"cannot load the model {m.name_or_path!r} ({type(exc).__name__}: {str(exc)[:300]}); "
                         "give a hub id, a save_pretrained directory or 'tiny'") from exc
    if getattr(processor, "tokenizer", None) is None:
        raise InputError(f"the model {m.name_or_path!r} has no processor with a tokenizer (not a VLM?)")
    ip = getattr(processor, "image_processor", None)
    if ip is not None:
        set_pixels(ip, m.min_pixels, m.max_pixels)
    return model, processor, local


def _apply_finetuning(model: Any, config: GspoConfig) -> tuple[Any, list[str]]:
    """Freeze the vision tower; wrap with LoRA (checked) or leave every other weight trainable."""
    lo = config.lora
    names = tuple(lo.vision_module_names)
    towers = vision_prefixes(model, names)
    if not towers:
        raise InputError(f"found no vision tower in {type(model).__name__} (looked for modules named {list(names)}); "
                         "set lora.vision_module_names")
    log.info("vision tower(s): %s", ", ".join(towers))
    if not lo.enabled:
        for name, param in model.named_parameters():
            param.requires_grad_(not (lo.freeze_vision and is_vision_module(name, names)))
        return model, []
    from peft import LoraConfig, get_peft_model

    matched = check_lora_targets(model, lo.target_regex, names)
    log.info("LoRA targets %d modules (none in the vision tower), e.g. %s", len(matched), matched[:4])
    for param in model.parameters():
        param.requires_grad_(False)
    peft_config = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=lo.dropout, target_modules=lo.target_regex,
                             bias="none")
    model = get_peft_model(model, peft_config)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    wrong = [n for n in trainable if "lora_" not in n or is_vision_module(n, names)]
    if wrong or not trainable:
        raise InputError(f"after wrapping with LoRA, trainable parameters outside the language-model adapters: "
                         f"{wrong[:3] or 'none trainable at all'}")
    return model, matched


# ----------------------------------------------------------------------------- reward


def make_judge_from_config(config: GspoConfig) -> Any:
    """The judge of ``config.judge`` (sampling settings + options applied; 'lexical' takes none)."""
    from covip.training.judges import make_judge

    j = config.judge
    if j.spec.strip() in ("lexical", "lexical-loose"):
        if j.options:
            raise InputError(f"config key 'judge.options': the lexical judge takes no options, got {sorted(j.options)}")
        return make_judge(j.spec.strip())
    return make_judge(j.spec, temperature=j.temperature, top_p=j.top_p, top_k=j.top_k, **j.options)


# ----------------------------------------------------------------------------- trl arguments


def grpo_args(config: GspoConfig, output_dir: Path) -> Any:
    """The trl ``GRPOConfig`` of a run (GSPO settings from ``config.gspo``, runtime from ``config.run``)."""
    from trl import GRPOConfig

    g, r = config.gspo, config.run
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), seed=r.seed, bf16=r.bf16, fp16=False, use_cpu=r.use_cpu,
        learning_rate=g.learning_rate, lr_scheduler_type=g.lr_scheduler_type, warmup_steps=g.warmup_steps,
        weight_decay=g.weight_decay, max_grad_norm=g.max_grad_norm, num_train_epochs=g.num_train_epochs,
        max_steps=g.max_steps, per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps, steps_per_generation=g.steps_per_generation,
        num_iterations=g.num_iterations, num_generations=g.num_generations,
        max_completion_length=g.max_completion_length, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
        beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high,
        importance_sampling_level=g.importance_sampling_level, loss_type=g.loss_type,
        scale_rewards=g.scale_rewards, mask_truncated_completions=g.mask_truncated_completions,
        gradient_checkpointing=config.model.gradient_checkpointing,
        logging_steps=r.logging_steps, save_strategy="steps" if r.save_steps else "no",
        save_steps=r.save_steps or 500, save_total_limit=r.save_total_limit,
        report_to=list(r.report_to) or "none", disable_tqdm=not r.progress,
        remove_unused_columns=False, dataloader_num_workers=0, log_completions=False,
    )
    kwargs.update(vllm_args(config))
    if g.rollout_compile:  # a fixed-shape KV cache: what a compiled decode step needs (see CovipGRPOTrainer)
        kwargs["cache_implementation"] = "static"
        if g.rollout_max_cache_len:
            kwargs["generation_kwargs"] = {"max_cache_len": g.rollout_max_cache_len}
    import dataclasses

    if "max_prompt_length" in {f.name for f in dataclasses.fields(GRPOConfig)}:  # trl 0.24/0.25: 512 by default
        kwargs["max_prompt_length"] = g.max_prompt_length
    extra = dict(g.extra_args)
    if isinstance(extra.get("generation_kwargs"), dict) and "generation_kwargs" in kwargs:
        extra["generation_kwargs"] = {**kwargs["generation_kwargs"], **extra["generation_kwargs"]}
    kwargs.update(extra)
    return trl_args(GRPOConfig, kwargs, "gspo.extra_args", "GSPO")


def vllm_args(config: GspoConfig) -> dict[str, Any]:
    """The trl ``GRPOConfig`` fields of ``config.gspo``'s vLLM keys (none but ``use_vllm`` when it is off).

    Keys left at None keep trl's defaults (server host 0.0.0.0, port 8000; the model's max length). The values were
    checked by :meth:`GspoConfig.validate` (mode, ranges, no server key in colocate mode and the reverse)."""
    g = config.gspo
    if not g.use_vllm:
        return {"use_vllm": False}
    out: dict[str, Any] = {"use_vllm": True, "vllm_mode": g.vllm_mode}
    if g.vllm_mode == "server":
        out["vllm_server_timeout"] = g.vllm_server_timeout
        for key in ("vllm_server_base_url", "vllm_server_host", "vllm_server_port"):
            if getattr(g, key) is not None:
                out[key] = getattr(g, key)
    else:
        out.update(vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
                   vllm_tensor_parallel_size=g.vllm_tensor_parallel_size,
                   vllm_enable_sleep_mode=g.vllm_enable_sleep_mode)
        if g.vllm_max_model_length is not None:
            out["vllm_max_model_length"] = g.vllm_max_model_length
    return out


VLLM_PIP = "pip install 'trl[vllm]'"
"""trl's own extra: the vLLM versions the installed trl supports (trl 1.16: 0.22-0.31)."""


def require_vllm(config: GspoConfig) -> None:
    """With ``gspo.use_vllm``, raise :class:`MissingExtraError` naming the pip line unless vLLM is installed.

    Run before any data or model is loaded: trl finds out only when it builds its trainer. Both modes need it in
    the training environment (server mode too: trl's client sends the weights over vLLM's NCCL communicator)."""
    if not config.gspo.use_vllm:
        return
    from trl import import_utils

    if import_utils.is_vllm_available():
        return
    raise VllmMissingError(f"GSPO rollouts with vLLM (gspo.use_vllm, vllm_mode {config.gspo.vllm_mode!r})")


class VllmMissingError(MissingExtraError):
    """vLLM is not installed; the message names trl's pip line (covip has no extra of its own for it)."""

    def __init__(self, feature: str) -> None:
        super().__init__(feature, "train", "vllm")
        self.msg = (f"{feature} needs the Python package 'vllm', which is not installed. Install it with: "
                    f"{VLLM_PIP} (on a CUDA machine: the vLLM versions trl supports), or set gspo.use_vllm: false")
        self.args = (self.msg,)


def trl_args(cls: type, kwargs: dict[str, Any], extra_key: str, stage: str) -> Any:
    """``cls(**kwargs)`` (a trl config); an unknown field names ``extra_key``, a refused value the stage."""
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"config key '{extra_key}': {exc}") from None
    except ValueError as exc:
        raise InputError(f"trl rejected the {stage} settings: {exc}") from None


def resume_target(value: Any, output_dir: Path) -> str | None:
    """The checkpoint folder ``run.resume_from_checkpoint`` names (True: the newest checkpoint-N), or None."""
    if value is None or value is False:
        return None
    if value is True:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if last is None:
            raise InputError(f"run.resume_from_checkpoint is true but {output_dir} holds no checkpoint-N folder "
                             "(start without --resume)")
        return last
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise InputError(f"config key 'run.resume_from_checkpoint': {path} is not a checkpoint folder")
    return str(path)


# ----------------------------------------------------------------------------- rollouts
#
# Why trl's transformers rollouts ran at a quarter of plain generate (8B shape, H200: 82-87 s per step, GPU 13% busy,
# ~6 decode steps/s against 23 tok/s for plain batch-1 generate of the base model), as read in trl 1.16 /
# transformers 5.25 and measured on the CPU (benchmarks/train_throughput.py, benchmarks/RESULTS.md):
# * not the KV cache: trl's unwrap_model_for_generation turns gradient checkpointing off around generate (and
#   transformers 5.25 keeps the cache under no_grad even with it on); every rollout decode step saw 1 new token with
#   model.gradient_checkpointing true or false (tiny, CPU: rollout/plain 0.91x both ways, same step time +-4%);
# * not the sampling settings: trl's top_k=0, top_p=1, min_p=None build no logits warper, only
#   SuppressTokensLogitsProcessor for the image token (+2% per decode step); top_k 20 + top_p 0.8 would cost +15%
#   (a sort over the 49k vocabulary per token, CPU), min_p +2%;
# * not padding: a rollout batch is one prompt x num_generations (identical rows, nothing padded); the repeated
#   prompt's images go through the vision tower once per row, in the prefill only;
# * the unmerged LoRA, in train mode: 7 x 36 peft layers, each a dropout, two matmuls, a scale and an add per decoded
#   token. On a 36-layer model with tiny widths (per-module dispatch dominates, as on a GPU at batch 4), ms per decode
#   step at batch 4, fp32 / bf16 base: base model 24.2 / 31.8; LoRA r64 unmerged, eval 40.7 / 53.5 (1.68x); the
#   same in train mode, as trl generates 43.9 / 57.4 (+7%); LoRA merged 26.7 / 37.9. Through train_gspo
#   (train_throughput.py --shape deep): these settings generate 1.56x faster than trl's (same prompt, interleaved;
#   1.37x between two separate runs on the shared CPU).
# CovipGRPOTrainer generates in eval mode (gspo.rollout_eval_mode), with the LoRA merged and bypassed
# (gspo.rollout_merge_lora) and, optionally, a compiled decode step over a static cache (gspo.rollout_compile,
# unmeasured on a GPU: training/README.md has the command).


class LoraRolloutMerge:
    """Merge a peft model's LoRA adapters into the base weights around a rollout and restore them exactly.

    :meth:`merged` adds each LoRA layer's delta (``get_delta_weight``, in its adapter dtype, one rounding into the
    base dtype) to the base weight, runs the block with the adapters bypassed (``disable_adapter``), then copies the
    base weights back from a copy made on first use (the base weights are frozen, so one copy serves every step).
    peft's own ``unmerge_adapter`` subtracts the delta again, which in bf16 does not give the old weight back.
    """

    def __init__(self, model: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.model = model
        self.layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        self.pristine: list[Any] | None = None
        self.reason_off: str | None = None
        weights = [m.get_base_layer().weight for _, m in self.layers]
        if not self.layers:
            self.reason_off = "the model has no LoRA layer"
        elif any(getattr(w, "ds_id", None) is not None or w.numel() == 0 for w in weights):
            self.reason_off = "the base weights are partitioned (DeepSpeed ZeRO-3 / FSDP)"
        else:
            counts: dict[int, int] = {}
            for _, param in model.named_parameters(remove_duplicate=False):
                counts[param.data_ptr()] = counts.get(param.data_ptr(), 0) + 1
            tied = [n for (n, _), w in zip(self.layers, weights) if counts.get(w.data_ptr(), 0) > 1]
            if tied:
                raise InputError(f"gspo.rollout_merge_lora: the LoRA layer {tied[0]} adapts a weight shared with "
                                 "another module (tied embeddings); merging it would change that module too. Drop it "
                                 "from lora.target_regex or set gspo.rollout_merge_lora: false")

    @property
    def copy_bytes(self) -> int:
        """Bytes of the base-weight copy (made at the first merge)."""
        return sum(m.get_base_layer().weight.numel() * m.get_base_layer().weight.element_size() for _, m in self.layers)

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        import torch

        if self.reason_off is not None:
            yield
            return
        with torch.no_grad():
            if self.pristine is None:
                self.pristine = [m.get_base_layer().weight.detach().clone() for _, m in self.layers]
                log.info("rollout_merge_lora: kept a copy of %d base weights (%.2f GB)", len(self.layers),
                         self.copy_bytes / 1e9)
            try:
                for _, m in self.layers:
                    w = m.get_base_layer().weight
                    for adapter in m.active_adapters:
                        if adapter in m.lora_A:
                            w.add_(m.get_delta_weight(adapter))  # fp32 delta into bf16: computed in fp32, one rounding
                with self.model.disable_adapter():
                    yield
            finally:
                for (_, m), saved in zip(self.layers, self.pristine):
                    m.get_base_layer().weight.copy_(saved)


def rollout_trainer_class(base: type, config: GspoConfig) -> type:
    """A subclass of trl's ``GRPOTrainer`` (``base``) that applies ``config.gspo``'s rollout settings to trl's
    transformers rollouts (``_generate_single_turn``); vLLM rollouts pass through untouched."""
    g = config.gspo
    if not hasattr(base, "_generate_single_turn"):
        log.warning("this trl has no GRPOTrainer._generate_single_turn: gspo.rollout_* settings are not applied")

    class CovipGRPOTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.covip_merge: LoraRolloutMerge | None = None
            if self.use_vllm:
                return
            if g.rollout_merge_lora:
                self.covip_merge = LoraRolloutMerge(self.accelerator.unwrap_model(self.model_wrapped))
                if self.covip_merge.reason_off:
                    log.warning("gspo.rollout_merge_lora is off: %s", self.covip_merge.reason_off)
            if g.rollout_compile:
                import transformers

                # trl builds its GenerationConfig with disable_compile=True (a key generation_kwargs cannot
                # override: it would be passed twice); transformers compiles the decode step on GPUs only
                self.generation_config.disable_compile = False
                self.generation_config.compile_config = transformers.CompileConfig(fullgraph=False, dynamic=False)

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            if self.use_vllm:
                return super()._generate_single_turn(*args, **kwargs)
            model = self.accelerator.unwrap_model(self.model_wrapped)
            was_training = model.training
            if g.rollout_eval_mode:
                model.eval()
            try:
                with self.covip_merge.merged() if self.covip_merge is not None else contextlib.nullcontext():
                    return super()._generate_single_turn(*args, **kwargs)
            finally:
                model.train(was_training)

    CovipGRPOTrainer.__qualname__ = CovipGRPOTrainer.__name__ = "CovipGRPOTrainer"
    return CovipGRPOTrainer


# ----------------------------------------------------------------------------- the run


def train_gspo(config: GspoConfig | str | Path, *, train_dataset: Any = None,
               reward_funcs: Sequence[Callable[..., list[float]]] | None = None,
               callbacks: Sequence[Any] | None = None) -> GspoResult:
    """Run GSPO training as ``config`` says (a GspoConfig, a bundled config name or a YAML path).

    ``train_dataset`` (a ``datasets.Dataset`` with a conversational ``prompt`` column, optional ``images``)
    replaces the config's data; ``reward_funcs`` (trl reward functions) replace the CoViP reward and
    judge; ``callbacks`` are extra ``TrainerCallback`` objects. Returns a :class:`GspoResult`.
    """
    start = time.time()
    if not isinstance(config, GspoConfig):
        config = load_config(config)
    torch = require("torch", feature="GSPO training", extra="train")
    require("trl", feature="GSPO training", extra="train")
    require("peft", feature="GSPO training", extra="train")
    require("datasets", feature="GSPO training", extra="train")
    require_vllm(config)
    with torch_threads(torch, config.run.torch_threads):
        return _train(config, train_dataset, reward_funcs, callbacks, start)


@contextlib.contextmanager
def torch_threads(torch: Any, n: int | None) -> Iterator[None]:
    """Run with ``n`` torch CPU threads (None/0: as it is), then restore: a library call leaves the process as it found it."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(config: GspoConfig, train_dataset: Any, reward_funcs: Sequence[Callable[..., list[float]]] | None,
           callbacks: Sequence[Any] | None, start: float) -> GspoResult:
    from trl import GRPOTrainer

    from covip.training.gspo_logging import LoggedReward, MetricsCallback

    out = Path(config.run.output_dir).expanduser().resolve()
    config.check_batch(int(os.environ.get("WORLD_SIZE", "1")))
    resume = resume_target(config.run.resume_from_checkpoint, out)
    args = grpo_args(config, out)
    main = args.process_index == 0
    logs_dir = out / "logs"
    if main:
        logs_dir.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")

    n_samples = len(train_dataset) if train_dataset is not None else 0
    if train_dataset is None:
        from covip.training.gspo_data import build_dataset, load_training_samples, training_world

        with args.main_process_first(desc="covip training data"):
            samples = load_training_samples(config.data, out, progress=config.run.progress and main)
        world = training_world(config.data, out)
        from covip.sdk.prompts import load_pack
        from covip.training.config_io import pack_path

        pack = load_pack(pack_path(config.data.prompt_pack, config.source)) if config.data.prompt_pack else None
        train_dataset = build_dataset(samples, seed=config.data.seed,
                                      verification_question=config.data.verification_question,
                                      default_name=config.data.verification_default_name,
                                      pack=pack, world=world, invented_names=config.data.invented_names)
        n_samples = len(samples)
    log.info("GSPO on %d prompts x %d completions", n_samples, config.gspo.num_generations)

    model, processor, local_dir = load_policy(config)
    model, lora_modules = _apply_finetuning(model, config)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    samples_path = None
    judge = None
    if reward_funcs is None:
        from covip.training.rewards import CoViPReward

        needs_judge = "caption" in config.data.sample_types
        judge = make_judge_from_config(config) if needs_judge else None
        reward = CoViPReward(judge, max_completion_tokens=config.gspo.max_completion_length,
                             tokenizer=processor.tokenizer)
        if config.run.log_samples:
            samples_path = logs_dir / ("samples.jsonl" if main else f"samples.rank{args.process_index}.jsonl")
        reward_funcs = [LoggedReward(reward, samples_path)]
    metrics_path = logs_dir / "metrics.jsonl"
    tb_dir = logs_dir / "tensorboard" if config.run.tensorboard else None
    if resume is None:  # a fresh run does not append to an earlier run's logs
        for stale in (metrics_path if main else None, samples_path):
            if stale is not None and stale.exists():
                stale.unlink()
    metrics = MetricsCallback(metrics_path, tb_dir)

    trainer_class = rollout_trainer_class(GRPOTrainer, config)
    try:
        trainer = trainer_class(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=train_dataset,
                                processing_class=processor, callbacks=[metrics, *(callbacks or [])])
    except ValueError as exc:
        if "lm_head" not in str(exc) or not any(n.split(".")[-1] == "lm_head" for n in lora_modules):
            raise
        from covip.training.gspo_config import DEFAULT_LORA_TARGET_REGEX

        # trl 1.x computes the log-probs from lm_head.weight directly, so it refuses a LoRA adapter there
        raise InputError(f"config key 'lora.target_regex': this trl cannot train a LoRA adapter on lm_head ({exc}); "
                         "adapt the decoder layers only: "
                         f"--set 'lora.target_regex={DEFAULT_LORA_TARGET_REGEX}'") from None
    from covip.training.trainer_progress import use_progress_lines

    use_progress_lines(trainer, config.run.progress, "covip train gspo")
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        metrics.close()
        if judge is not None and hasattr(judge, "close"):
            judge.close()

    adapter_dir = merged_dir = None
    if lora_modules and config.run.save_adapter:
        adapter_dir = out / "adapter"
        trainer.save_model(str(adapter_dir))  # the adapter only (peft), every process takes part
        if main:
            processor.save_pretrained(str(adapter_dir))
    trainer.accelerator.wait_for_everyone()
    if config.run.merge:
        merged_dir = out / "merged"
        if main:
            _save_merged(trainer.accelerator.unwrap_model(trainer.model), processor, merged_dir, config,
                         local_dir, trainer.state.global_step)
        trainer.accelerator.wait_for_everyone()

    result = GspoResult(
        output_dir=out, adapter_dir=adapter_dir, merged_dir=merged_dir, metrics_path=metrics_path,
        samples_path=samples_path, tensorboard_dir=tb_dir, config_path=out / "config.yaml",
        global_step=trainer.state.global_step, epoch=trainer.state.epoch, runtime_s=round(time.time() - start, 2),
        n_samples=n_samples, lora_modules=lora_modules, trainable_parameters=n_trainable,
        reward_history=metrics.reward_history(),
    )
    if main:
        write_json(out / "result.json", result.to_dict())
    return result


def _save_merged(model: Any, processor: Any, merged_dir: Path, config: GspoConfig, local_dir: Path | None,
                 step: int) -> None:
    """Merge LoRA into the base weights (peft ``merge_and_unload``) and save model + processor."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.config.use_cache = True  # training turns the KV cache off; an inference checkpoint wants it
    if merged_dir.exists():
        shutil.rmtree(merged_dir)
    model.save_pretrained(str(merged_dir))
    processor.save_pretrained(str(merged_dir))
    info = {"base_model": config.model.name_or_path, "config": config.name, "config_source": config.source,
            "global_step": step, "lora": None if not config.lora.enabled else
            {"r": config.lora.r, "alpha": config.lora.alpha, "target_regex": config.lora.target_regex},
            "merged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (merged_dir / PROVENANCE_FILE).write_text(json.dumps(info, indent=1) + "\n")
    _carry_tiny_marker(local_dir, merged_dir)
    log.info("merged checkpoint written to %s", merged_dir)


def _carry_tiny_marker(base_dir: Path | None, merged_dir: Path) -> None:
    """A tiny base model's 'random weights' marker goes with its merged child, under a new identity."""
    from covip.sdk.models import TINY_MARKER, read_tiny_marker

    marker = read_tiny_marker(base_dir) if base_dir is not None else None
    if marker is None:
        return
    digest = hashlib.sha256()
    for weights in sorted(merged_dir.glob("*.safetensors")):
        digest.update(weights.read_bytes())
    marker = dict(marker, name=f"{marker.get('name', 'tiny')}-gspo", build_sha256=digest.hexdigest(),
                  derived_from=marker.get("build_sha256"),
                  note="A GSPO-tuned tiny random-weight model: everything it writes is meaningless.")
    (merged_dir / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
