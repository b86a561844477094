"""The SFT (supervised warm start) run configuration: typed dataclasses loaded from YAML.

An SFT config has six groups, each a dataclass below (every field carries a ``help`` text)::

    model:          which VLM (a save_pretrained dir, hub id or a built-in name such as 'mini-qwen3-vl')
    data:           the synthetic world to learn from (generated when missing), sample types, row order
    vision_warmup:  first, the vision tower alone learns the training photos' look attributes
    trainer:        trl SFTTrainer settings: learning rate, batch, epochs/steps, a wall-time budget
    eval:           the held-out evaluation (recognition F1 on concepts never trained on, with chance levels)
    run:            output dir, seed, device, threads, logging, checkpoints

plus ``quick``: dotted overrides that ``--quick`` applies (a minutes-long run of the same recipe).

A config file is either such a mapping, or a *recipe* that holds it under a top-level ``sft:`` key next to
the GSPO stage's groups (``covip train gspo`` reads the rest of the same file); :func:`load_sft_config`
accepts both. Unknown keys are errors naming the dotted key; values are converted to the field's type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from covip.sdk.errors import InputError
from covip.sdk.files import path_inside
from covip.training.config_io import (
    GroupedConfigMixin,
    config_from_dict,
    config_to_dict,
    pack_path,
    read_yaml,
    sections_help,
)
from covip.training.gspo_config import (
    DTYPES,
    ModelSection,
    TrainRunSection,
    _check,
    resolve_config_path,
)

__all__ = [
    "SFT_SAMPLE_TYPES",
    "SftDataSection",
    "SftTrainerSection",
    "SftEvalSection",
    "SftRunSection",
    "SftConfig",
    "load_sft_config",
    "load_phases",
    "sft_config_help",
    "NEUTRAL_WHEN_OFF",
]

SFT_SAMPLE_TYPES = ("caption", "recognition", "verification", "describe")
"""What SFT can learn: the three CoViP sample types, and ``describe`` (a plain description of one photo of a
training concept, with the SDK's describe prompt: cheap, dense practice at reading looks)."""


ANSWER_TASKS = ("lsd", "lar", "who")
"""The downstream tasks ``data.answer_tasks`` can train (ITR's planted instruction has no training rows)."""

MAX_PHASES = 8
"""At most this many phases after a config (``then``), counted over nested ones too."""

PHASE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
"""A config's name, which names its phase's output folder: no path separators, no leading dot."""


def _h(text: str) -> dict[str, str]:
    return {"help": text}


NEUTRAL_WHEN_OFF: dict[str, Any] = {"data.invented_names": 0.0, "trainer.value_probe": 0.0,
                                    "trainer.value_probe_scale": "head", "data.answer_tasks": [],
                                    "data.answer_rows": 1}
"""The SFT options added after runs were recorded, at the value that trains exactly as before them
(:attr:`covip.training.config_io.GroupedConfigMixin.neutral_when_off`)."""


@dataclass
class SftDataSection:
    """The synthetic world whose ground truth the model learns (training concepts only)."""

    world: str | None = field(default=None, metadata=_h(
        "A synthetic dataset folder (`covip data synth` output: train.jsonl, test.jsonl, concepts.json). "
        "None: <run.output_dir>/synth, generated from data.synth when missing."))
    synthesize_if_missing: bool = field(default=True, metadata=_h(
        "Generate the world from data.synth when the folder holds no dataset."))
    synth: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "SynthConfig fields of the generated world (n_concepts, n_train, context_size, image_size, ...)."))
    sample_types: list[str] = field(default_factory=lambda: list(SFT_SAMPLE_TYPES), metadata=_h(
        "Sample types to learn: caption (personalized captions), recognition (which concepts appear), "
        "verification (yes/no), describe (plain descriptions of the training samples' one-concept photos)."))
    max_samples: int | None = field(default=None, metadata=_h("Use at most this many training samples."))
    seed: int = field(default=0, metadata=_h(
        "Seed of what the rows say: query-header draws, target wordings, fresh identities, warm-up rows, "
        "subsampling (the order they are trained in follows run.seed)."))
    warmup_describe: int = field(default=0, metadata=_h(
        "Rows of plain photo descriptions trained first (a cheap warm-up that teaches the random vision tower "
        "to read looks before the long interleaved prompts; 0 = none). Needs 'describe' in sample_types."))
    matching_warmup: int = field(default=0, metadata=_h(
        "Recognition rows trained first in which the query image is the present concept's own memory photo "
        "(identical pixels; one-concept samples of the training split): a curriculum that lets the randomly "
        "initialized LM learn to match image tokens across images before the real queries, whose pose, "
        "backdrop and light differ. 0 = none. Needs 'recognition' in sample_types and same_type_batches."))
    queries_per_row: int = field(default=1, metadata=_h(
        "Recognition rows ask about this many query photos of the same concept images: the sample's own query, "
        "then follow-up turns (covip.sdk.prompts.recognition_followup_messages), each a training photo of one "
        "of the concepts with its labelled answer. More answer tokens per forward pass of the long context "
        "(4 turns cost about 1.4x one). > 1 trains on trl's conversational rows with assistant_only_loss."))
    copy_share: float = field(default=0.0, metadata=_h(
        "Share of recognition queries (first and follow-up turns) replaced by the present concept's own memory "
        "photo (identical pixels), mixed through training: the matching signal the random model learns first "
        "(see data.matching_warmup for the same rows as a warm-up instead)."))
    passes: int = field(default=1, metadata=_h(
        "Passes over the training samples in the dataset, each with its own draws (follow-up queries, copies, "
        "caption wordings, row order): fresh rows where trainer.num_train_epochs would repeat the same ones."))
    prompt_pack: str | None = field(default=None, metadata=_h(
        "A prompt pack file (TOML/JSON, covip.sdk.prompts.load_pack) wording the training rows and the "
        "held-out evaluation; null = covip's prompts. Use the same pack at inference."))
    recognition_rationale: bool = field(default=True, metadata=_h(
        "Recognition targets describe every concept image and the query before the box (false: the box alone)."))
    fresh_identities: bool = field(default=False, metadata=_h(
        "Each training caption row gives its context concepts fresh names and facts (drawn per row; dialogues "
        "and caption rewritten to match), so only the context can tell them, as in held-out evaluation. With the "
        "world's fixed names a model can name training concepts from their look alone (measured: "
        "training/README.md)."))
    invented_names: float = field(default=0.0, metadata=_h(
        "With fresh_identities: the probability that a fresh name (or each half of a compound one) is made up "
        "from syllables (covip.training.sft_data.invented_name) instead of drawn from the world's ~70 names, so "
        "guessing a likely name from the list cannot stand in for copying it (training/README.md). 0 = off."))
    caption_style: str = field(default="prose", metadata=_h(
        "Caption targets: 'prose' (a personalized caption naming the present concepts with their looks and "
        "facts) or 'indexed' (the recognition box of the present dialogues, then what the user said in them, "
        "verbatim: the miniature recipe's captions, which reuse the recognition chain; training/README.md)."))
    answer_tasks: list[str] = field(default_factory=list, metadata=_h(
        "Downstream tasks ('lsd', 'lar', 'who') whose questions the caption samples also train: each one-concept caption "
        "sample adds data.answer_rows rows, each asking a drawn task's question in a layout of the paper "
        "protocol, after the gold caption (CAG's answer pass) or straight after the photos (direct), answered "
        "with the concept's place (LSD, boxed) or action (LAR); 'who': an app's \"Who is this?\" in the layouts "
        "covip's assistant sends, answered with the box and the name. With fresh_identities the row's names and "
        "facts are the caption row's. [] = none (training/README.md, 'Answering after the caption')."))
    answer_rows: int = field(default=1, metadata=_h(
        "With answer_tasks: answer rows per one-concept caption sample (each draws its task; the first is CAG "
        "or direct by a draw, the next ones alternate, so 2 gives one of each)."))
    same_type_batches: bool = field(default=True, metadata=_h(
        "Fill every batch with one sample type (rows in a seeded order, batches shuffled): a short description "
        "row is never padded to a long caption prompt."))


