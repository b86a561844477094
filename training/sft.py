"""Stage 1, supervised warm start: teach a VLM the synthetic world's ground truth with trl's SFTTrainer.

:func:`train_sft` runs one job described by an :class:`~covip.training.sft_config.SftConfig`
(``load_sft_config("mini-cpu")``):

1. data: the synthetic world (generated into ``<output_dir>/synth`` when missing); its *training*
   concepts' samples become prompt/completion rows (:mod:`.sft_data`: prompts from
   :mod:`covip.sdk.prompts`, answers from the world's ground truth); held-out concepts are refused;
2. model: ``AutoModelForImageTextToText`` + ``AutoProcessor`` (a built-in name such as
   ``mini-qwen3-vl`` is built first); every weight trains (``trainer.freeze_vision`` keeps the vision tower
   fixed during SFT, after any warm-up); with ``vision_warmup.enabled`` a random vision tower first learns on its own, with
   transformers' Trainer, the training photos' look attributes (:mod:`.sft_vision`) or to embed photos as
   the trained ``mini`` embedder does (``objective: distill``, :mod:`.sft_distill`);
3. trl: ``SFTTrainer`` with ``completion_only_loss`` (the loss is on the answers only), stopped by the
   epochs, ``trainer.max_steps`` or the wall-time budget ``trainer.max_time_s``, whichever comes first;
4. evaluation (``eval.enabled``): the random initialization and the trained model answer the test split's
   samples (concepts never trained on), scored by :mod:`.sft_eval` with chance levels;
5. outputs under ``run.output_dir``: ``model/`` (the SFT checkpoint with its processor: the input of GSPO
   and of the export package), ``logs/metrics.jsonl``, ``config.yaml``, ``eval.json``, ``result.json``.

On the CPU, trl scores every position's vocabulary (its compact LM head needs Triton), which for long
interleaved prompts costs several times the model itself;
:class:`~covip.training.sft_trainer.CompletionOnlySFTTrainer` asks the model for the answer positions'
logits only (``logits_to_keep``): the same loss at a fraction of the cost.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from covip.sdk.errors import CovipError
from covip.sdk.support import require
from covip.training.config_io import pack_path
from covip.training.data.schema import write_json
from covip.training.sft_config import SftConfig, load_sft_config

__all__ = ["SftResult", "train_sft", "finished_run", "config_hash", "warm_start_vision", "sft_args",
           "PROVENANCE_FILE"]

log = logging.getLogger(__name__)

PROVENANCE_FILE = "covip_sft.json"


@dataclass
class SftResult:
    """What :func:`train_sft` produced."""

    output_dir: Path
    model_dir: Path
    metrics_path: Path
    config_path: Path
    eval_path: Path | None
    global_step: int
    epoch: float | None
    train_s: float
    runtime_s: float
    n_samples: int
    n_rows: int = 0
    """Training rows (samples + describe rows)."""
    sample_types: dict[str, int] = field(default_factory=dict)
    stopped_by_time: bool = False
    evaluation: dict[str, Any] | None = None
    world_dir: Path | None = None
    """The synthetic world trained on (``data.world`` or the one generated under ``output_dir``)."""
    phases: list[dict[str, Any]] = field(default_factory=list)
    """With ``then`` phases: every phase's summary, first to last (this result is the last phase's)."""
    config_sha256: str = ""
    """:func:`config_hash` of the config this run trained with."""
    reused: bool = False
    """True when ``train_sft(reuse_finished=True)`` took this finished run instead of training it again (its
    ``train_s``/``runtime_s`` are the earlier run's)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (paths as strings)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def sft_args(config: SftConfig, output_dir: Path) -> Any:
    """The trl ``SFTConfig`` of a run (settings from ``config.trainer``, runtime from ``config.run``)."""
    from trl import SFTConfig

    from covip.training.gspo import trl_args

    t, r = config.trainer, config.run
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir), seed=r.seed, data_seed=r.seed, bf16=r.bf16, fp16=False, use_cpu=r.use_cpu,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps, per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, max_length=t.max_length,
        completion_only_loss=config.data.queries_per_row == 1, assistant_only_loss=config.data.queries_per_row > 1,
        gradient_checkpointing=config.model.gradient_checkpointing,
        logging_steps=r.logging_steps, save_strategy="steps" if r.save_steps else "no",
        save_steps=r.save_steps or 500, save_total_limit=r.save_total_limit,
        report_to=list(r.report_to) or "none", disable_tqdm=not r.progress,
        remove_unused_columns=False, dataloader_num_workers=0,
        # rows come in the order sft_data.order_rows gives them: warm-up first, one sample type per batch
        train_sampling_strategy="sequential" if config.data.same_type_batches else "random",
    )
    kwargs.update(t.extra_args)
    return trl_args(SFTConfig, kwargs, "trainer.extra_args", "SFT")


