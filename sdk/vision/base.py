"""The embedder interface and its configuration; importing this never imports torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from covip.sdk._config import ConfigMixin
from covip.sdk.errors import InputError
from covip.sdk.imaging import Photo

__all__ = ["Embedder", "EmbedderConfig", "TINY_MODEL", "MINI_MODEL"]

TINY_MODEL = "tiny"
"""Name of the built-in tiny open_clip architecture with random weights (tests, offline runs)."""
MINI_MODEL = "mini"
"""Name of the small open_clip model trained on covip's synthetic world (built once into the cache)."""


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns photos into L2-normalized image embeddings of one fixed model."""

    model_id: str
    """Stable id of model + weights, the key FAISS indexes are stored under."""
    dim: int
    """Length of every embedding vector."""
    meaningless: bool
    """True when the weights are random, so similarities carry no meaning."""

    def embed_images(
        self,
        images: Sequence[Image.Image | Photo],
        *,
        batch_size: int = 32,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Return an (n, dim) float32 array of unit-length rows, one per image (n may be 0)."""
        ...

    def close(self) -> None:
        """Release the model and any device memory it holds."""
        ...

    def __enter__(self) -> Embedder:
        """Use the embedder in a ``with`` block that closes it."""
        ...

    def __exit__(self, *exc_info: object) -> None:
        """Close the embedder at the end of a ``with`` block."""
        ...


@dataclass(frozen=True)
class EmbedderConfig(ConfigMixin):
    """Which embedding model to build and how to run it (every field has a ``help`` text for CLIs)."""

    model: str = field(
        default=TINY_MODEL,
        metadata={
            "help": "open_clip model name (e.g. 'ViT-B-32', 'ViT-L-14'), 'tiny' for the built-in "
            "random-weight model whose similarities are meaningless (tests, offline runs), or 'mini' for the "
            "small model trained on covip's synthetic world (build it once: covip train embedder --config "
            "mini-cpu)."
        },
    )
    pretrained: str | None = field(
        default=None,
        metadata={
            "help": "open_clip pretrained tag (e.g. 'laion2b_s34b_b79k'), a local weights file "
            "(e.g. /path/open_clip_pytorch_model.bin), or 'random'. None picks the model's default "
            "tag ('random' for tiny, the cached build for mini)."
        },
    )
    device: str = field(
        default="auto",
        metadata={"help": "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:1' or 'mps'."},
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "Images per forward pass; results do not depend on it, only speed and memory."},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "Seed for random weights (tiny or 'random'), so two builds give identical vectors."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where downloaded weights are cached; None uses the Hugging Face / open_clip default "
            "(for mini: covip's cache, $COVIP_CACHE or e.g. ~/.cache/covip)."
        },
    )

    def __post_init__(self) -> None:
        """Reject values that would only fail later, deep inside torch."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"EmbedderConfig.model must be a non-empty model name, got {self.model!r}")
        if self.pretrained is not None and (not isinstance(self.pretrained, str) or not self.pretrained):
            raise InputError(
                f"EmbedderConfig.pretrained must be a tag, a file path or None, got {self.pretrained!r}"
            )
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"EmbedderConfig.batch_size must be a positive integer, got {self.batch_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"EmbedderConfig.seed must be an integer, got {self.seed!r}")
        device, _, index = self.device.partition(":") if isinstance(self.device, str) else (None, "", "")
        if device not in ("auto", "cpu", "cuda", "mps") or (
            index and not (device == "cuda" and index.isdigit())
        ):
            raise InputError(
                f"EmbedderConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}"
            )

    @property
    def is_tiny(self) -> bool:
        """Whether this config selects the built-in tiny random-weight model."""
        return self.model.strip().lower() == TINY_MODEL

    @property
    def is_mini(self) -> bool:
        """Whether this config selects the mini model trained on the synthetic world."""
        return self.model.strip().lower() == MINI_MODEL


def check_images(images: Sequence[Image.Image | Photo]) -> list[Image.Image]:
    """Validate an embed_images argument and return the PIL images (Photos unwrapped)."""
    if isinstance(images, (Image.Image, Photo)):
        raise InputError("embed_images takes a sequence of images; wrap a single image in a list")
    try:
        items = list(images)
    except TypeError as exc:
        raise InputError(
            f"embed_images takes a sequence of PIL images or Photos, got {type(images).__name__}"
        ) from exc
    out: list[Image.Image] = []
    for i, item in enumerate(items):
        if isinstance(item, Photo):
            out.append(item.image)
        elif isinstance(item, Image.Image):
            out.append(item)
        else:
            raise InputError(
                f"embed_images item {i} is a {type(item).__name__}, not a PIL image or Photo; "
                "take files in with covip.sdk.imaging.load_photo first"
            )
    return out