@dataclass
class SftTrainerSection:
    """trl SFTTrainer settings (full fine-tuning; the loss is on the answers only)."""

    learning_rate: float = field(default=1e-3, metadata=_h("Peak learning rate (AdamW)."))
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata=_h("transformers scheduler name."))
    warmup_steps: float = field(default=20, metadata=_h("Warmup: a step count (>= 1) or a share of all steps."))
    weight_decay: float = field(default=0.0, metadata=_h("AdamW weight decay."))
    max_grad_norm: float = field(default=1.0, metadata=_h("Gradient clipping norm."))
    num_train_epochs: float = field(default=1.0, metadata=_h("Epochs over the training samples."))
    max_steps: int = field(default=-1, metadata=_h("Stop after this many optimizer steps (-1 = run the epochs)."))
    max_time_s: float | None = field(default=None, metadata=_h(
        "Stop after this many seconds of training (wall clock), whatever the epochs say (None = no limit)."))
    per_device_train_batch_size: int = field(default=8, metadata=_h("Samples per device per micro-step."))
    gradient_accumulation_steps: int = field(default=1, metadata=_h("Micro-steps per optimizer step."))
    max_length: int | None = field(default=None, metadata=_h(
        "Truncate prompt+answer to this many tokens (None = never; image tokens must not be cut)."))
    freeze_vision: bool = field(default=False, metadata=_h(
        "Keep the vision tower frozen during SFT: a pretrained tower, or the one vision_warmup trained first "
        "(measured: a frozen distilled tower keeps the pose-invariant features new-pose matching needs, "
        "training/README.md). A random-weight tower without a warm-up must train."))
    pointer_loss: float = field(default=0.0, metadata=_h(
        "Weight of the attention-pointer loss (covip.training.sft_pointer): on recognition rows heads of layers "
        "0-2 are shown where the retrieval circuit looks (concept photo -> its number, query photo -> the "
        "matching concept photos, answer -> query photo); on caption rows heads of layers 0-1 (name -> its "
        "photo, answer -> query photo and the matching name). 0 = off. Runs the text model with eager "
        "attention while training."))
    probe_loss: float = field(default=0.0, metadata=_h(
        "With pointer_loss > 0: weight of the logit-lens supervision of the recognition chain's values "
        "(covip.training.sft_pointer.probe_loss): after each supervised layer the residual stream, read through "
        "the model's own final norm and LM head, names the digit the chain carries there. 0 = off."))
    value_probe: float = field(default=0.0, metadata=_h(
        "With pointer_loss > 0: weight of the copy head's value supervision on caption-by-index rows "
        "(covip.training.sft_pointer.value_loss): the `recall` head's own output, read through the final norm "
        "and LM head among the row's dialogue words, names the token it attends to. The pointers teach where "
        "the head looks; this, what it carries (training/README.md measures why it is needed). 0 = off."))
    value_probe_scale: str = field(default="head", metadata=_h(
        "How value_probe reads the head's output: 'head' (normed by its own size, among the row's dialogue "
        "words: what it carries) or 'stream' (scaled as the final norm scales it inside the whole residual "
        "stream, over the whole vocabulary: how much it moves the model's own logits toward the token)."))
    answer_format_weight: float = field(default=1.0, metadata=_h(
        "With pointer_loss > 0: loss weight of a recognition answer's format tokens (`Answer: \\boxed{[`, `]}`, "
        "the end of turn) against 1 for its digits. Below 1 lets the one informative token lead while the "
        "retrieval circuit forms (training/README.md measures it)."))
    copy_name_weight: float | None = field(default=None, metadata=_h(
        "With pointer_loss > 0 and answer_format_weight < 1: loss weight of the tokens of a context concept's "
        "name inside a caption by index (the rest of the copy weighs answer_format_weight). The name is the one "
        "part of a caption only the context can give; null = answer_format_weight (training/README.md)."))
    extra_args: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "Any other trl SFTConfig / TrainingArguments fields, passed through as given."))


