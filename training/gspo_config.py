"""The GSPO run configuration: typed dataclasses loaded from YAML (a bundled name or a file path).

A config file has six groups, each a dataclass below (every field carries a ``help`` text, see
:func:`config_help`)::

    model:  which VLM to train (hub id, save_pretrained dir or 'tiny'), dtype, image resolution
    data:   the covip Sample JSONL to train on (or a synthetic set generated when it is missing)
    lora:   LoRA rank/alpha/dropout and the target regex (language-model linears only), or full fine-tuning
    judge:  the r_caps judge: 'lexical' (synthetic data) or an OpenAI-compatible URL (vLLM) + sampling
    gspo:   the algorithm: group size, lr, epochs, completion length, clipping, vLLM rollouts
    run:    output dir, seed, precision, device, logging, checkpoints, resume, merge

Unknown keys are errors naming the dotted key (``gspo.lerning_rate``); values are converted to the
field's type (YAML reads ``5e-6`` as a string: it becomes a float here). :func:`load_config` accepts a
bundled name (``tiny-cpu``, ``qwen3vl-8b-paper``: the files in ``covip/training/configs/``) or a path,
plus dotted overrides (``{"gspo.max_steps": 2}`` or ``["gspo.max_steps=2"]``).

GSPO vs GRPO: with ``importance_sampling_level='sequence'`` the importance ratio is per sequence (the
exp of the mean per-token log-ratio), clipped to [1-epsilon, 1+epsilon_high]. It only matters when the
policy that generated a batch is older than the one being updated, i.e. when ``num_iterations > 1`` or
``steps_per_generation > gradient_accumulation_steps``; on-policy (the defaults) the ratio is exactly 1 and
the update equals the plain group-normalized policy gradient.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Union

from covip.sdk.errors import InputError
from covip.sdk.support import parse_overrides
from covip.training.config_io import (
    GroupedConfigMixin,
    config_from_dict,
    config_to_dict,
    read_yaml,
    sections_help,
)
from covip.training.constants import SAMPLE_TYPES

__all__ = [
    "BUNDLED_CONFIG_DIR",
    "DEFAULT_LORA_TARGET_REGEX",
    "PAPER_LORA_TARGET_REGEX",
    "VISION_MODULE_NAMES",
    "SAMPLE_TYPES",
    "ModelSection",
    "DataSection",
    "LoraSection",
    "JudgeSection",
    "GspoSection",
    "RunSection",
    "TrainRunSection",
    "GspoConfig",
    "bundled_configs",
    "resolve_config_path",
    "load_config",
    "config_help",
    "parse_overrides",
]

BUNDLED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_LORA_TARGET_REGEX = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
"""Every attention and MLP projection of the language model's decoder layers (transformers 5 names), and
nothing else: the vision tower (``model.visual``), its merger, the embeddings and lm_head are left alone."""
PAPER_LORA_TARGET_REGEX = DEFAULT_LORA_TARGET_REGEX + r"|lm_head"
"""The authors' LoRA targets: every decoder projection plus ``lm_head`` (their 8B log's 184,573,952 trainable
parameters = r64 on 7 projections x 36 layers, 174,587,904, plus lm_head, 9,986,048)."""
VISION_MODULE_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder")
"""A module whose dotted name has one of these components belongs to the vision tower."""
DTYPES = ("auto", "float32", "bfloat16", "float16")
VLLM_MODES = ("colocate", "server")


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ModelSection:
    """The policy model."""

    name_or_path: str = field(default="tiny", metadata=_h(
        "Hub id (e.g. Qwen/Qwen3-VL-8B-Instruct), a save_pretrained directory, or 'tiny' / 'tiny-qwen3-vl' "
        "(a random-weight tiny Qwen3-VL built on the fly, for tests)."))
    dtype: str = field(default="auto", metadata=_h(
        "Weights dtype: 'auto' (bfloat16 when run.bf16, else float32), 'float32', 'bfloat16', 'float16'."))
    attn_implementation: str | None = field(default=None, metadata=_h(
        "'sdpa', 'eager', 'flash_attention_2', ... (None lets transformers choose)."))
    trust_remote_code: bool = field(default=False, metadata=_h("Allow the model repository's own Python code."))
    min_pixels: int | None = field(default=None, metadata=_h(
        "Image processor minimum pixels per image (None keeps the model's)."))
    max_pixels: int | None = field(default=None, metadata=_h(
        "Image processor maximum pixels per image (None keeps the model's); fewer pixels = fewer image "
        "tokens per context photo = shorter prompts."))
    gradient_checkpointing: bool = field(default=True, metadata=_h(
        "Recompute activations in the backward pass (less memory, ~20% slower)."))


@dataclass
class DataSection:
    """Training data: covip Sample JSONL (``covip data synth`` writes it; loaders convert the authors')."""

    train: str | None = field(default=None, metadata=_h(
        "Path of the training Sample JSONL. None with synthesize_if_missing: <run.output_dir>/synth/train.jsonl."))
    image_root: str | None = field(default=None, metadata=_h(
        "Folder the samples' image paths are relative to (None: the JSONL's folder)."))
    sample_types: list[str] = field(default_factory=lambda: list(SAMPLE_TYPES), metadata=_h(
        "Sample types to train on: caption (r_caps), recognition (r_vis), verification (yes/no)."))
    max_samples: int | None = field(default=None, metadata=_h("Use at most this many samples (None = all)."))
    seed: int = field(default=0, metadata=_h(
        "Seed of the per-sample query-header draw (Query/Target/New Image) and of max_samples subsampling."))
    synthesize_if_missing: bool = field(default=False, metadata=_h(
        "Generate an offline synthetic dataset (covip.training.data.synthesize) where data.train is missing."))
    synth: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "SynthConfig fields for that synthetic dataset (n_concepts, n_train, image_size, similarity, ...)."))
    verification_question: str = field(default="Is {name} also in the second image?", metadata=_h(
        "The question of verification prompts; {name} is the concept's name."))
    verification_default_name: str = field(default="the object", metadata=_h(
        "The name used when a verification sample has no concept name (the authors' data)."))
    prompt_pack: str | None = field(default=None, metadata=_h(
        "A prompt pack file (TOML/JSON, covip.sdk.prompts.load_pack) that words the training prompts, e.g. to "
        "continue from a checkpoint trained on another wording; a relative path that is not a file here is "
        "looked up beside the config file (the bundled recipes' packs); None = covip's."))
    fresh_identities: bool = field(default=False, metadata=_h(
        "Each caption prompt gives its context concepts fresh names and facts (drawn per prompt from the world's "
        "lists; dialogues rewritten and the r_caps questions asked anew about them), as SFT's "
        "data.fresh_identities: the reward then pays for reading the context, never for remembering what the "
        "training concepts are called. Needs the synthetic world's concepts.json beside data.train."))
    invented_names: float = field(default=0.0, metadata=_h(
        "With fresh_identities: the probability that a fresh name (or each half of a compound one) is made up "
        "from syllables instead of drawn from the world's name list (as SFT's data.invented_names). 0 = off."))


