"""Loading and small tensor helpers of :mod:`covip.sdk.engines.transformers` (kept apart for size)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from covip.sdk.engines.base import GenerationConfig, Message
from covip.sdk.errors import EngineError, InputError
from covip.sdk.imaging import Photo, load_photo
from covip.sdk.models.tiny import TINY_MODELS, build_tiny_vlm, read_tiny_marker, resolve_tiny_name

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
logger = logging.getLogger("covip.sdk.engines.transformers")


def _pick_dtype(torch: Any, requested: str, device: str) -> Any:
    if requested == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, requested)


def _resolve_model(model: str) -> tuple[str, str, dict[str, Any] | None]:
    """(what to hand to from_pretrained, the model id, the tiny marker or None)."""
    name = resolve_tiny_name(model)
    path = Path(model).expanduser()
    if name is not None and not path.is_dir():
        path = build_tiny_vlm(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EngineError(f"{path} is a directory but holds no config.json; point at a directory written by "
                              "save_pretrained (config.json, weights, processor files)")
        marker = read_tiny_marker(path)
        if marker is not None:  # the same id wherever the tiny model was built
            return str(path), f"{marker.get('name', 'tiny')}-{str(marker.get('build_sha256', ''))[:12]}", marker
        return str(path), f"{path.resolve().name}@{_dir_fingerprint(path)}", None
    if model.startswith((".", "/", "~", "\\")) or not _HUB_ID.match(model) or path.exists():
        raise EngineError(
            f"model directory {str(path)!r} does not exist; give a directory written by save_pretrained, "
            f"a hub id such as 'Qwen/Qwen3-VL-2B-Instruct', or one of {', '.join(('tiny',) + TINY_MODELS)}"
        )
    return model, model, None


def _dir_fingerprint(path: Path) -> str:
    """A short hash of a model directory's config and weight files (names, sizes, times)."""
    h = hashlib.sha256()
    try:
        h.update((path / "config.json").read_bytes())
        for p in sorted(path.iterdir()):
            if p.suffix in (".safetensors", ".bin", ".json") and p.is_file():
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    except OSError as exc:
        raise EngineError(f"cannot read the model directory {path} ({exc})") from exc
    return h.hexdigest()[:10]


def _auto_model_class(tf: Any, source: str, common: dict[str, Any]) -> Any:
    """AutoModelForImageTextToText, falling back to AutoModelForVision2Seq for older model types."""
    auto = getattr(tf, "AutoModelForImageTextToText", None)
    if auto is None:
        return tf.AutoModelForVision2Seq
    try:
        config = tf.AutoConfig.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read the model config of {source!r} ({exc})") from exc
    if type(config) in auto._model_mapping:
        return auto
    fallback = getattr(tf, "AutoModelForVision2Seq", None)
    if fallback is not None and type(config) in fallback._model_mapping:
        return fallback
    raise EngineError(f"{source!r} ({config.model_type}) is not an image-text-to-text model transformers knows")


def set_pixels(image_processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Bound the pixels a Qwen-VL image processor resizes to (``size`` shortest/longest edge, and the
    ``min_pixels``/``max_pixels`` attributes where it has them); None leaves a bound as it is."""
    if not (min_pixels or max_pixels):
        return
    size = dict(getattr(image_processor, "size", None) or {})
    if not ("shortest_edge" in size or "longest_edge" in size or hasattr(image_processor, "min_pixels")):
        raise InputError(f"min_pixels/max_pixels cannot be set on {type(image_processor).__name__}; leave them "
                         "unset (None) for this model")
    for key, attr, value in (("shortest_edge", "min_pixels", min_pixels), ("longest_edge", "max_pixels", max_pixels)):
        if value:
            size[key] = value
            if hasattr(image_processor, attr):
                setattr(image_processor, attr, value)
    image_processor.size = size


def template_messages(msgs: Sequence[Message], *, accept_image: Callable[[], None] | None = None
                      ) -> tuple[list[dict[str, Any]], list[Image.Image], list[str]]:
    """(messages for a chat template, with every image part a bare ``{"type": "image"}``; the photos in prompt
    order; their pixel keys). ``accept_image`` is called before each photo is taken in (it raises when the
    model cannot take images)."""
    template_msgs: list[dict[str, Any]] = []
    images: list[Image.Image] = []
    keys: list[str] = []
    for msg in msgs:
        content = msg["content"]
        if isinstance(content, str):
            template_msgs.append({"role": msg["role"], "content": content})
            continue
        parts = []
        for part in content:
            if part["type"] == "image":
                if accept_image is not None:
                    accept_image()
                img, key = _take_image(part["image"])
                images.append(img)
                keys.append(key)
                parts.append({"type": "image"})
            else:
                parts.append({"type": "text", "text": part["text"]})
        template_msgs.append({"role": msg["role"], "content": parts})
    return template_msgs, images, keys


def _take_image(payload: Any) -> tuple[Image.Image, str]:
    """An RGB PIL image plus a key that names its pixels (photos with the same key share cached KV)."""
    if isinstance(payload, Photo):
        return payload.image, payload.sha256
    if isinstance(payload, Image.Image):
        orientation = payload.getexif().get(0x0112, 1) if payload.format else 1
        img = payload if payload.mode == "RGB" and orientation in (None, 1) else load_photo(payload).image
        h = hashlib.sha256(f"{img.width}x{img.height}".encode())
        h.update(img.tobytes())
        return img, "px:" + h.hexdigest()
    photo = load_photo(payload)
    return photo.image, photo.sha256


def _same_tensors(torch: Any, a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = {k for k in b if k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                   "image_grid_thw")}
    if set(a) & keys != keys:
        return False
    for k in keys:
        x, y = a[k], b[k]
        if not hasattr(x, "shape") or x.shape != y.shape:
            return False
        if not torch.equal(x.to(y.dtype), y):
            return False
    return True


def _image_spans(ids: list[int], image_token_id: int | None) -> list[tuple[int, int]]:
    """(start, end) of each run of image placeholder tokens, in order."""
    if image_token_id is None:
        return []
    spans: list[tuple[int, int]] = []
    start = None
    for i, tok in enumerate(ids):
        if tok == image_token_id and start is None:
            start = i
        elif tok != image_token_id and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(ids)))
    return spans


def _make_generator(torch: Any, config: GenerationConfig) -> Any:
    if config.temperature == 0:
        return None
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


@contextlib.contextmanager
def quiet_progress(tf: Any) -> Iterator[None]:
    """Hide transformers' "Loading weights" bar unless covip logs at INFO (the SDK is quiet by default)."""
    if logging.getLogger("covip").isEnabledFor(logging.INFO):
        yield
        return
    hub = tf.utils.logging
    was_enabled = hub.is_progress_bar_enabled()
    hub.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hub.enable_progress_bar()