@dataclass
class SftVisionWarmupSection:
    """Before SFT: a random vision tower learns on its own (look attributes, contrastive pairs, or the mini
    embedder by distillation)."""

    enabled: bool = field(default=False, metadata=_h(
        "Warm up the vision tower before SFT (for a random-weight tower; off for a pretrained one)."))
    objective: str = field(default="attributes", metadata=_h(
        "'attributes': learn the training photos' look attributes (linear heads); 'distill': learn to embed "
        "fresh training-look photos as the `teacher` embedder does (tells look-alikes apart; covip.training.sft_distill); "
        "'contrastive': no teacher, the tower learns a look's memory photo vs its new-pose scene with open_clip's "
        "ClipLoss (what the `mini` embedder learns, in one step)."))
    teacher: str = field(default="mini", metadata=_h(
        "Embedder spec of the distillation teacher (the trained `mini` embedder: covip train embedder --config mini-cpu)."))
    teacher_cache_dir: str | None = field(default=None, metadata=_h(
        "Cache folder the `mini` teacher is loaded from (its run.cache_dir when built); null = covip's cache."))
    max_steps: int = field(default=2000, metadata=_h("Distillation: stop after this many steps (max_time_s may stop it first)."))
    image_size: int = field(default=128, metadata=_h("Distillation: side of the drawn photos, pixels."))
    max_time_s: float | None = field(default=None, metadata=_h("Stop the warm-up after this many seconds."))
    num_train_epochs: float = field(default=20.0, metadata=_h("Epochs over the training photos."))
    learning_rate: float = field(default=2e-3, metadata=_h("Peak learning rate (AdamW)."))
    per_device_train_batch_size: int = field(default=32, metadata=_h("Photos per step."))


