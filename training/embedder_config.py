"""The ``mini`` embedder's training recipe: typed dataclasses loaded from YAML (``training/configs/embedder/``).

A recipe has four groups, each a dataclass below (every field carries a ``help`` text)::

    data:     the training pairs: two photos of one training-look concept (its memory photo, a query scene)
    trainer:  the contrastive objective and the Hugging Face Trainer settings
    eval:     the held-out retrieval evaluation (a memory of held-out concepts, queries in new poses)
    run:      seed, device, threads, where the weights are cached

plus ``quick``: dotted overrides that ``--quick`` applies (a build of about a minute, for tests and CI).
The architecture is not part of the recipe: it is the SDK's preset ``covip-mini-clip.json``, the one
``make_embedder("mini")`` loads, so what is trained is always what the SDK runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from covip.training.config_io import (
    GroupedConfigMixin,
    config_from_dict,
    config_to_dict,
    read_yaml,
    resolve_recipe,
)
from covip.training.gspo_config import _check

__all__ = [
    "EMBEDDER_CONFIG_DIR",
    "OBJECTIVES",
    "EmbedderDataSection",
    "EmbedderTrainerSection",
    "EmbedderEvalSection",
    "EmbedderRunSection",
    "EmbedderTrainConfig",
    "bundled_embedder_configs",
    "load_embedder_config",
]

EMBEDDER_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "embedder"
OBJECTIVES = ("image", "image+text")
"""``image``: a concept's memory photo vs a query scene of it (open_clip's ClipLoss between the two image
embeddings); ``image+text``: the same plus each image vs a text naming the look."""


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class EmbedderDataSection:
    """Training pairs, rendered once before training from training looks only (never a held-out look)."""

    n_pairs: int = field(default=4000, metadata=_h(
        "Pairs (memory photo, query scene) of random training-look concepts, rendered before training."))
    render_sizes: list[int] = field(default_factory=lambda: [64, 96, 128], metadata=_h(
        "Pixel sizes the pairs are drawn at (cycled); the model's own preprocessing resizes them, as it "
        "resizes real photos."))
    multi_share: float = field(default=0.0, metadata=_h(
        "Share of pairs whose query scene also shows one or two other concepts (the positive stays the "
        "memory photo of the first): teaches retrieval from photos of several concepts."))
    seed: int = field(default=0, metadata=_h("Seed of the looks and drawings."))


@dataclass
class EmbedderTrainerSection:
    """Objective and Hugging Face Trainer settings."""

    objective: str = field(default="image", metadata=_h(
        "'image': memory photo vs query scene of one concept (two views, open_clip ClipLoss); 'image+text': "
        "plus each view vs a text naming the look."))
    max_steps: int = field(default=300, metadata=_h("Optimizer steps."))
    per_device_train_batch_size: int = field(default=64, metadata=_h(
        "Pairs per step; the other pairs of the batch are each pair's negatives."))
    learning_rate: float = field(default=2e-3, metadata=_h("Peak learning rate (AdamW)."))
    weight_decay: float = field(default=0.1, metadata=_h(
        "AdamW weight decay on weight matrices (not on gains, biases or the logit scale, as open_clip trains)."))
    warmup_steps: float = field(default=0.1, metadata=_h("Warmup: a step count (>= 1) or a share of all steps."))
    lr_scheduler_type: str = field(default="cosine", metadata=_h("transformers scheduler name."))
    logging_steps: int = field(default=25, metadata=_h("Log the loss every N steps."))


@dataclass
class EmbedderEvalSection:
    """Held-out retrieval: a covip Memory of held-out concepts, searched with query photos of each."""

    n_concepts: int = field(default=60, metadata=_h(
        "Held-out concepts in the memory (families of look-alikes: same kind and colours, another pattern "
        "or accessory); each is remembered with one memory photo and its dialogue."))
    queries_per_concept: int = field(default=2, metadata=_h(
        "Query photos per concept (new pose, backdrop and light)."))
    pair_queries: int = field(default=0, metadata=_h(
        "Extra query photos showing two concepts at once (reported as pair_recall_at_k)."))
    image_size: int = field(default=128, metadata=_h("Pixel size of memory and query photos (the world's size)."))
    seed: int = field(default=1, metadata=_h("Seed of the evaluation world."))
    baselines: list[str] = field(default_factory=lambda: ["tiny"], metadata=_h(
        "Embedder specs measured on the same memory and queries (e.g. 'tiny', the random-weight model)."))


@dataclass
class EmbedderRunSection:
    """Seed, device and cache."""

    seed: int = field(default=0, metadata=_h("Seed of the weight init and the Trainer (data order)."))
    device: str = field(default="auto", metadata=_h("'auto' (cuda when present), 'cpu' or 'cuda'."))
    torch_threads: int | None = field(default=None, metadata=_h("torch CPU threads; null keeps torch's default."))
    cache_dir: str | None = field(default=None, metadata=_h(
        "Cache root the weights are written under (<root>/embedders/...); null = covip's cache "
        "($COVIP_CACHE or e.g. ~/.cache/covip), where make_embedder('mini') looks."))


_SECTIONS: dict[str, type] = {"data": EmbedderDataSection, "trainer": EmbedderTrainerSection,
                              "eval": EmbedderEvalSection, "run": EmbedderRunSection}


@dataclass
class EmbedderTrainConfig(GroupedConfigMixin):
    """A whole recipe (see the module doc)."""

    override_what: ClassVar[str] = "embedder config key"

    data: EmbedderDataSection = field(default_factory=EmbedderDataSection, metadata=_h("Training pairs."))
    trainer: EmbedderTrainerSection = field(default_factory=EmbedderTrainerSection, metadata=_h("Training."))
    eval: EmbedderEvalSection = field(default_factory=EmbedderEvalSection, metadata=_h("Held-out retrieval."))
    run: EmbedderRunSection = field(default_factory=EmbedderRunSection, metadata=_h("Seed, device, cache."))
    quick: dict[str, Any] = field(default_factory=dict, metadata=_h("Dotted overrides applied by --quick."))
    name: str = field(default="custom", metadata=_h("A short name of this recipe."))
    description: str = field(default="", metadata=_h("What this recipe is for."))
    source: str | None = field(default=None, metadata=_h("The file it was loaded from (set by the loader)."))

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> EmbedderTrainConfig:
        """Build from a nested mapping; unknown keys and bad values raise InputError naming the dotted key."""
        return config_from_dict(cls, _SECTIONS, data, what="an embedder recipe", unknown="embedder config key",
                                source=source)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict that :meth:`from_dict` turns back into an equal config."""
        return config_to_dict(self)

    def recipe(self) -> dict[str, Any]:
        """What decides the weights: data, trainer and seed (not the eval, device, threads, cache or names)."""
        d = self.to_dict()
        return {"data": d["data"], "trainer": d["trainer"], "seed": self.run.seed}

    def quick_variant(self) -> EmbedderTrainConfig:
        """This recipe with its ``quick`` overrides applied (a build of about a minute)."""
        out = self.with_quick("the embedder recipe")
        out.name = f"{self.name}-quick"
        return out

    def validate(self) -> None:
        """Raise InputError naming the dotted key of the first bad value."""
        d, t, e, r = self.data, self.trainer, self.eval, self.run
        _check(d.n_pairs >= 2, "data.n_pairs", f"must be >= 2, got {d.n_pairs}")
        _check(bool(d.render_sizes) and all(32 <= s <= 1024 for s in d.render_sizes), "data.render_sizes",
               f"must be a non-empty list of sizes in 32..1024, got {d.render_sizes}")
        _check(0.0 <= d.multi_share <= 1.0, "data.multi_share", f"must be in 0..1, got {d.multi_share}")
        _check(t.objective in OBJECTIVES, "trainer.objective", f"must be one of {list(OBJECTIVES)}, got {t.objective!r}")
        _check(t.max_steps >= 1, "trainer.max_steps", f"must be >= 1, got {t.max_steps}")
        _check(2 <= t.per_device_train_batch_size <= d.n_pairs, "trainer.per_device_train_batch_size",
               f"must be between 2 and data.n_pairs ({d.n_pairs}), got {t.per_device_train_batch_size}")
        _check(t.learning_rate > 0, "trainer.learning_rate", f"must be > 0, got {t.learning_rate}")
        _check(t.weight_decay >= 0, "trainer.weight_decay", f"must be >= 0, got {t.weight_decay}")
        _check(t.warmup_steps >= 0, "trainer.warmup_steps", f"must be >= 0, got {t.warmup_steps}")
        _check(t.logging_steps >= 1, "trainer.logging_steps", f"must be >= 1, got {t.logging_steps}")
        _check(e.n_concepts >= 6, "eval.n_concepts", f"must be >= 6 (recall@5 needs more than 5), got {e.n_concepts}")
        _check(e.queries_per_concept >= 1, "eval.queries_per_concept", f"must be >= 1, got {e.queries_per_concept}")
        _check(0 <= e.pair_queries <= 10_000, "eval.pair_queries", f"must be in 0..10000, got {e.pair_queries}")
        _check(32 <= e.image_size <= 1024, "eval.image_size", f"must be in 32..1024, got {e.image_size}")
        _check(r.device in ("auto", "cpu", "cuda") or r.device.startswith("cuda:"), "run.device",
               f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {r.device!r}")
        _check(r.torch_threads is None or r.torch_threads >= 1, "run.torch_threads", "must be >= 1 or null")
        _check(isinstance(self.quick, dict), "quick", "must be a mapping of dotted overrides")


def bundled_embedder_configs() -> dict[str, Path]:
    """The embedder recipes shipped with covip: name -> file."""
    return {p.stem: p for p in sorted(EMBEDDER_CONFIG_DIR.glob("*.yaml"))}


def load_embedder_config(name_or_path: str | Path = "mini-cpu",
                         overrides: dict[str, Any] | list[str] | tuple[str, ...] | None = None, *,
                         quick: bool = False) -> EmbedderTrainConfig:
    """Load a bundled recipe by name (``mini-cpu``) or a YAML file, then ``quick`` and dotted ``overrides``."""

    path = resolve_recipe(name_or_path, bundled_embedder_configs(), "embedder recipe")
    data = read_yaml(path, "the embedder recipe")
    config = EmbedderTrainConfig.from_dict(data, source=str(path))
    if quick:
        config = config.quick_variant()
    return config.with_overrides(overrides) if overrides else config