def train_sft(config: SftConfig | str | Path, *, callbacks: Sequence[Any] | None = None,
              reuse_finished: bool = False) -> SftResult:
    """Run SFT as ``config`` says (an SftConfig, a bundled config name or a YAML path), then its ``then`` phases;
    see the module doc. ``reuse_finished``: a phase whose output folder already holds a finished run of exactly
    this config (its ``result.json`` records the config's hash), and whose earlier phases were all reused too, is
    not trained again (``covip repro mini --resume``)."""
    start = time.time()
    if not isinstance(config, SftConfig):
        config = load_sft_config(config)
    torch = require("torch", feature="SFT training", extra="train")
    require("trl", feature="SFT training", extra="train")
    require("datasets", feature="SFT training", extra="train")
    from covip.training.gspo import torch_threads
    from covip.training.sft_config import load_phases

    phases = load_phases(config)  # every phase's config checked before the first trains
    done: list[SftResult] = []
    trained = False
    for phase in [config, *phases]:
        if done:  # each phase continues from the previous checkpoint on the same world
            phase = phase.with_overrides({"model.name_or_path": str(done[-1].model_dir),
                                          "data.world": str(done[0].world_dir)})
            log.info("SFT phase %r from %s into %s", phase.name, done[-1].model_dir, phase.run.output_dir)
        # a phase after one that trained again starts from a new checkpoint at the same path: never reused
        finished = finished_run(phase) if reuse_finished and not trained else None
        if finished is not None:
            log.info("SFT phase %r: reusing the finished run in %s", phase.name, finished.output_dir)
            finished.reused = True
            done.append(finished)
            continue
        with torch_threads(torch, phase.run.torch_threads):
            done.append(_train(phase, callbacks, time.time() if done else start))
        trained = True
    result = done[0]
    if not phases:
        return result
    final = done[-1]
    final.phases = [{"name": c.name, **r.to_dict()} for c, r in zip([config, *phases], done, strict=True)]
    final.runtime_s = round(time.time() - start, 2)
    write_json(result.output_dir / "result.json", {**result.to_dict(), "phases": final.phases,
                                                     "final_model_dir": str(final.model_dir)})
    return final


def config_hash(config: SftConfig) -> str:
    """sha256 of a run's config as trained (the YAML of its ``identity()``: progress display, description and
    options left off aside): what ``finished_run`` compares."""
    import hashlib

    from covip.training.config_io import dump_yaml

    identity = config.with_overrides({"run.progress": True}).identity()
    return hashlib.sha256(dump_yaml(identity).encode()).hexdigest()


def _same_but_later_phases(config: SftConfig, out: Path, data: dict[str, Any]) -> bool:
    """Whether the finished run in ``out`` trained exactly as ``config`` would, its ``then`` (the phases after it,
    which do not change what it trains) aside: its config as trained (``config.yaml``) has the recorded hash and
    differs from ``config`` at most there. A recipe that gains a phase keeps the phases it had. (Dropping ``then``
    from :func:`config_hash` itself would have been simpler, but would orphan every phase recorded so far.)"""
    import yaml

    try:
        raw = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
        trained = SftConfig.from_dict(raw, source=config.source)
        if config_hash(trained) != data.get("config_sha256"):
            return False
        return config_hash(trained.with_overrides({"then": []})) == config_hash(config.with_overrides({"then": []}))
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError, CovipError):
        return False