@dataclass
class SftEvalSection:
    """The held-out evaluation written after training (test split: concepts never trained on)."""

    enabled: bool = field(default=True, metadata=_h("Evaluate the trained model on the held-out concepts."))
    initial: bool = field(default=True, metadata=_h(
        "Evaluate the model before training too (the random initialization's score, the baseline)."))
    max_samples: int | None = field(default=None, metadata=_h(
        "Evaluate at most this many held-out samples per type (None = all)."))
    sample_types: list[str] = field(default_factory=lambda: ["recognition"], metadata=_h(
        "Held-out sample types to score: recognition (set F1), verification (accuracy), caption (Acc+/Acc- "
        "with the lexical judge), describe (share of held-out one-concept photos described exactly)."))
    every_steps: int = field(default=0, metadata=_h(
        "Also score held-out recognition every this many optimizer steps during training (the learning curve, "
        "in logs/metrics.jsonl and eval.json's 'curve'; 0 = only at the end)."))
    curve_samples: int = field(default=60, metadata=_h(
        "Held-out recognition samples scored at each curve point (the first of the evaluation's samples)."))
    batch_size: int = field(default=16, metadata=_h("Prompts per generate() call."))
    max_new_tokens: int = field(default=160, metadata=_h("Answer budget of recognition/verification."))
    caption_max_new_tokens: int = field(default=200, metadata=_h("Answer budget of captions."))
    permutations: int = field(default=2000, metadata=_h(
        "Shuffles of the predictions across samples for the chance null of recognition F1."))


@dataclass
class SftRunSection(TrainRunSection):
    """Where and how the SFT run executes."""

    output_dir: str = field(default="runs/sft", metadata=_h(
        "Run folder: model/ (the SFT checkpoint with its processor), logs/metrics.jsonl, eval.json, result.json."))
    seed: int = field(default=0, metadata=_h(
        "Training seed: the order the rows are trained in (same_type_batches' batch order too), dropout, new "
        "weights. Two runs that differ only here train on the same rows in another order."))
    logging_steps: int = field(default=10, metadata=_h("Log metrics every this many optimizer steps."))
    save_total_limit: int | None = field(default=1, metadata=_h("Keep at most this many checkpoints."))