@dataclass
class LoraSection:
    """LoRA on the language model's linear layers, or full fine-tuning."""

    enabled: bool = field(default=True, metadata=_h("Train LoRA adapters; false = full fine-tuning."))
    r: int = field(default=64, metadata=_h("LoRA rank (paper: 64)."))
    alpha: int = field(default=128, metadata=_h("LoRA alpha (paper: 128)."))
    dropout: float = field(default=0.05, metadata=_h("LoRA dropout (paper: 0.05)."))
    target_regex: str = field(default=DEFAULT_LORA_TARGET_REGEX, metadata=_h(
        "Regex (re.fullmatch on module names, as peft does) of the Linear layers to adapt. Checked at start: it "
        "must match at least one module and none under the vision tower."))
    freeze_vision: bool = field(default=True, metadata=_h(
        "Keep the vision tower frozen in full fine-tuning (LoRA never touches it)."))
    vision_module_names: list[str] = field(default_factory=lambda: list(VISION_MODULE_NAMES), metadata=_h(
        "Module name components that mark the vision tower (for the checks and freezing)."))


@dataclass
class JudgeSection:
    """The frozen judge behind r_caps (caption samples)."""

    spec: str = field(default="lexical", metadata=_h(
        "'lexical' (templated synthetic data only), 'http://host:port/v1#model' (OpenAI-compatible server, "
        "e.g. vLLM), 'gguf:/path.gguf' or 'hf:model' (see covip.training.judges.make_judge)."))
    temperature: float = field(default=0.7, metadata=_h("Judge sampling temperature (paper: 0.7); not for 'lexical'."))
    top_p: float = field(default=0.8, metadata=_h("Judge top_p (paper: 0.8); not for 'lexical'."))
    top_k: int | None = field(default=20, metadata=_h("Judge top_k (paper: 20); not for 'lexical'."))
    options: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "More judge config fields (concurrency, timeout_s, max_retries, cache_path, seed, api_key, ...)."))


