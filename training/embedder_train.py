"""Train the ``mini`` embedder on the synthetic world and cache it where ``make_embedder("mini")`` looks.

The model is open_clip's own CLIP at the size of the SDK preset ``covip-mini-clip.json``; the loss is open_clip's
:class:`open_clip.ClipLoss`; the loop is the Hugging Face :class:`transformers.Trainer` (progress bar, seed,
warmup + cosine schedule, CPU or GPU). What is covip's own: the training pairs and the small wrapper that hands
the Trainer a loss.

Training pairs (:class:`WorldPairs`) come from *training looks only* (:func:`~covip.training.data.world.is_heldout_look`
is false): each pair is a concept's memory photo (rest pose, memory backdrop, neutral light) and a query scene
of it (a query pose, a query backdrop, changed light), the two views a retrieval has to match. With objective
``image`` the pair's two image embeddings are the positives of a CLIP loss (the batch's other pairs are the
negatives); ``image+text`` adds a loss between each view and a text naming the look (its kind, colours,
pattern and accessory). Why ``image`` is the default is measured and written down in training/README.md.

:func:`build_mini_embedder` trains, evaluates held-out retrieval (:mod:`.embedder_eval`), and writes the
weights (safetensors) plus a build record into ``<cache>/embedders/covip-mini-clip-<preset digest>/``: in a
temporary sibling that is renamed into place, so the folder is complete or absent. A finished build of the
same recipe is reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError
from covip.sdk.vision.mini import (
    MINI_ARCH,
    MINI_CONFIG_PATH,
    MINI_MARKER,
    MINI_WEIGHTS,
    mini_embedder_dir,
    mini_preset_digest,
    read_mini_marker,
)
from covip.training.data.render import render_memory, render_scene
from covip.training.data.schema import swap_into_place
from covip.training.data.targets import look_phrase
from covip.training.data.world import look_keys, look_with_key
from covip.training.embedder_config import EmbedderTrainConfig, load_embedder_config

__all__ = ["EmbedderBuild", "WorldPairs", "build_mini_embedder", "train_mini_clip"]

log = logging.getLogger(__name__)

_BUILDER_VERSION = 1  # bump when the training code changes in a way the recipe does not show
_MARKER_KIND = "covip-mini-embedder"


@dataclass(frozen=True)
class EmbedderBuild:
    """What :func:`build_mini_embedder` made (or found)."""

    folder: Path
    weights: Path
    reused: bool
    record: dict[str, Any] = field(default_factory=dict)
    """The build record (``covip_embedder.json``): recipe, metrics, timings, versions."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"folder": str(self.folder), "weights": str(self.weights), "reused": self.reused, **self.record}


class WorldPairs:
    """A torch map-style dataset of (memory photo, query scene[, look text]) pairs of training looks.

    Item ``i`` is a pure function of ``(seed, i)``; everything is drawn and preprocessed (with the model's own
    eval transform, as real photos are) once, up front, and kept as float16 tensors.
    """

    def __init__(self, n: int, *, sizes: list[int], seed: int, preprocess: Any, tokenizer: Any = None,
                 multi_share: float = 0.0, progress: bool | None = None) -> None:
        import torch

        from covip.sdk.progress import progress_bar

        keys = look_keys(heldout=False)
        memory, query, texts, looks = [], [], [], []
        for i in progress_bar(range(n), desc="drawing training pairs", unit="pair", enabled=progress):
            rng = random.Random(f"covip-mini-embedder:{seed}:{i}")
            look = look_with_key(rng.choice(keys), rng)
            looks.append(look)
            size = sizes[i % len(sizes)]
            shown = [look]
            if rng.random() < multi_share:  # the query photo also shows one or two other concepts
                shown += [look_with_key(rng.choice(keys), rng) for _ in range(rng.randint(1, 2))]
                rng.shuffle(shown)
            memory.append(preprocess(render_memory(look, size, rng)).to(torch.float16))
            query.append(preprocess(render_scene(shown, size, rng)).to(torch.float16))
            texts.append(look_phrase(look))
        self.memory = torch.stack(memory)
        self.query = torch.stack(query)
        self.texts = texts
        self.looks = looks
        self.tokens = tokenizer(texts) if tokenizer is not None else None

    def __len__(self) -> int:
        """Number of pairs."""
        return len(self.memory)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """One pair as the model wrapper's keyword arguments."""
        item = {"memory": self.memory[i].float(), "query": self.query[i].float()}
        if self.tokens is not None:
            item["text"] = self.tokens[i]
        return item


