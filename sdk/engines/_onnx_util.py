"""numpy helpers of :mod:`covip.sdk.engines.onnx`: image preprocessing, multimodal RoPE positions, the chat
template, sampling and onnxruntime sessions. Nothing here imports torch or transformers.

The preprocessing and the positions reproduce what transformers does for Qwen2-VL-style models
(``Qwen2VLImageProcessor`` and ``get_rope_index``); ``covip export onnx`` / ``verify`` check them against
transformers on every export.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from covip.sdk.errors import EngineError

__all__ = [
    "ImageSpec",
    "preprocess_image",
    "rope_positions",
    "ort_severity",
    "TokenizerAdapter",
]

logger = logging.getLogger("covip.sdk.engines.onnx")

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageSpec:
    """The fixed input of an exported vision encoder and how photos are brought to it (manifest ``onnx.image``)."""

    height: int
    width: int
    patch_size: int
    temporal_patch_size: int
    merge_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    rescale_factor: float
    resample: str = "bicubic"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        try:
            spec = cls(height=int(d["height"]), width=int(d["width"]), patch_size=int(d["patch_size"]),
                       temporal_patch_size=int(d["temporal_patch_size"]), merge_size=int(d["merge_size"]),
                       image_mean=tuple(float(x) for x in d["image_mean"]),  # type: ignore[arg-type]
                       image_std=tuple(float(x) for x in d["image_std"]),  # type: ignore[arg-type]
                       rescale_factor=float(d["rescale_factor"]), resample=str(d.get("resample", "bicubic")))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineError(f"the export's image settings are incomplete or malformed ({exc!r}); "
                              "re-run `covip export onnx`") from exc
        factor = spec.patch_size * spec.merge_size
        if spec.height % factor or spec.width % factor or spec.resample not in _RESAMPLE:
            raise EngineError(f"the export's image size {spec.width}x{spec.height} is not a multiple of "
                              f"{factor} or its resampling {spec.resample!r} is unknown")
        return spec

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t, h, w) patch grid of one image (what transformers calls image_grid_thw)."""
        return 1, self.height // self.patch_size, self.width // self.patch_size

    @property
    def tokens(self) -> int:
        """Placeholder tokens one image takes in the prompt."""
        _, gh, gw = self.grid
        return gh * gw // self.merge_size**2


def preprocess_image(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """``pixel_values`` of one RGB image: resized to the fixed size, rescaled, normalized and patchified.

    Rows are in the order of ``Qwen2VLImageProcessor``: merge blocks row-major, the ``merge x merge``
    patches inside a block row-major; each row is ``channel x temporal x patch x patch`` flattened, the one
    frame repeated ``temporal_patch_size`` times. An image of another size is stretched to the fixed size
    (PIL resampling, so pixels can differ slightly from transformers' torchvision resize; an image that
    already has the fixed size is used as is and gives exactly the processor's values).
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (spec.width, spec.height):
        image = image.resize((spec.width, spec.height), _RESAMPLE[spec.resample])
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)  # C, H, W
    # transformers fuses rescale into normalize: (x - mean / r) / (std / r), all in float32
    inv = np.float32(1.0 / spec.rescale_factor)
    mean = (np.asarray(spec.image_mean, dtype=np.float32) * inv).astype(np.float32)[:, None, None]
    std = (np.asarray(spec.image_std, dtype=np.float32) * inv).astype(np.float32)[:, None, None]
    x = (x - mean) / std
    p, m, t = spec.patch_size, spec.merge_size, spec.temporal_patch_size
    c, h, w = x.shape
    gh, gw = h // p, w // p
    x = x.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)  # gh/m, gw/m, m, m, c, p, p
    x = np.broadcast_to(x[:, :, :, :, :, None], (gh // m, gw // m, m, m, c, t, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32)


# ----------------------------------------------------------------------------- multimodal RoPE


def rope_positions(ids: Sequence[int], spans: Sequence[tuple[int, int]], grid: tuple[int, int, int],
                   merge_size: int) -> tuple[np.ndarray, int]:
    """3-D (temporal, height, width) positions of a prompt and the RoPE delta for the tokens after it.

    ``spans`` are the (start, end) of each image's placeholder tokens; every image has the patch grid
    ``grid``. Text tokens count up on all three axes; an image starting at position ``p`` gets
    ``(p, p + row, p + col)`` on its merged grid and the text after it resumes at
    ``p + max(rows, cols)`` (transformers' ``get_rope_index`` for images, Qwen2.5-VL and Qwen3-VL alike).
    """
    n = len(ids)
    if not spans:  # text only: the same position on all three axes
        return np.broadcast_to(np.arange(n, dtype=np.int64), (3, n)).copy(), 0
    pos = np.zeros((3, n), dtype=np.int64)
    t, gh, gw = grid
    rows, cols = gh // merge_size, gw // merge_size
    img_t = np.zeros((t, rows, cols), dtype=np.int64)
    img_h = np.broadcast_to(np.arange(rows)[None, :, None], (t, rows, cols))
    img_w = np.broadcast_to(np.arange(cols)[None, None, :], (t, rows, cols))
    current = 0
    i = 0
    for start, end in list(spans) + [(n, n)]:
        if end - start != t * rows * cols and start < n:
            raise EngineError(f"an image span of {end - start} tokens does not match the grid {grid}")
        length = start - i
        if length > 0:
            pos[:, i:start] = np.arange(current, current + length)[None, :]
            current += length
        if start < n:
            pos[0, start:end] = (img_t + current).reshape(-1)
            pos[1, start:end] = (img_h + current).reshape(-1)
            pos[2, start:end] = (img_w + current).reshape(-1)
            current += max(rows, cols)
        i = end
    delta = int(pos.max()) + 1 - n if n else 0
    return pos, delta


# ----------------------------------------------------------------------------- chat template


# ----------------------------------------------------------------------------- tokenizer


class TokenizerAdapter:
    """A ``tokenizers.Tokenizer`` with the two calls the engine needs, decoding like transformers."""

    def __init__(self, path: Path, *, clean_up_spaces: bool = False) -> None:
        from covip.sdk._extras import require

        tokenizers = require("tokenizers", feature="the ONNX engine", extra="onnx")
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on a bad file
            raise EngineError(f"cannot read the tokenizer {path} ({exc}); re-run `covip export onnx`") from exc
        self.clean_up_spaces = clean_up_spaces

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up_spaces:  # transformers' clean_up_tokenization
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def __len__(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))


# ----------------------------------------------------------------------------- sampling


# ----------------------------------------------------------------------------- onnxruntime


def ort_severity() -> int:
    """onnxruntime's log severity for covip's logging level: DEBUG -> 1 (info), INFO -> 2 (warning),
    else 3 (errors only). onnxruntime writes its own log lines to stderr; covip's logger carries the rest."""
    if logger.isEnabledFor(logging.DEBUG):
        return 1
    if logger.isEnabledFor(logging.INFO):
        return 2
    return 3