@dataclass
class GspoSection:
    """The GSPO algorithm (trl GRPOTrainer with sequence-level importance sampling)."""

    num_generations: int = field(default=4, metadata=_h("Group size: completions sampled per prompt (paper: 4)."))
    per_device_train_batch_size: int = field(default=1, metadata=_h(
        "Completions per device per micro-step (paper: 1). Global generation batch = this x processes x "
        "steps_per_generation and must be a multiple of num_generations."))
    gradient_accumulation_steps: int = field(default=1, metadata=_h("Micro-steps per optimizer step."))
    steps_per_generation: int | None = field(default=None, metadata=_h(
        "Micro-steps served by one generation batch (None = gradient_accumulation_steps). Larger values reuse a "
        "rollout across optimizer steps: off-policy, where GSPO's sequence ratio and clipping act."))
    num_iterations: int = field(default=1, metadata=_h(
        "Optimization passes over each generation batch (mu). >1 is off-policy, where GSPO differs from GRPO."))
    learning_rate: float = field(default=5e-6, metadata=_h("Peak learning rate (paper: 5e-6)."))
    lr_scheduler_type: str = field(default="linear", metadata=_h("transformers scheduler name."))
    warmup_steps: float = field(default=0.0, metadata=_h(
        "Linear warmup: a step count (>= 1) or a share of all steps (< 1)."))
    weight_decay: float = field(default=0.0, metadata=_h("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_h("Gradient clipping norm."))
    num_train_epochs: float = field(default=2.0, metadata=_h("Epochs over the training prompts (paper: 2)."))
    max_steps: int = field(default=-1, metadata=_h("Stop after this many optimizer steps (-1 = run the epochs)."))
    max_completion_length: int = field(default=512, metadata=_h(
        "Completion budget in tokens (paper: 512); a caption using max-1 tokens or more gets reward -1."))
    temperature: float = field(default=1.0, metadata=_h("Rollout sampling temperature (paper: 1.0)."))
    top_p: float = field(default=1.0, metadata=_h(
        "Rollout top_p (1.0 = off). The authors' trainer ran on transformers 4, which merged the model's own "
        "generation config (Qwen3-VL: top_p 0.8, top_k 20) into the sampling settings, so their rollouts may "
        "have sampled at top_p 0.8 / top_k 20; set 0.8 and 20 to follow that reading."))
    top_k: int = field(default=0, metadata=_h("Rollout top_k (0 = off; see top_p)."))
    max_prompt_length: int | None = field(default=None, metadata=_h(
        "Longest prompt trl keeps, in tokens (None = never cut). trl 0.24/0.25 default to 512, which would cut "
        "multi-image prompts; newer trl has no such setting and this key is then ignored."))
    beta: float = field(default=0.0, metadata=_h("KL coefficient (paper: 0: no reference model)."))
    epsilon: float = field(default=3e-4, metadata=_h("Lower clip range of the sequence ratio (GSPO: 3e-4)."))
    epsilon_high: float = field(default=4e-4, metadata=_h("Upper clip range of the sequence ratio (GSPO: 4e-4)."))
    importance_sampling_level: str = field(default="sequence", metadata=_h(
        "'sequence' = GSPO (one ratio per completion); 'token' = GRPO."))
    loss_type: str = field(default="grpo", metadata=_h(
        "trl loss aggregation; 'grpo' (mean over a sequence's tokens, then over sequences) is GSPO's "
        "per-sequence objective. 'dapo'/'bnpo'/'dr_grpo' weight sequences by length."))
    scale_rewards: str = field(default="group", metadata=_h(
        "Advantage scaling: 'group' ((r - mean) / (std + 1e-4) per group, the paper's), 'batch' or 'none'."))
    mask_truncated_completions: bool = field(default=False, metadata=_h(
        "Drop truncated completions from the loss (off: the paper penalizes them with reward -1 instead)."))
    rollout_eval_mode: bool = field(default=True, metadata=_h(
        "Generate rollouts (transformers' generate) with the policy in eval mode: LoRA dropout off, as vLLM "
        "rollouts have it. trl generates in train mode, where every LoRA layer runs its dropout on every decoded "
        "token (+7% per decode step on a 36-layer model, CPU). The loss forward stays in train mode."))
    rollout_merge_lora: bool = field(default=False, metadata=_h(
        "Merge the LoRA adapters into the base weights for each rollout and bypass them while generating (the "
        "decode step of the plain model: unmerged peft LoRA made each decode step 1.5-1.7x slower on a 36-layer "
        "model, CPU), then restore the base weights exactly from a copy made at the first rollout. Costs that copy's "
        "memory on the device: every LoRA-adapted base weight (about 14 GB at Qwen3-VL-8B). The "
        "rollouts sample from the bf16-rounded merged weights, as vLLM rollouts do."))
    rollout_compile: bool = field(default=False, metadata=_h(
        "torch.compile the rollout decode step (transformers' generate over a static KV cache; CUDA graphs on a GPU, "
        "eager elsewhere). The first rollout compiles (minutes at 8B) and a prompt longer than the cache compiles "
        "again (see rollout_max_cache_len). Not with use_vllm."))
    rollout_max_cache_len: int | None = field(default=None, metadata=_h(
        "rollout_compile: positions of the static KV cache (prompt + completion); one size for every rollout means "
        "one compilation. None: sized by the first rollout, grown (and recompiled) when a longer one comes."))
    use_vllm: bool = field(default=False, metadata=_h(
        "Generate rollouts with vLLM (trl's switch; needs vllm in the training environment in both modes: "
        "pip install 'trl[vllm]')."))
    vllm_mode: str = field(default="colocate", metadata=_h(
        "'colocate' (vLLM inside each training process, sharing its GPU) or 'server' (a separate "
        "`trl vllm-serve` on other GPUs; the trainer sends it the weights after every optimizer step)."))
    vllm_server_base_url: str | None = field(default=None, metadata=_h(
        "vllm_mode=server: the server URL (e.g. http://10.0.0.5:8000); None: vllm_server_host and vllm_server_port."))
    vllm_server_host: str | None = field(default=None, metadata=_h(
        "vllm_mode=server without a base URL: the server host (None: trl's default, 0.0.0.0 = this machine)."))
    vllm_server_port: int | None = field(default=None, metadata=_h(
        "vllm_mode=server without a base URL: the server port (None: trl's default, 8000)."))
    vllm_server_timeout: float = field(default=240.0, metadata=_h(
        "vllm_mode=server: seconds to wait for the server at start (trl's default 240)."))
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata=_h(
        "vllm_mode=colocate: share of GPU memory vLLM may take (weights + KV cache), in (0, 1]."))
    vllm_tensor_parallel_size: int = field(default=1, metadata=_h(
        "vllm_mode=colocate: tensor parallel size (must divide the number of processes). A server's is set on "
        "the `trl vllm-serve` command line."))
    vllm_max_model_length: int | None = field(default=None, metadata=_h(
        "vllm_mode=colocate: vLLM's max_model_len (prompt + completion). None takes the model's (262,144 at "
        "Qwen3-VL), whose KV cache may not fit the memory share: 8192 holds the multi-image prompts + 512 tokens."))
    vllm_enable_sleep_mode: bool = field(default=False, metadata=_h(
        "vllm_mode=colocate: vLLM frees its weights and KV cache between rollouts (less memory, slower steps)."))
    extra_args: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "Any other trl GRPOConfig / TrainingArguments fields, passed through as given."))