def _no_bar(progress: bool | None) -> bool | None:
    """The Trainer's ``disable_tqdm``: off unless progress is False (no terminal: lines, see trainer_progress)."""
    return None if progress is None else not progress


def _model_wrapper(clip: Any, torch: Any, open_clip: Any) -> Any:
    """An nn.Module whose forward returns open_clip's CLIP loss, the shape the Trainer expects."""

    class ContrastiveClip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip
            self.loss = open_clip.ClipLoss()

        def forward(self, memory: Any, query: Any, text: Any = None) -> dict[str, Any]:
            scale = self.clip.logit_scale.exp()
            fm = self.clip.encode_image(memory, normalize=True)
            fq = self.clip.encode_image(query, normalize=True)
            loss = self.loss(fm, fq, scale)
            if text is not None:
                ft = self.clip.encode_text(text, normalize=True)
                loss = loss + 0.5 * (self.loss(fm, ft, scale) + self.loss(fq, ft, scale))
            return {"loss": loss}

    return ContrastiveClip()


def _param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """open_clip's training split: no weight decay on gains, biases, norms and the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _resolve_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"run.device={device!r} but torch sees no CUDA GPU; use 'cpu' or 'auto'")
    return device


def train_mini_clip(config: EmbedderTrainConfig, work_dir: Path, *,
                    progress: bool | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the preset's open_clip model as ``config`` says; returns (the CLIP model on CPU, timings/losses)."""
    import open_clip
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    if MINI_ARCH not in open_clip.list_models():
        open_clip.add_model_config(MINI_CONFIG_PATH)
    t, run = config.trainer, config.run
    device = _resolve_device(torch, run.device)
    from covip.training.gspo import torch_threads

    with torch_threads(torch, run.torch_threads):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed)
            clip, _, preprocess = open_clip.create_model_and_transforms(MINI_ARCH, precision="fp32")
        tokenizer = open_clip.get_tokenizer(MINI_ARCH) if t.objective == "image+text" else None
        start = time.perf_counter()
        pairs = WorldPairs(config.data.n_pairs, sizes=config.data.render_sizes, seed=config.data.seed,
                           preprocess=preprocess, tokenizer=tokenizer, multi_share=config.data.multi_share,
                           progress=progress)
        draw_s = time.perf_counter() - start

        class ClampLogitScale(TrainerCallback):
            """open_clip's training keeps the learned temperature at most 100 (as open_clip_train does)."""

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                with torch.no_grad():
                    clip.logit_scale.clamp_(0, math.log(100))

        wrapper = _model_wrapper(clip, torch, open_clip)
        optimizer = torch.optim.AdamW(_param_groups(wrapper, t.weight_decay), lr=t.learning_rate,
                                      betas=(0.9, 0.98), eps=1e-6)
        args = TrainingArguments(
            output_dir=str(work_dir / "trainer"), max_steps=t.max_steps,
            per_device_train_batch_size=t.per_device_train_batch_size, learning_rate=t.learning_rate,
            weight_decay=t.weight_decay, warmup_steps=t.warmup_steps, lr_scheduler_type=t.lr_scheduler_type,
            logging_steps=t.logging_steps, save_strategy="no", report_to="none", seed=run.seed,
            data_seed=run.seed, use_cpu=device == "cpu", dataloader_num_workers=0, dataloader_drop_last=True,
            remove_unused_columns=False, disable_tqdm=bool(_no_bar(progress)), label_names=[],
        )
        trainer = Trainer(model=wrapper, args=args, train_dataset=pairs, optimizers=(optimizer, None),
                          callbacks=[ClampLogitScale()])
        from covip.training.trainer_progress import use_progress_lines

        use_progress_lines(trainer, progress, "covip train embedder")
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    losses = [round(float(e["loss"]), 4) for e in trainer.state.log_history if "loss" in e]
    clip = clip.to("cpu").eval()
    stats = {"draw_s": round(draw_s, 2), "train_s": round(train_s, 2), "device": device,
             "steps": trainer.state.global_step, "loss_history": losses,
             "logit_scale": round(float(clip.logit_scale.detach().exp()), 3)}
    return clip, stats