def finished_run(config: SftConfig) -> SftResult | None:
    """The result of a finished run of exactly ``config`` in its output folder (``result.json`` with the config's
    hash, or :func:`_same_but_later_phases`; the checkpoint in place), else None."""
    out = Path(config.run.output_dir).expanduser().resolve()
    try:
        data = json.loads((out / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("config_sha256") != config_hash(config) and not _same_but_later_phases(config, out, data):
        return None
    known = {f.name for f in fields(SftResult)}
    kwargs = {k: v for k, v in data.items() if k in known and k != "phases"}
    paths = ("output_dir", "model_dir", "metrics_path", "config_path", "eval_path", "world_dir")
    try:
        kwargs.update({k: Path(kwargs[k]) if kwargs.get(k) else None for k in paths})
        result = SftResult(**kwargs)
    except TypeError:
        return None
    if result.model_dir is None or not (result.model_dir / PROVENANCE_FILE).is_file():
        return None
    return result


def _train(config: SftConfig, callbacks: Sequence[Any] | None, start: float) -> SftResult:
    import torch

    from covip.training.gspo import is_vision_module, load_policy, resume_target
    from covip.training.gspo_config import VISION_MODULE_NAMES
    from covip.training.gspo_logging import MetricsCallback
    from covip.training.sft_data import (
        build_sft_dataset,
        ensure_world,
        load_heldout_samples,
        load_sft_samples,
        load_world,
        takes_answer_rows,
    )
    from covip.training.sft_eval import evaluate_heldout

    out = Path(config.run.output_dir).expanduser().resolve()
    resume = resume_target(config.run.resume_from_checkpoint, out)
    logs_dir = out / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    progress = config.run.progress

    root = ensure_world(config.data, out, progress=progress)
    world = load_world(root)
    samples = load_sft_samples(config.data, root)
    types = config.data.sample_types
    d = config.data
    from covip.sdk.prompts import load_pack

    pack = load_pack(pack_path(d.prompt_pack, config.source)) if d.prompt_pack else None
    dataset = build_sft_dataset(samples, world, seed=d.seed, order_seed=config.run.seed,
                                describe="describe" in types, types=[t for t in types if t != "describe"],
                                warmup_describe=d.warmup_describe,
                                rationale=d.recognition_rationale, matching_warmup=d.matching_warmup,
                                queries_per_row=d.queries_per_row, copy_share=d.copy_share, passes=d.passes,
                                pack=pack, context_spans=config.trainer.pointer_loss > 0, identities=d.fresh_identities,
                                caption_style=d.caption_style, invented_names=d.invented_names,
                                answer_tasks=d.answer_tasks, answer_rows=d.answer_rows,
                                batch_size=config.trainer.per_device_train_batch_size if d.same_type_batches else None)
    counts: dict[str, int] = {}
    for s in samples:
        if s.sample_type in types:
            counts[s.sample_type] = counts.get(s.sample_type, 0) + d.passes  # rows: one per sample and pass
    if "describe" in types:
        counts["describe"] = len(dataset) - sum(counts.values()) - d.warmup_describe - d.matching_warmup
        counts["describe_warmup"] = d.warmup_describe
    if d.matching_warmup:
        counts["matching_warmup"] = d.matching_warmup
    if d.answer_tasks:
        counts["answer"] = d.passes * d.answer_rows * sum(map(takes_answer_rows, samples))
    log.info("SFT on %d samples %s from %s", len(samples), counts, root)
    e = config.eval
    heldout = load_heldout_samples(root, e.sample_types, e.max_samples, world) if e.enabled else {}

    torch.manual_seed(config.run.seed)
    model, processor, _ = load_policy(config)  # reads config.model and config.run.bf16 only
    eval_kwargs = dict(max_new_tokens=e.max_new_tokens, caption_max_new_tokens=e.caption_max_new_tokens,
                       batch_size=e.batch_size, permutations=e.permutations, progress=progress, world=world,
                       pack=pack)
    before = evaluate_heldout(model, processor, heldout, label="init", **eval_kwargs) \
        if heldout and e.initial else None

    vision_report = _vision_warmup(config, model, processor, out, samples, world, heldout)

    if config.trainer.freeze_vision:  # after the warm-up, which trains the tower it then keeps fixed
        for name, param in model.named_parameters():
            if is_vision_module(name, VISION_MODULE_NAMES):
                param.requires_grad_(False)

    from covip.training.sft_trainer import CompletionOnlySFTTrainer, TimeBudgetCallback

    budget = TimeBudgetCallback(config.trainer.max_time_s)
    metrics_path = logs_dir / "metrics.jsonl"
    if resume is None and metrics_path.exists():
        metrics_path.unlink()
    metrics = MetricsCallback(metrics_path, logs_dir / "tensorboard" if config.run.tensorboard else None)
    saved_template = processor.chat_template
    if d.queries_per_row > 1:  # several answers per row: trl's assistant-only loss needs generation markers
        from covip.training.sft_trainer import training_chat_template

        processor.chat_template = training_chat_template(saved_template)
    curve = None
    if e.every_steps and heldout.get("recognition"):
        from covip.training.sft_data import copy_query
        from covip.training.sft_eval import generate_answers, score_recognition
        from covip.training.sft_trainer import CurveCallback

        subset = heldout["recognition"][:e.curve_samples]
        copies = [copy_query(s) for s in subset if len(s.answer or ()) == 1]

        def score() -> dict[str, Any]:
            answers = generate_answers(model, processor, subset, max_new_tokens=e.max_new_tokens,
                                       batch_size=e.batch_size, progress=False, pack=pack)
            s = score_recognition(answers, subset, permutations=200)
            point = {"heldout_recognition_f1": s["f1"], "heldout_recognition_accuracy": s["accuracy"],
                     "heldout_null_f1": s["permutation"]["mean"], "heldout_p_value": s["permutation"]["p_value"],
                     "heldout_n": s["n"]}
            if copies:  # the same held-out questions with the query replaced by the concept's own memory photo
                answers = generate_answers(model, processor, copies, max_new_tokens=e.max_new_tokens,
                                           batch_size=e.batch_size, progress=False, pack=pack)
                point["heldout_copy_accuracy"] = score_recognition(answers, copies, permutations=100)["accuracy"]
            return point

        curve = CurveCallback(e.every_steps, score, metrics.write)
    trainer = CompletionOnlySFTTrainer(
        model=model, args=sft_args(config, out), train_dataset=dataset, processing_class=processor,
        callbacks=[metrics, budget, *([curve] if curve else []), *(callbacks or [])])
    saved_attention = _use_pointer_supervision(config, model, processor, trainer)
    from covip.training.trainer_progress import use_progress_lines

    use_progress_lines(trainer, config.run.progress, "covip train sft")
    train_start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        metrics.close()
        processor.chat_template = saved_template  # the saved model keeps its inference template
        if saved_attention is not None:
            model.set_attn_implementation(saved_attention)
    train_s = time.perf_counter() - train_start
    model = trainer.accelerator.unwrap_model(trainer.model)
    model_dir = _save_model(model, processor, out / "model", config, trainer.state.global_step, train_s,
                            prompt_version=(pack or load_pack(None)).tag())

    evaluation = None
    eval_path = None
    if heldout:
        after = evaluate_heldout(model, processor, heldout, label="sft", **eval_kwargs)
        evaluation = {"heldout_concepts": len(world.held_out()), "samples": {k: len(v) for k, v in heldout.items()},
                      "random_init": before, "sft": after, "vision_warmup": vision_report,
                      "curve": curve.points if curve else []}
        eval_path = out / "eval.json"
        write_json(eval_path, evaluation)
    result = SftResult(
        output_dir=out, model_dir=model_dir, metrics_path=metrics_path, config_path=out / "config.yaml",
        eval_path=eval_path, global_step=trainer.state.global_step, epoch=trainer.state.epoch,
        train_s=round(train_s, 2), runtime_s=round(time.time() - start, 2), n_samples=len(samples),
        n_rows=len(dataset), sample_types=counts, stopped_by_time=budget.stopped, evaluation=evaluation,
        world_dir=root, config_sha256=config_hash(config))
    write_json(out / "result.json", result.to_dict())
    return result


def _vision_warmup(config: SftConfig, model: Any, processor: Any, out: Path, samples: Sequence[Any], world: Any,
                   heldout: dict[str, Any]) -> dict[str, Any] | None:
    """The vision warm-up of ``config`` (distillation, contrastive pairs or look attributes) on ``model`` in place;
    its report."""
    v = config.vision_warmup
    if not v.enabled:
        return None
    if v.objective in ("distill", "contrastive"):
        from contextlib import nullcontext

        from covip.sdk.vision import make_embedder
        from covip.training.sft_distill import distill_vision

        teaching = make_embedder(v.teacher, device="cpu" if config.run.use_cpu else "auto",
                                 cache_dir=v.teacher_cache_dir) if v.objective == "distill" else nullcontext()
        with teaching as teacher:
            return distill_vision(
                model, processor, teacher, output_dir=str(out / "vision_warmup"), max_time_s=v.max_time_s,
                max_steps=v.max_steps, learning_rate=v.learning_rate, batch_size=v.per_device_train_batch_size,
                image_size=v.image_size, seed=config.run.seed, use_cpu=config.run.use_cpu,
                progress=config.run.progress)
    from covip.training.sft_data import describe_items
    from covip.training.sft_vision import warm_up_vision

    held_photos = describe_items([s for group in heldout.values() for s in group], world) if heldout else []
    return warm_up_vision(
        model, processor, describe_items(samples, world), output_dir=str(out / "vision_warmup"),
        max_time_s=v.max_time_s, num_train_epochs=v.num_train_epochs, learning_rate=v.learning_rate,
        batch_size=v.per_device_train_batch_size, seed=config.run.seed, use_cpu=config.run.use_cpu,
        heldout=held_photos, progress=config.run.progress)


def _use_pointer_supervision(config: SftConfig, model: Any, processor: Any, trainer: Any) -> str | None:
    """With ``trainer.pointer_loss`` > 0: eager attention in the text model (it returns the weights the loss
    reads), the pointer collator and the loss weight on ``trainer``; returns the attention implementation to
    restore after training (None when off)."""
    weight = config.trainer.pointer_loss
    if not weight:
        return None
    from covip.sdk.errors import InputError
    from covip.training.sft_pointer import HEADS, KINDS, PointerCollator

    text = model.config.text_config
    styles = {"caption": "indexed_caption" if config.data.caption_style == "indexed" else "caption"}
    used = {kind: HEADS[kind] for stype in config.data.sample_types for kind in KINDS.get(styles.get(stype, stype), ())}
    layers = max(layer for layer, _ in used.values()) + 1
    heads = max(head for _, head in used.values()) + 1
    if text.num_hidden_layers < layers or text.num_attention_heads < heads:
        raise InputError(f"trainer.pointer_loss supervises heads {used} (layer, head): the model needs >= {layers} "
                         f"decoder layers and >= {heads} attention heads (it has {text.num_hidden_layers} and "
                         f"{text.num_attention_heads}); set trainer.pointer_loss: 0")
    saved = model.config._attn_implementation or "sdpa"
    model.set_attn_implementation("eager")
    trainer.pointer_weight = float(weight)
    trainer.probe_weight = float(config.trainer.probe_loss)
    trainer.value_weight = float(config.trainer.value_probe)
    trainer.value_scale = config.trainer.value_probe_scale
    trainer.data_collator = PointerCollator(trainer.data_collator, processor.tokenizer,
                                            model.config.image_token_id, config.trainer.answer_format_weight,
                                            name_weight=config.trainer.copy_name_weight)
    return saved


def warm_start_vision(config: SftConfig, target: str | Path) -> tuple[Path, dict[str, Any]]:
    """Run only the vision warm-up of ``config`` and save the warmed model (with its processor) at ``target``.

    Several SFT runs (the seeds of ``covip repro mini``) then start from one warm-up (``model.name_or_path``
    = ``target``, ``vision_warmup.enabled: false``) instead of repeating minutes of it each.
    """
    import torch

    from covip.sdk.errors import InputError
    from covip.training.gspo import load_policy
    from covip.training.sft_data import ensure_world, load_sft_samples, load_world

    if not config.vision_warmup.enabled:
        raise InputError("warm_start_vision needs vision_warmup.enabled: true in the SFT config")
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    out = target.parent / f"{target.name}-run"
    out.mkdir(parents=True, exist_ok=True)
    root = ensure_world(config.data, out, progress=config.run.progress)
    world = load_world(root)
    torch.manual_seed(config.run.seed)
    model, processor, _ = load_policy(config)
    report = _vision_warmup(config, model, processor, out, load_sft_samples(config.data, root), world, {}) or {}
    _save_model(model, processor, target, config, 0, 0.0, prompt_version="", stage="vision_warmup")
    write_json(out / "vision_warmup.json", report)
    return target, report


def _save_model(model: Any, processor: Any, target: Path, config: SftConfig, step: int, train_s: float, *,
                prompt_version: str, stage: str = "sft") -> Path:
    """Save model + processor into ``target`` through a temporary sibling renamed into place; the provenance
    file names the prompt pack the model was trained with (use it at inference)."""
    from covip.training.data.schema import swap_into_place

    model.config.use_cache = True  # training turns the KV cache off; an inference checkpoint wants it
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        info = {"base_model": config.model.name_or_path, "config": config.name, "config_source": config.source,
                "stage": stage, "global_step": step, "train_s": round(train_s, 2), "prompt_version": prompt_version,
                "prompt_pack": config.data.prompt_pack,
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(info, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("SFT checkpoint written to %s", target)
    return target