@dataclass
class TrainRunSection:
    """Where and how a training run executes (the fields every stage shares: GSPO, SFT)."""

    output_dir: str = field(default="runs/train", metadata=_h("Run folder (checkpoints, logs/, results)."))
    seed: int = field(default=0, metadata=_h("Training seed."))
    bf16: bool = field(default=False, metadata=_h("bfloat16 mixed precision (GPU runs)."))
    use_cpu: bool = field(default=False, metadata=_h("Train on the CPU even when a GPU is present."))
    torch_threads: int | None = field(default=None, metadata=_h(
        "torch CPU threads (None = torch's default; 1 is faster when other processes share the cores)."))
    logging_steps: int = field(default=1, metadata=_h("Log metrics every this many optimizer steps."))
    save_steps: int = field(default=0, metadata=_h("Write a checkpoint every this many steps (0 = never)."))
    save_total_limit: int | None = field(default=2, metadata=_h("Keep at most this many checkpoints."))
    resume_from_checkpoint: bool | str | None = field(default=None, metadata=_h(
        "true = resume from the newest checkpoint in output_dir; a path = that checkpoint; null = start fresh."))
    report_to: list[str] = field(default_factory=list, metadata=_h(
        "Extra trainer integrations (wandb, ...); covip always writes its own JSONL logs."))
    tensorboard: bool = field(default=False, metadata=_h("Write TensorBoard event files under logs/tensorboard."))
    progress: bool = field(default=True, metadata=_h("Show progress bars."))


