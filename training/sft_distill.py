"""The vision warm-up by distillation (a random Qwen3-VL vision tower learns to see as the ``mini`` embedder does)
or by contrastive pairs (the tower learns what the embedder learns, directly).

Trained directly on look attributes, a random vision tower learns body colour and kind in minutes but not
the pattern and accessory that tell look-alike concepts apart (measured in ``training/README.md``). The
``mini`` embedder (open_clip, trained contrastively on the world's photos, ``covip train embedder``) does
tell them apart, so here it is the teacher: the tower's mean-pooled image tokens, through a linear map, are
trained to point where the teacher's embedding of the same photo points (cosine loss), with transformers'
``Trainer`` on photos of *training* looks drawn fresh for every step (:func:`training_photo`); the linear map
is thrown away afterwards. Held-out concepts stay unseen: the teacher trained on training looks only, and so
does the student here.

``objective: contrastive`` needs no teacher: the tower itself learns what the embedder learns, with
open_clip's ``ClipLoss`` between a training look's memory photo and a new-pose scene of it (the batch's other
pairs are the negatives; CLIP, Radford et al. 2021, as open_clip implements it), which is the ``mini``
embedder's own objective. On two cores 120 s of it gave the tower about the retrieval 420 s of distillation
from the full ``mini`` embedder did (training/README.md), without building the embedder first.

:func:`distill_vision` measures what it bought the way the embedder is measured: recall@1/@5 of the right
memory for held-out concepts in a covip ``Memory`` (:func:`covip.training.embedder_eval.evaluate_retrieval`),
the tower before and after, and the teacher, on the same memory and queries.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from covip.sdk.errors import InputError
from covip.sdk.imaging import Photo
from covip.training.data.render import render_memory, render_scene
from covip.training.data.world import look_keys, look_with_key
from covip.training.sft_vision import pooled_image_tokens

__all__ = ["training_photo", "TowerEmbedder", "distill_vision"]

log = logging.getLogger(__name__)

CONTRAST_DIM = 128
"""Width of the linear map the contrastive objective compares photos in (thrown away afterwards)."""
MEMORY_SHARE = 0.4
"""Share of distillation photos drawn as memory photos (the rest are one-concept query scenes)."""


def training_photo(rng: random.Random, image_size: int) -> Image.Image:
    """A photo of a random training look: a memory photo or a query scene (new pose, backdrop and light)."""
    look = look_with_key(rng.choice(look_keys(heldout=False)), rng)
    if rng.random() < MEMORY_SHARE:
        return render_memory(look, image_size, rng)
    return render_scene([look], image_size, rng)


def _pair(rng: random.Random, image_size: int) -> dict[str, Any]:
    """A memory photo of a random training look and a new-pose scene of it (a contrastive positive pair)."""
    look = look_with_key(rng.choice(look_keys(heldout=False)), rng)
    return {"memory": render_memory(look, image_size, rng), "query": render_scene([look], image_size, rng)}


def _parts() -> tuple[type, type, Any, Any]:
    """(the rendered stream, the tower + linear map, the two collate factories), built when torch is wanted."""
    import torch

    class Rendered(torch.utils.data.IterableDataset):
        """An endless stream of freshly rendered training examples, ``draw(rng)`` each, seeded by
        ``name:seed`` (the same seed gives the same stream)."""

        def __init__(self, name: str, seed: int, draw: Any) -> None:
            self.name, self.seed, self.draw = name, seed, draw

        def __iter__(self) -> Any:
            rng = random.Random(f"{self.name}:{self.seed}")
            while True:
                yield self.draw(rng)

    class TowerHead(torch.nn.Module):
        """The vision tower + merger, mean-pooled per image, then a linear map into the teacher's space."""

        def __init__(self, visual: Any, dim: int, teacher_dim: int) -> None:
            super().__init__()
            self.visual = visual
            self.head = torch.nn.Linear(dim, teacher_dim)
            self.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))  # CLIP's initial 1/0.07

        def embed(self, pixel_values: Any, image_grid_thw: Any) -> Any:
            pooled = pooled_image_tokens(self.visual, pixel_values, image_grid_thw)
            return torch.nn.functional.normalize(self.head(pooled), dim=-1)

        def forward(self, pixel_values: Any, image_grid_thw: Any, target: Any = None,
                    pairs: Any = None) -> dict[str, Any]:
            emb = self.embed(pixel_values, image_grid_thw)
            result: dict[str, Any] = {"embeddings": emb}
            if target is not None:
                result["loss"] = (1.0 - (emb * target).sum(-1)).mean()
            elif pairs is not None:  # memory photos first, then their scenes: open_clip's symmetric InfoNCE
                import open_clip

                n = emb.shape[0] // 2
                scale = self.logit_scale.exp().clamp(max=100.0)
                result["loss"] = open_clip.ClipLoss()(emb[:n], emb[n:], scale)
            return result

    def collate_for(image_processor: Any, teacher: Any) -> Any:
        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            images = [b["image"] for b in batch]
            x = image_processor(images=images, return_tensors="pt")
            target = torch.from_numpy(np.ascontiguousarray(teacher.embed_images(images, progress=False)))
            return {"pixel_values": x["pixel_values"], "image_grid_thw": x["image_grid_thw"], "target": target}
        return collate

    def pair_collate_for(image_processor: Any) -> Any:
        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            images = [b["memory"] for b in batch] + [b["query"] for b in batch]
            x = image_processor(images=images, return_tensors="pt")
            return {"pixel_values": x["pixel_values"], "image_grid_thw": x["image_grid_thw"],
                    "pairs": torch.ones(len(batch))}
        return collate

    return Rendered, TowerHead, collate_for, pair_collate_for


