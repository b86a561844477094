"""The vision warm-up of the SFT stage: teach a random-weight vision tower to see the world's looks first.

A random Qwen3-VL vision tower barely encodes what tells concepts apart (a linear probe on its pooled
features reads the body colour of a held-out photo about one time in four), and learning it through the
language model's next-token loss is slow: the text prior is learned long before the image is. Here the
tower (with its patch merger) is trained directly, with transformers' ``Trainer``, to predict each
training photo's look attributes (kind, body colour, pattern, pattern colour, accessory, accessory
colour) from its mean-pooled image tokens; the six linear heads are thrown away afterwards. The photos
are the training concepts' one-concept photos only (:func:`~covip.training.sft_data.describe_items`),
so held-out concepts stay unseen. The tower costs a few percent of the whole model per image, so minutes
of this cover many epochs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from covip.sdk.errors import InputError
from covip.training.data.world import Look

__all__ = ["LOOK_ATTRIBUTES", "warm_up_vision", "attribute_accuracy", "pooled_image_tokens"]

log = logging.getLogger(__name__)

LOOK_ATTRIBUTES = ("kind", "colour", "pattern", "pattern_colour", "accessory", "accessory_colour")


def _classes() -> dict[str, list[str]]:
    from covip.training.data.world import ACCESSORIES, COLOURS, KINDS, PATTERNS

    colours = sorted(COLOURS)
    return {"kind": list(KINDS), "colour": colours, "pattern": list(PATTERNS), "pattern_colour": colours,
            "accessory": list(ACCESSORIES), "accessory_colour": colours}


def pooled_image_tokens(visual: Any, pixel_values: Any, image_grid_thw: Any) -> Any:
    """One vector per image: the mean of the image's tokens after the tower's patch merger (what the LM sees)."""
    import torch

    out = visual(pixel_values, grid_thw=image_grid_thw)
    tokens = out.pooler_output if hasattr(out, "pooler_output") else out[0]
    counts = (image_grid_thw.prod(-1) // (visual.spatial_merge_size ** 2)).tolist()
    return torch.stack([t.mean(0) for t in torch.split(tokens, counts)])


def _parts() -> tuple[type, type, Any]:
    """(the dataset, the model wrapper, the collate factory), built when torch is wanted."""
    import torch
    from PIL import Image

    classes = _classes()

    class LookDataset(torch.utils.data.Dataset):
        def __init__(self, items: Sequence[tuple[str, Look]]) -> None:
            self.items = list(items)

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> dict[str, Any]:
            path, look = self.items[i]
            with Image.open(path) as im:
                image = im.convert("RGB")
            return {"image": image, **{a: classes[a].index(getattr(look, a)) for a in LOOK_ATTRIBUTES}}

    class LookHeads(torch.nn.Module):
        """The vision tower + merger, mean-pooled, and one linear head per look attribute."""

        def __init__(self, visual: Any, dim: int) -> None:
            super().__init__()
            self.visual = visual
            self.heads = torch.nn.ModuleDict({a: torch.nn.Linear(dim, len(classes[a])) for a in LOOK_ATTRIBUTES})

        def forward(self, pixel_values: Any, image_grid_thw: Any, **labels: Any) -> dict[str, Any]:
            pooled = pooled_image_tokens(self.visual, pixel_values, image_grid_thw)
            logits = {a: head(pooled) for a, head in self.heads.items()}
            result: dict[str, Any] = {f"logits_{a}": v for a, v in logits.items()}
            if labels:
                result["loss"] = sum(torch.nn.functional.cross_entropy(logits[a], labels[a]) for a in LOOK_ATTRIBUTES)
            return result

    def collate_for(image_processor: Any) -> Any:
        def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
            x = image_processor(images=[b["image"] for b in batch], return_tensors="pt")
            out = {"pixel_values": x["pixel_values"], "image_grid_thw": x["image_grid_thw"]}
            for a in LOOK_ATTRIBUTES:
                out[a] = torch.tensor([b[a] for b in batch])
            return out
        return collate

    return LookDataset, LookHeads, collate_for


def attribute_accuracy(wrapper: Any, image_processor: Any, items: Sequence[tuple[str, Look]],
                       batch_size: int = 64) -> dict[str, float]:
    """Share of ``items`` whose every look attribute the heads predict right, per attribute."""
    import torch

    dataset_cls, _, collate_for = _parts()
    data, collate = dataset_cls(items), collate_for(image_processor)
    right = dict.fromkeys(LOOK_ATTRIBUTES, 0)
    was = wrapper.training
    wrapper.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                batch = collate([data[i] for i in range(start, min(len(data), start + batch_size))])
                out = wrapper(batch["pixel_values"], batch["image_grid_thw"])
                for a in LOOK_ATTRIBUTES:
                    right[a] += int((out[f"logits_{a}"].argmax(-1) == batch[a]).sum())
    finally:
        wrapper.train(was)
    return {a: round(v / max(1, len(data)), 4) for a, v in right.items()}


def warm_up_vision(model: Any, processor: Any, items: Sequence[tuple[str, Look]], *, output_dir: str,
                   max_time_s: float | None, num_train_epochs: float, learning_rate: float, batch_size: int,
                   seed: int, use_cpu: bool, heldout: Sequence[tuple[str, Look]] = (),
                   progress: bool = True) -> dict[str, Any]:
    """Train ``model``'s vision tower on the look attributes of ``items`` (see the module doc), in place.

    Returns steps, seconds, and the held-out per-attribute accuracy before and after (when ``heldout``).
    """
    import time

    from transformers import Trainer, TrainingArguments

    from covip.training.sft_trainer import TimeBudgetCallback

    if not items:
        raise InputError("the vision warm-up has no photos: the training samples hold no one-concept photo")
    visual = getattr(model.model, "visual", None)
    if visual is None:
        raise InputError(f"{type(model).__name__} has no model.visual vision tower to warm up; set "
                         "vision_warmup.enabled: false")
    dataset_cls, heads_cls, collate_for = _parts()
    wrapper = heads_cls(visual, model.config.get_text_config().hidden_size)
    image_processor = processor.image_processor
    before = attribute_accuracy(wrapper, image_processor, heldout) if heldout else None
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, learning_rate=learning_rate,
        num_train_epochs=num_train_epochs, lr_scheduler_type="constant_with_warmup", warmup_steps=10,
        weight_decay=0.0, logging_steps=20, save_strategy="no", report_to="none", use_cpu=use_cpu, seed=seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=not progress)
    budget = TimeBudgetCallback(max_time_s)
    trainer = Trainer(model=wrapper, args=args, train_dataset=dataset_cls(items),
                      data_collator=collate_for(image_processor), callbacks=[budget])
    from covip.training.trainer_progress import use_progress_lines

    use_progress_lines(trainer, progress, "vision warm-up")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    after = attribute_accuracy(wrapper, image_processor, heldout) if heldout else None
    log.info("vision warm-up: %d steps in %.0fs, held-out attribute accuracy %s", trainer.state.global_step,
             seconds, after)
    return {"photos": len(items), "steps": trainer.state.global_step, "epochs": trainer.state.epoch,
            "train_s": round(seconds, 2), "heldout_photos": len(heldout), "heldout_accuracy_before": before,
            "heldout_accuracy_after": after}