_SECTIONS: dict[str, type] = {
    "model": ModelSection, "data": SftDataSection, "vision_warmup": SftVisionWarmupSection,
    "trainer": SftTrainerSection, "eval": SftEvalSection, "run": SftRunSection,
}


@dataclass
class SftConfig(GroupedConfigMixin):
    """A whole SFT run: the six groups, the ``quick`` overrides, a name and a description."""

    override_what: ClassVar[str] = "SFT config key"
    neutral_when_off: ClassVar[Mapping[str, Any]] = NEUTRAL_WHEN_OFF
    open_groups: ClassVar[tuple[str, ...]] = ("data.synth",)

    model: ModelSection = field(default_factory=lambda: ModelSection(name_or_path="mini-qwen3-vl",
                                                                     gradient_checkpointing=False),
                                metadata=_h("The model to train."))
    data: SftDataSection = field(default_factory=SftDataSection, metadata=_h("The synthetic world."))
    vision_warmup: SftVisionWarmupSection = field(default_factory=SftVisionWarmupSection, metadata=_h(
        "The vision tower's warm-up before SFT: look attributes or distillation from the mini embedder."))
    trainer: SftTrainerSection = field(default_factory=SftTrainerSection, metadata=_h("trl SFTTrainer settings."))
    eval: SftEvalSection = field(default_factory=SftEvalSection, metadata=_h("Held-out evaluation."))
    run: SftRunSection = field(default_factory=SftRunSection, metadata=_h("Output, device, logging."))
    then: list[str] = field(default_factory=list, metadata=_h(
        "Phases run after this one, in order: each an SFT config (a bundled name or a YAML file, relative to "
        "this config's folder) that continues from the previous phase's model on the same world, into "
        "<run.output_dir>/<its name>; the world, seed, device, threads and progress carry over. The miniature "
        "recipe learns recognition first, then captions (training/README.md)."))
    quick: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "Dotted overrides applied by --quick (e.g. trainer.max_time_s: 90), checked like any override."))
    name: str = field(default="custom", metadata=_h("A short name of this configuration."))
    description: str = field(default="", metadata=_h("What this configuration is for."))
    source: str | None = field(default=None, metadata=_h("The file it was loaded from (set by the loader)."))

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> SftConfig:
        """Build from a nested mapping; unknown keys and bad values raise InputError naming the dotted key."""
        return config_from_dict(cls, _SECTIONS, data, what="an SFT config", unknown="SFT config key", source=source,
                                defaults={"model": {"name_or_path": "mini-qwen3-vl", "gradient_checkpointing": False}})

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict that :meth:`from_dict` turns back into an equal config."""
        return config_to_dict(self)

    def quick_variant(self) -> SftConfig:
        """This config with its ``quick`` overrides applied (the minutes-long run of the same recipe)."""
        return self.with_quick("the SFT config")

    def validate(self) -> None:
        """Raise InputError naming the dotted key of the first bad value."""
        m, d, t, e, r = self.model, self.data, self.trainer, self.eval, self.run
        _check(m.dtype in DTYPES, "model.dtype", f"must be one of {list(DTYPES)}, got {m.dtype!r}")
        _check(bool(m.name_or_path.strip()), "model.name_or_path", "must not be empty")
        for key, types in (("data.sample_types", d.sample_types), ("eval.sample_types", e.sample_types)):
            bad = [x for x in types if x not in SFT_SAMPLE_TYPES]
            _check(not bad and bool(types), key, f"must be a non-empty subset of {list(SFT_SAMPLE_TYPES)}, got {types}")
        _check(d.max_samples is None or d.max_samples > 0, "data.max_samples", "must be > 0 or null")
        _check(d.warmup_describe >= 0, "data.warmup_describe", f"must be >= 0, got {d.warmup_describe}")
        _check(d.warmup_describe == 0 or "describe" in d.sample_types, "data.warmup_describe",
               "needs 'describe' in data.sample_types")
        _check(d.warmup_describe == 0 or d.same_type_batches, "data.warmup_describe",
               "needs data.same_type_batches (the rows are trained in order)")
        _check(d.matching_warmup >= 0, "data.matching_warmup", f"must be >= 0, got {d.matching_warmup}")
        _check(d.matching_warmup == 0 or ("recognition" in d.sample_types and d.same_type_batches),
               "data.matching_warmup", "needs 'recognition' in data.sample_types and data.same_type_batches: true")
        _check(1 <= d.queries_per_row <= 16, "data.queries_per_row", f"must be 1-16, got {d.queries_per_row}")
        _check(1 <= d.passes <= 1000, "data.passes", f"must be 1-1000, got {d.passes}")
        _check(0.0 <= d.invented_names <= 1.0, "data.invented_names", f"must be 0-1, got {d.invented_names}")
        _check(d.invented_names == 0 or d.fresh_identities, "data.invented_names",
               "makes up fresh names: needs data.fresh_identities: true")
        _check(d.caption_style in ("prose", "indexed"), "data.caption_style",
               f"must be 'prose' or 'indexed', got {d.caption_style!r}")
        bad = [x for x in d.answer_tasks if x not in ANSWER_TASKS]
        _check(not bad and len(set(d.answer_tasks)) == len(d.answer_tasks), "data.answer_tasks",
               f"must be distinct tasks of {list(ANSWER_TASKS)}, got {d.answer_tasks}")
        _check(1 <= d.answer_rows <= 8, "data.answer_rows", f"must be 1-8, got {d.answer_rows}")
        _check(not d.answer_tasks or "caption" in d.sample_types, "data.answer_tasks",
               "adds rows to the caption samples: needs 'caption' in data.sample_types")
        _check(0.0 <= d.copy_share <= 1.0, "data.copy_share", f"must be between 0 and 1, got {d.copy_share}")
        _check(d.prompt_pack is None or bool(str(d.prompt_pack).strip()), "data.prompt_pack",
               "must be a pack file or null")
        if d.synth:
            from covip.training.data.synth import SynthConfig

            try:
                SynthConfig(**d.synth)
            except TypeError as exc:
                raise InputError(f"config key 'data.synth': {exc}") from None
            except InputError as exc:
                raise InputError(f"config key 'data.synth': {exc}") from None
        v = self.vision_warmup
        _check(v.learning_rate > 0, "vision_warmup.learning_rate", f"must be > 0, got {v.learning_rate}")
        _check(v.num_train_epochs > 0, "vision_warmup.num_train_epochs", f"must be > 0, got {v.num_train_epochs}")
        _check(v.max_time_s is None or v.max_time_s > 0, "vision_warmup.max_time_s", "must be > 0 or null")
        _check(v.per_device_train_batch_size >= 1, "vision_warmup.per_device_train_batch_size", "must be >= 1")
        _check(v.objective in ("attributes", "distill", "contrastive"), "vision_warmup.objective",
               f"must be 'attributes', 'distill' or 'contrastive', got {v.objective!r}")
        _check(v.max_steps >= 1, "vision_warmup.max_steps", f"must be >= 1, got {v.max_steps}")
        _check(16 <= v.image_size <= 1024, "vision_warmup.image_size", f"must be 16-1024, got {v.image_size}")
        _check(t.learning_rate > 0, "trainer.learning_rate", f"must be > 0, got {t.learning_rate}")
        _check(t.num_train_epochs > 0, "trainer.num_train_epochs", f"must be > 0, got {t.num_train_epochs}")
        _check(t.max_steps == -1 or t.max_steps >= 1, "trainer.max_steps", f"must be -1 or >= 1, got {t.max_steps}")
        _check(t.max_time_s is None or t.max_time_s > 0, "trainer.max_time_s", "must be > 0 or null")
        _check(t.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
        _check(t.weight_decay >= 0, "trainer.weight_decay", f"must be >= 0, got {t.weight_decay}")
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            _check(getattr(t, key) >= 1, f"trainer.{key}", f"must be >= 1, got {getattr(t, key)}")
        _check(t.max_length is None or t.max_length >= 16, "trainer.max_length", "must be >= 16 or null")
        _check(0.0 <= t.pointer_loss <= 100.0, "trainer.pointer_loss", f"must be 0-100, got {t.pointer_loss}")
        _check(0.0 <= t.probe_loss <= 100.0, "trainer.probe_loss", f"must be 0-100, got {t.probe_loss}")
        _check(t.probe_loss == 0 or t.pointer_loss > 0, "trainer.probe_loss",
               "reads the recognition pointers: needs trainer.pointer_loss > 0")
        _check(0.0 <= t.value_probe <= 100.0, "trainer.value_probe", f"must be 0-100, got {t.value_probe}")
        _check(t.value_probe == 0 or t.pointer_loss > 0, "trainer.value_probe",
               "reads the recall pointers: needs trainer.pointer_loss > 0")
        _check(t.value_probe_scale in ("head", "stream"), "trainer.value_probe_scale",
               f"must be 'head' or 'stream', got {t.value_probe_scale!r}")
        _check(t.copy_name_weight is None or 0.0 <= t.copy_name_weight <= 1.0, "trainer.copy_name_weight",
               f"must be 0-1 or null, got {t.copy_name_weight}")
        _check(t.copy_name_weight is None or (t.pointer_loss > 0 and t.answer_format_weight < 1),
               "trainer.copy_name_weight", "weighs names apart from the copy's answer_format_weight: needs "
               "trainer.pointer_loss > 0 and trainer.answer_format_weight < 1 (or set it null)")
        _check(0.0 <= t.answer_format_weight <= 1.0, "trainer.answer_format_weight",
               f"must be 0-1, got {t.answer_format_weight}")
        _check(t.pointer_loss == 0 or bool({"caption", "recognition"} & set(d.sample_types)), "trainer.pointer_loss",
               "supervises caption and recognition rows: needs one of them in data.sample_types")
        _check(e.max_samples is None or e.max_samples > 0, "eval.max_samples", "must be > 0 or null")
        for key in ("batch_size", "max_new_tokens", "caption_max_new_tokens"):
            _check(getattr(e, key) >= 1, f"eval.{key}", f"must be >= 1, got {getattr(e, key)}")
        _check(e.every_steps >= 0, "eval.every_steps", f"must be >= 0, got {e.every_steps}")
        _check(e.curve_samples >= 1, "eval.curve_samples", f"must be >= 1, got {e.curve_samples}")
        _check(e.every_steps == 0 or "recognition" in e.sample_types, "eval.every_steps",
               "needs 'recognition' in eval.sample_types (the curve scores held-out recognition)")
        _check(e.permutations >= 100, "eval.permutations", f"must be >= 100, got {e.permutations}")
        _check(bool(r.output_dir.strip()), "run.output_dir", "must not be empty")
        _check(r.logging_steps >= 1, "run.logging_steps", f"must be >= 1, got {r.logging_steps}")
        _check(r.save_steps >= 0, "run.save_steps", f"must be >= 0, got {r.save_steps}")
        _check(r.torch_threads is None or r.torch_threads >= 1, "run.torch_threads", "must be >= 1 or null")
        _check(not (r.bf16 and m.dtype == "float16"), "run.bf16", "bf16 mixed precision with float16 weights")
        _check(isinstance(self.quick, dict), "quick", "must be a mapping of dotted overrides")
        _check(len(self.then) <= MAX_PHASES, "then", f"at most {MAX_PHASES} phases, got {len(self.then)}")
        _check(all(isinstance(p, str) and p.strip() for p in self.then), "then",
               f"must be a list of SFT config names or YAML files, got {self.then!r}")


def load_sft_config(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None, *,
                    quick: bool = False) -> SftConfig:
    """Load a bundled config by name (``mini-cpu``) or a YAML file, then ``quick`` and dotted ``overrides``.

    A recipe file (GSPO groups at the top level) holds the SFT config under ``sft:``; its top-level
    ``name`` and ``description`` are used when the ``sft`` group has none. ``extends: FILE`` (a YAML file in
    the same folder) starts from that file's keys, which this file's own replace group by group.
    """
    path = resolve_config_path(name_or_path)
    data = _read_extended(path)
    if isinstance(data, dict) and "sft" in data:
        section = data["sft"]
        if not isinstance(section, dict):
            raise InputError(f"config key 'sft' in {path}: must be a mapping (the SFT stage), got "
                             f"{type(section).__name__}")
        section = dict(section)
        for key in ("name", "description"):
            if key in data and key not in section:
                section[key] = data[key]
        data = section
    config = SftConfig.from_dict(data, source=str(path))
    if quick:
        config = config.quick_variant()
    return config.with_overrides(overrides) if overrides else config


EXTENDS_DEPTH = 4
"""At most this many files behind a config through ``extends:`` (a chain, not a loop)."""


def _read_extended(path: Path, depth: int = 0) -> Any:
    """The YAML of ``path`` merged over its ``extends:`` base, a YAML file in the same folder (so relative paths
    in either mean the same): mappings merge key by key, anything else (lists included) is replaced."""
    data = read_yaml(path)
    if not isinstance(data, dict) or "extends" not in data:
        return data
    data = dict(data)
    base_name = data.pop("extends")
    base_path = path_inside(path.parent, base_name) if isinstance(base_name, str) else None
    if base_path is None or not base_path.is_file() or base_path.suffix not in (".yaml", ".yml"):
        raise InputError(f"config key 'extends' in {path}: must name a YAML config file in {path.parent} "
                         f"(e.g. extends: mini-cpu-captions.yaml), got {base_name!r}")
    if depth >= EXTENDS_DEPTH:
        raise InputError(f"config key 'extends' in {path}: more than {EXTENDS_DEPTH} files behind one config; "
                         "does a file extend itself?")
    base = _read_extended(base_path, depth + 1)
    if not isinstance(base, dict):
        raise InputError(f"config key 'extends' in {path}: {base_path} holds no mapping of config groups")
    return _merged(base, data)


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_phases(config: SftConfig) -> list[SftConfig]:
    """The SFT configs named by ``config.then`` (and theirs, depth first), each set to continue this run: the world,
    seed, device, threads and progress of ``config``, the output ``<run.output_dir>/<name>``. The model each starts
    from is set by :func:`covip.training.sft.train_sft` (the previous phase's checkpoint). Loaded before training,
    so a bad phase fails in seconds, not after the first phase's hour."""
    out_dir = Path(config.run.output_dir)
    phases: list[SftConfig] = []
    seen = {config.name}

    def visit(parent: SftConfig) -> None:
        for entry in parent.then:
            if len(phases) >= MAX_PHASES:
                raise InputError(f"config key 'then': more than {MAX_PHASES} phases after {config.name!r} "
                                 f"(counting nested ones); is a phase naming itself?")
            path = pack_path(entry, parent.source)  # a file as given, else beside the parent config
            try:
                phase = load_sft_config(path if path.is_file() else entry)
            except InputError as exc:
                raise InputError(f"config key 'then' of {parent.name!r}: phase {entry!r}: {exc}") from None
            if not PHASE_NAME.fullmatch(phase.name):
                raise InputError(f"config key 'then' of {parent.name!r}: phase {entry!r} is named {phase.name!r}; "
                                 f"a phase's name names its folder: letters, digits, '.', '_' or '-', not starting "
                                 f"with '.'")
            if phase.name in seen:
                raise InputError(f"config key 'then' of {parent.name!r}: phase {entry!r} is named {phase.name!r} "
                                 f"like an earlier phase; each phase writes <run.output_dir>/<name>: rename it")
            seen.add(phase.name)
            r = config.run
            phases.append(phase.with_overrides({
                "data.world": config.data.world, "run.output_dir": str(out_dir / phase.name), "run.seed": r.seed,
                "run.use_cpu": r.use_cpu, "run.torch_threads": r.torch_threads, "run.progress": r.progress,
                "then": []}))
            visit(phase)

    visit(config)
    return phases


def sft_config_help() -> dict[str, str]:
    """Every SFT config key (dotted) with its help text and default."""
    return sections_help(_SECTIONS)