@dataclass
class RunSection(TrainRunSection):
    """Where and how the GSPO run executes."""

    output_dir: str = field(default="runs/gspo", metadata=_h(
        "Run folder: checkpoints, adapter/, merged/, logs/ (metrics.jsonl, samples.jsonl, tensorboard/)."))
    seed: int = field(default=42, metadata=_h("Training seed (LoRA init, sampling, data order)."))
    bf16: bool = field(default=False, metadata=_h("bfloat16 mixed precision (GPU runs; paper: on)."))
    save_steps: int = field(default=100, metadata=_h("Write a checkpoint every this many steps (0 = never)."))
    tensorboard: bool = field(default=True, metadata=_h("Write TensorBoard event files under logs/tensorboard."))
    log_samples: bool = field(default=True, metadata=_h(
        "Write every completion's reward components (r_vis, r_caps parts, degeneration, judge letters) to "
        "logs/samples.jsonl."))
    save_adapter: bool = field(default=True, metadata=_h("Save the LoRA adapter to <output_dir>/adapter."))
    merge: bool = field(default=True, metadata=_h(
        "Save a merged checkpoint (base + LoRA, with the processor) to <output_dir>/merged for export."))


_SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": DataSection, "lora": LoraSection, "judge": JudgeSection,
    "gspo": GspoSection, "run": RunSection,
}