class TowerEmbedder:
    """The tower + linear map as a covip embedder (``embed_images``), for measuring its retrieval."""

    meaningless = False

    def __init__(self, wrapper: Any, image_processor: Any, model_id: str = "vlm-vision-tower") -> None:
        self.wrapper, self.image_processor, self.model_id = wrapper, image_processor, model_id
        self.dim = int(wrapper.head.out_features)

    def embed_images(self, images: Sequence[Image.Image | Photo], *, batch_size: int = 64,
                     progress: bool | None = None) -> np.ndarray:
        """(n, dim) float32 unit rows."""
        import torch

        pils = [img.image if isinstance(img, Photo) else img for img in images]
        if not pils:
            return np.zeros((0, self.dim), np.float32)
        was = self.wrapper.training
        self.wrapper.eval()
        rows = []
        try:
            with torch.inference_mode():
                for start in range(0, len(pils), batch_size):
                    chunk = [p.convert("RGB") for p in pils[start:start + batch_size]]
                    x = self.image_processor(images=chunk, return_tensors="pt")
                    rows.append(self.wrapper.embed(x["pixel_values"], x["image_grid_thw"]).float().numpy())
        finally:
            self.wrapper.train(was)
        return np.concatenate(rows).astype(np.float32)

    def close(self) -> None:
        """Nothing to release (the tower belongs to the VLM)."""

    def __enter__(self) -> TowerEmbedder:
        """Use in a ``with`` block."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Nothing to release."""


def _recall(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in ("recall_at_1", "recall_at_5", "n_queries")} | {"ranks": report["ranks"]}


def distill_vision(model: Any, processor: Any, teacher: Any, *, output_dir: str, max_time_s: float | None,
                   max_steps: int, learning_rate: float, batch_size: int, image_size: int, seed: int,
                   use_cpu: bool, eval_concepts: int = 60, queries_per_concept: int = 2,
                   progress: bool = True) -> dict[str, Any]:
    """Distil ``teacher`` (an SDK embedder) into ``model``'s vision tower in place (see the module doc); with
    ``teacher`` None, train the tower contrastively on (memory photo, new-pose scene) pairs instead.

    Stops after ``max_steps`` steps or ``max_time_s`` seconds; returns steps, seconds and held-out retrieval
    (recall@1/@5 with per-query ranks) of the tower before and after and of the teacher.
    """
    from transformers import Trainer, TrainingArguments

    from covip.training.embedder_eval import evaluate_retrieval, retrieval_world
    from covip.training.sft_trainer import TimeBudgetCallback

    visual = getattr(getattr(model, "model", None), "visual", None)
    if visual is None:
        raise InputError(f"{type(model).__name__} has no model.visual vision tower to distil into; set "
                         "vision_warmup.enabled: false")
    stream_cls, head_cls, collate_for, pair_collate_for = _parts()
    dim = int(getattr(model.config.vision_config, "out_hidden_size", model.config.get_text_config().hidden_size))
    wrapper = head_cls(visual, dim, int(teacher.dim) if teacher is not None else CONTRAST_DIM)
    image_processor = processor.image_processor
    world = retrieval_world(eval_concepts, queries_per_concept, image_size=image_size, seed=1)
    tower = TowerEmbedder(wrapper, image_processor)
    before = _recall(evaluate_retrieval(tower, world, progress=False))
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
        max_steps=max_steps, lr_scheduler_type="constant_with_warmup", warmup_steps=10, weight_decay=0.0,
        logging_steps=50, save_strategy="no", report_to="none", use_cpu=use_cpu, seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not progress)
    budget = TimeBudgetCallback(max_time_s)
    if teacher is None:  # a batch of `batch_size` photos: half memory photos, half their scenes
        data = stream_cls("covip-contrast", seed, functools.partial(_pair, image_size=image_size))
        collate = pair_collate_for(image_processor)
        args.per_device_train_batch_size = max(2, batch_size // 2)
    else:
        data = stream_cls("covip-distill", seed, lambda rng: {"image": training_photo(rng, image_size)})
        collate = collate_for(image_processor, teacher)
    trainer = Trainer(model=wrapper, args=args, train_dataset=data, data_collator=collate, callbacks=[budget])
    from covip.training.trainer_progress import use_progress_lines

    use_progress_lines(trainer, progress, "vision distillation" if teacher is not None else "vision contrastive")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = _recall(evaluate_retrieval(tower, world, progress=False))
    taught = _recall(evaluate_retrieval(teacher, world, progress=False)) if teacher is not None else None
    log.info("vision %s: %d steps in %.0fs, held-out recall@5 %.2f -> %.2f%s",
             "distillation" if teacher is not None else "contrastive warm-up", trainer.state.global_step, seconds,
             before["recall_at_5"], after["recall_at_5"], f" (teacher {taught['recall_at_5']:.2f})" if taught else "")
    return {"objective": "distill" if teacher is not None else "contrastive",
            "teacher": getattr(teacher, "model_id", type(teacher).__name__) if teacher is not None else None,
            "steps": trainer.state.global_step, "photos": trainer.state.global_step * batch_size,
            "train_s": round(seconds, 2), "stopped_by_time": budget.stopped,
            "tower_retrieval_before": before, "tower_retrieval_after": after, "teacher_retrieval": taught}