def _recipe_digest(config: EmbedderTrainConfig) -> str:
    import open_clip
    import torch

    blob = json.dumps({"recipe": config.recipe(), "preset": mini_preset_digest(), "builder": _BUILDER_VERSION,
                       "torch": torch.__version__, "open_clip": open_clip.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_mini_embedder(config: EmbedderTrainConfig | str = "mini-cpu", *, out_dir: str | Path | None = None,
                        force: bool = False, progress: bool | None = None) -> EmbedderBuild:
    """Train (unless a finished build of the same recipe is there), evaluate and cache the mini embedder.

    ``out_dir`` None writes where ``make_embedder("mini")`` looks (``run.cache_dir`` or covip's cache);
    ``force`` retrains even when the same recipe is already built.
    """
    from covip.training.embedder_eval import evaluate_build

    if isinstance(config, str):
        config = load_embedder_config(config)
    if not isinstance(config, EmbedderTrainConfig):
        raise InputError(f"build_mini_embedder() takes a recipe name or EmbedderTrainConfig, got "
                         f"{type(config).__name__}")
    target = Path(out_dir).expanduser() if out_dir is not None else mini_embedder_dir(config.run.cache_dir)
    digest = _recipe_digest(config)
    marker = read_mini_marker(target)
    if not force and marker is not None and marker.get("recipe_sha256") == digest and (target / MINI_WEIGHTS).is_file():
        log.info("mini embedder already built in %s (same recipe); reusing it", target)
        return EmbedderBuild(target, target / MINI_WEIGHTS, True, marker)
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a folder; remove it or pick another out_dir")
    if target.is_dir() and any(target.iterdir()) and marker is None:
        raise InputError(f"{target} exists and holds no mini embedder build ({MINI_MARKER}); refusing to replace "
                         "it: empty it or pick another out_dir")

    import open_clip
    import torch
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        clip, stats = train_mini_clip(config, tmp, progress=progress)
        shutil.rmtree(tmp / "trainer", ignore_errors=True)
        state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
        save_file(state, str(tmp / MINI_WEIGHTS))
        build_s = time.perf_counter() - start
        metrics = evaluate_build(config, tmp / MINI_WEIGHTS, progress=progress)
        record = {
            "kind": _MARKER_KIND, "arch": MINI_ARCH, "preset_sha256": mini_preset_digest(),
            "recipe_sha256": digest, "config_name": config.name, "recipe": config.recipe(),
            "eval_config": config.to_dict()["eval"], "weights_sha256": _sha256(tmp / MINI_WEIGHTS),
            "parameters": sum(int(v.numel()) for v in state.values()),
            "timings": {**{k: stats[k] for k in ("draw_s", "train_s")}, "build_s": round(build_s, 2),
                        "eval_s": metrics.pop("eval_s", None)},
            "train": {k: stats[k] for k in ("device", "steps", "loss_history", "logit_scale")},
            "threads": torch.get_num_threads() if config.run.torch_threads is None else config.run.torch_threads,
            "cpu_count": os.cpu_count(), "load_avg_at_end": _load_avg(),
            "retrieval": metrics,
            "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
        }
        # the record goes last: a folder with a record is a finished build
        (tmp / MINI_MARKER).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        swap_into_place(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the mini embedder in %s (%.0f s)", target, record["timings"]["build_s"])
    return EmbedderBuild(target, target / MINI_WEIGHTS, False, record)


def _load_avg() -> list[float] | None:
    """The 1/5/15-minute load averages (the CPU was shared: timings depend on it), None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