@dataclass
class GspoConfig(GroupedConfigMixin):
    """A whole GSPO run: the six groups plus a name and a description (see the module doc)."""

    model: ModelSection = field(default_factory=ModelSection, metadata=_h("The policy model."))
    data: DataSection = field(default_factory=DataSection, metadata=_h("Training data."))
    lora: LoraSection = field(default_factory=LoraSection, metadata=_h("LoRA or full fine-tuning."))
    judge: JudgeSection = field(default_factory=JudgeSection, metadata=_h("The r_caps judge."))
    gspo: GspoSection = field(default_factory=GspoSection, metadata=_h("The GSPO algorithm."))
    run: RunSection = field(default_factory=RunSection, metadata=_h("Output, precision, logging, checkpoints."))
    name: str = field(default="custom", metadata=_h("A short name of this configuration."))
    description: str = field(default="", metadata=_h("What this configuration is for."))
    sft: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "A recipe file's supervised warm-start stage, read by `covip train sft` (see covip.training.sft_config); "
        "GSPO does not use it."))
    source: str | None = field(default=None, metadata=_h("The file it was loaded from (set by load_config)."))
    neutral_when_off: ClassVar[Mapping[str, Any]] = {"data.fresh_identities": False, "data.invented_names": 0.0}

    def __post_init__(self) -> None:
        self.validate()

    # -- conversion ----------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> GspoConfig:
        """Build from a nested mapping; unknown keys and bad values raise InputError naming the dotted key."""
        return config_from_dict(cls, _SECTIONS, data, what="a GSPO config", unknown="config key", source=source)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON-able) that :meth:`from_dict` turns back into an equal config."""
        return config_to_dict(self)

    # -- checks --------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise InputError naming the dotted key of the first bad value."""
        m, d, lo, j, g, r = self.model, self.data, self.lora, self.judge, self.gspo, self.run
        _check(m.dtype in DTYPES, "model.dtype", f"must be one of {list(DTYPES)}, got {m.dtype!r}")
        _check(bool(m.name_or_path.strip()), "model.name_or_path", "must not be empty")
        bad = [t for t in d.sample_types if t not in SAMPLE_TYPES]
        _check(not bad and bool(d.sample_types), "data.sample_types",
               f"must be a non-empty subset of {list(SAMPLE_TYPES)}, got {d.sample_types}")
        _check(d.max_samples is None or d.max_samples > 0, "data.max_samples", "must be > 0 or null")
        _check("{name}" in d.verification_question, "data.verification_question", "must contain '{name}'")
        _check(0.0 <= d.invented_names <= 1.0, "data.invented_names", f"must be 0-1, got {d.invented_names}")
        _check(d.invented_names == 0 or d.fresh_identities, "data.invented_names",
               "makes up fresh names: needs data.fresh_identities: true")
        _check(lo.r > 0 and lo.alpha > 0, "lora.r", f"rank and alpha must be > 0, got r={lo.r}, alpha={lo.alpha}")
        _check(0.0 <= lo.dropout < 1.0, "lora.dropout", f"must be in [0, 1), got {lo.dropout}")
        _check(bool(lo.vision_module_names), "lora.vision_module_names", "must name at least one module")
        try:
            re.compile(lo.target_regex)
        except re.error as exc:
            raise InputError(f"config key 'lora.target_regex': not a valid regex ({exc})") from None
        _check(bool(j.spec.strip()), "judge.spec", "must not be empty")
        _check(g.num_generations >= 2, "gspo.num_generations", f"must be >= 2, got {g.num_generations}")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_iterations",
                    "max_completion_length", "vllm_tensor_parallel_size"):
            _check(getattr(g, key) >= 1, f"gspo.{key}", f"must be >= 1, got {getattr(g, key)}")
        _check(g.steps_per_generation is None or g.steps_per_generation >= 1, "gspo.steps_per_generation",
               "must be >= 1 or null")
        _check(g.max_completion_length >= 2, "gspo.max_completion_length", "must be >= 2")
        _check(g.learning_rate > 0, "gspo.learning_rate", f"must be > 0, got {g.learning_rate}")
        _check(g.num_train_epochs > 0, "gspo.num_train_epochs", f"must be > 0, got {g.num_train_epochs}")
        _check(g.warmup_steps >= 0, "gspo.warmup_steps", f"must be >= 0, got {g.warmup_steps}")
        _check(g.max_steps == -1 or g.max_steps >= 1, "gspo.max_steps", f"must be -1 or >= 1, got {g.max_steps}")
        _check(g.temperature > 0, "gspo.temperature", f"must be > 0, got {g.temperature}")
        _check(g.beta >= 0, "gspo.beta", f"must be >= 0, got {g.beta}")
        _check(g.epsilon > 0 and g.epsilon_high > 0, "gspo.epsilon",
               f"clip ranges must be > 0, got {g.epsilon}, {g.epsilon_high}")
        _check(g.importance_sampling_level in ("sequence", "token"), "gspo.importance_sampling_level",
               f"must be 'sequence' (GSPO) or 'token' (GRPO), got {g.importance_sampling_level!r}")
        _check(g.scale_rewards in ("group", "batch", "none"), "gspo.scale_rewards",
               f"must be 'group', 'batch' or 'none', got {g.scale_rewards!r}")
        _check(g.rollout_max_cache_len is None or g.rollout_max_cache_len > g.max_completion_length,
               "gspo.rollout_max_cache_len", f"must hold the prompt and max_completion_length "
               f"({g.max_completion_length}) tokens, got {g.rollout_max_cache_len}")
        _check(g.rollout_max_cache_len is None or g.rollout_compile, "gspo.rollout_max_cache_len",
               "sizes the static cache of rollout_compile; set gspo.rollout_compile: true or leave it null")
        self._validate_vllm()
        _check(r.logging_steps >= 1, "run.logging_steps", f"must be >= 1, got {r.logging_steps}")
        _check(r.save_steps >= 0, "run.save_steps", f"must be >= 0, got {r.save_steps}")
        _check(r.torch_threads is None or r.torch_threads >= 1, "run.torch_threads", "must be >= 1 or null")
        _check(not (r.bf16 and m.dtype == "float16"), "run.bf16", "bf16 mixed precision with float16 weights")
        _check(bool(r.output_dir.strip()), "run.output_dir", "must not be empty")

    def _validate_vllm(self) -> None:
        """The vLLM keys: known mode, values in range, and no key of one mode set for the other."""
        g = self.gspo
        _check(g.vllm_mode in VLLM_MODES, "gspo.vllm_mode",
               f"must be 'colocate' (vLLM in the training process) or 'server' (`trl vllm-serve`), got {g.vllm_mode!r}")
        _check(0 < g.vllm_gpu_memory_utilization <= 1, "gspo.vllm_gpu_memory_utilization",
               f"must be in (0, 1] (a share of the GPU's memory), got {g.vllm_gpu_memory_utilization}")
        _check(g.vllm_server_timeout > 0, "gspo.vllm_server_timeout",
               f"must be > 0 seconds, got {g.vllm_server_timeout}")
        _check(g.vllm_server_port is None or 0 < g.vllm_server_port < 65536, "gspo.vllm_server_port",
               f"must be a TCP port (1-65535), got {g.vllm_server_port}")
        _check(g.vllm_max_model_length is None or g.vllm_max_model_length > g.max_completion_length,
               "gspo.vllm_max_model_length", f"must hold the prompt and max_completion_length "
               f"({g.max_completion_length}) tokens, got {g.vllm_max_model_length}")
        url = g.vllm_server_base_url
        _check(url is None or (re.match(r"^https?://[^/\s]+", url) is not None and not url.rstrip("/").endswith("/v1")),
               "gspo.vllm_server_base_url", f"must be the `trl vllm-serve` root URL, e.g. http://10.0.0.5:8000 "
               f"(no /v1: it is not an OpenAI endpoint), got {url!r}")
        if not g.use_vllm:
            return
        server_keys = [k for k in ("vllm_server_base_url", "vllm_server_host", "vllm_server_port")
                       if getattr(g, k) is not None]
        if g.vllm_mode == "colocate":
            _check(not server_keys, f"gspo.{server_keys[0] if server_keys else ''}",
                   "is a vllm_mode 'server' setting, but gspo.vllm_mode is 'colocate' (vLLM inside the training "
                   "process); set gspo.vllm_mode: server or drop it")
        else:
            _check(url is None or (g.vllm_server_host is None and g.vllm_server_port is None),
                   "gspo.vllm_server_base_url",
                   "give either the base URL or vllm_server_host/vllm_server_port, not both")
            colocate = [k for k, default in (("vllm_tensor_parallel_size", 1), ("vllm_max_model_length", None),
                                             ("vllm_enable_sleep_mode", False)) if getattr(g, k) != default]
            _check(not colocate, f"gspo.{colocate[0] if colocate else ''}",
                   "is a vllm_mode 'colocate' setting; a server takes it on the `trl vllm-serve` command line "
                   "(--tensor-parallel-size, --max-model-len)")
        _check(not g.rollout_compile, "gspo.rollout_compile", "compiles transformers' generate; vLLM rollouts "
               "(gspo.use_vllm) do not use it")
        _check(not self.run.use_cpu, "gspo.use_vllm", "vLLM rollouts need a GPU, but run.use_cpu is true")

    def check_batch(self, world_size: int = 1) -> None:
        """Raise InputError when the generation batch cannot hold whole groups on ``world_size`` processes."""
        g = self.gspo
        steps = g.steps_per_generation or g.gradient_accumulation_steps
        batch = g.per_device_train_batch_size * world_size * steps
        if batch % g.num_generations:
            raise InputError(
                f"the generation batch (per_device_train_batch_size {g.per_device_train_batch_size} x {world_size} "
                f"process(es) x steps_per_generation {steps} = {batch}) must be a multiple of gspo.num_generations "
                f"({g.num_generations}); e.g. set gspo.gradient_accumulation_steps to "
                f"{_fix_steps(g, world_size)} (on-policy) or use {g.num_generations} processes")


def _fix_steps(g: GspoSection, world: int) -> int:
    step = g.per_device_train_batch_size * world
    k = 1
    while (step * k) % g.num_generations:
        k += 1
    return k


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise InputError(f"config key {key!r}: {problem}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build_section(cls: type, value: Any, name: str, where: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InputError(f"config key {name!r}{where}: must be a mapping, got {type(value).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, item in value.items():
        dotted = f"{name}.{key}"
        if key not in known:
            raise InputError(f"unknown config key {dotted!r}{where}; known keys of {name!r}: {sorted(known)}")
        kwargs[key] = _coerce(item, hints[key], dotted, where)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """``value`` converted to the annotated type ``tp`` (int, float, bool, str, list[str], dict, unions)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in (o for o in options if o is not type(None)):
            try:
                return _coerce(value, opt, key, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if len(errors) == 1 else
                         f"config key {key!r}{where}: {value!r} is none of {[_name(o) for o in options]}")
    bad = InputError(f"config key {key!r}{where}: expected {_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.strip().lower() in ("true", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())  # YAML 1.1 reads 5e-6 as a string
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [v if inner is Any else _coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    raise bad  # pragma: no cover - every annotation above is handled


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


# -- files -------------------------------------------------------------------------------------------
def bundled_configs() -> dict[str, Path]:
    """The configs shipped with covip: name -> file."""
    return {p.stem: p for p in sorted(BUNDLED_CONFIG_DIR.glob("*.yaml"))}


def resolve_config_path(name_or_path: str | Path) -> Path:
    """A bundled config's file (by name, with or without ``.yaml``) or an existing file path."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    bundled = bundled_configs()
    stem = text[:-5] if text.endswith(".yaml") else text[:-4] if text.endswith(".yml") else text
    if stem in bundled and "/" not in text and "\\" not in text:
        return bundled[stem]
    raise InputError(f"no config file {text!r}: give a YAML file path or one of the bundled configs "
                     f"({', '.join(bundled) or 'none installed'})")


def load_config(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> GspoConfig:
    """Load a bundled config by name (``tiny-cpu``) or a YAML file, then apply dotted ``overrides``."""
    path = resolve_config_path(name_or_path)
    data = read_yaml(path)
    config = GspoConfig.from_dict(data, source=str(path))
    return config.with_overrides(overrides) if overrides else config


def config_help() -> dict[str, str]:
    """Every config key (dotted) with its help text and default, for docs and ``--help-config``."""
    return sections_help(_SECTIONS)
