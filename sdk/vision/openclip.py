"""Image embeddings with open_clip: any open_clip model + weights, the built-in tiny random model, or
``mini`` (a small model trained on covip's synthetic world, built once into the cache; see :mod:`.mini`).

torch and open_clip are imported only when an :class:`OpenClipEmbedder` is built, so this module
(and ``covip.sdk.vision``) imports on machines without torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from covip.sdk._config import pick_device
from covip.sdk._extras import require
from covip.sdk.errors import EmbedderError, InputError
from covip.sdk.imaging import Photo, to_rgb
from covip.sdk.vision.base import EmbedderConfig, check_images
from covip.sdk.vision.mini import MINI_ARCH, MINI_CONFIG_PATH, find_mini_weights

__all__ = ["OpenClipEmbedder", "TINY_CONFIG_PATH", "TINY_ARCH"]

logger = logging.getLogger(__name__)

TINY_ARCH = "covip-tiny-clip"
"""open_clip model-config name of the tiny architecture (the preset file's stem)."""
TINY_CONFIG_PATH = Path(__file__).resolve().parent.parent / "presets" / f"{TINY_ARCH}.json"
_TINY_ID_NAME = "covip-tiny"
_MINI_ID_NAME = "covip-mini"
_RANDOM = "random"
_PREFERRED_TAGS = ("laion2b_s34b_b79k", "laion2b_s32b_b82k", "datacomp_xl_s13b_b90k", "openai")
_HF_WEIGHTS = "open_clip_pytorch_model.bin"
_LOCAL_NAMES = ("open_clip_model.safetensors", _HF_WEIGHTS, "open_clip_pytorch_model.safetensors")
_PROGRESS_THRESHOLD = 256
_PROBE_TIMEOUT_S = 5.0

_lock = threading.Lock()
_registered: set[str] = set()
_random_models: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_digests: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class _Weights:
    """Where a model's weights come from once the config is resolved."""

    arch: str  # open_clip model name handed to create_model
    path: str | None  # local checkpoint file, None for random weights (or a schema model)
    model_id: str
    meaningless: bool
    preprocess: dict[str, Any]  # image_mean/image_std/... overrides from the pretrained tag


class OpenClipEmbedder:
    """An :class:`~covip.sdk.vision.Embedder` backed by an open_clip image tower."""

    def __init__(self, config: EmbedderConfig | None = None, **overrides: Any) -> None:
        """Build the model named by ``config`` (default: tiny); raise EmbedderError if it cannot load."""
        self.config = (config or EmbedderConfig()).with_overrides(**overrides)
        self._open_clip = require("open_clip", feature="CLIP embeddings", extra="torch")
        self._torch = require("torch", feature="CLIP embeddings", extra="torch")
        self.device = pick_device(self._torch, self.config.device, EmbedderError)
        weights = _resolve_weights(self._open_clip, self.config)
        if weights.meaningless:
            logger.warning(
                "embedder %s has random weights: its similarities are meaningless (use it for tests and "
                "offline runs only; pick e.g. ViT-B-32/laion2b_s34b_b79k for real search)",
                weights.model_id,
            )
        self._model, self._preprocess = _build(
            self._open_clip, self._torch, self.config, weights, self.device
        )
        self.model_id: str = weights.model_id
        self.meaningless: bool = weights.meaningless
        self.dim: int = _output_dim(self._model)
        self._closed = False
        logger.info("embedder %s ready on %s (dim %d)", self.model_id, self.device, self.dim)

    def __repr__(self) -> str:
        """Show model id, dimension and device."""
        return f"OpenClipEmbedder(model_id={self.model_id!r}, dim={self.dim}, device={self.device!r})"

    def embed_images(
        self,
        images: Sequence[Image.Image | Photo],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Return (n, dim) float32 unit rows; batch_size None uses the config; progress None = auto (n > 256)."""
        if self._closed:
            raise EmbedderError(f"embedder {self.model_id} is closed; build a new one with make_embedder()")
        pil_images = check_images(images)
        bs = self.config.batch_size if batch_size is None else batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(pil_images)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        show = progress if progress is not None else n > _PROGRESS_THRESHOLD
        torch = self._torch
        from covip.sdk.progress import progress_bar

        with torch.inference_mode(), progress_bar(total=n, unit="image", desc="embedding", enabled=show) as bar:
            for start in range(0, n, bs):
                chunk = pil_images[start : start + bs]
                batch = torch.stack([self._prepare(img, start + i) for i, img in enumerate(chunk)])
                feats = self._model.encode_image(batch.to(self.device)).float()
                feats = torch.nn.functional.normalize(feats, dim=-1)
                out[start : start + len(chunk)] = feats.cpu().numpy()
                bar.update(len(chunk))
        return out

    def _prepare(self, img: Image.Image, index: int) -> Any:
        """RGB-convert (alpha over white) and run open_clip's own eval transform on one image."""
        try:
            return self._preprocess(to_rgb(img))
        except (OSError, SyntaxError, ValueError) as exc:
            raise InputError(
                f"image {index} could not be decoded for embedding ({exc}); take it in with load_photo() "
                "to get a clear error about what is wrong with it"
            ) from exc

    def close(self) -> None:
        """Drop the model (shared random-weight models stay cached) and free cached GPU memory."""
        if self._closed:
            return
        self._closed = True
        self._model = None
        self._preprocess = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def __enter__(self) -> OpenClipEmbedder:
        """Use the embedder in a ``with`` block that closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the embedder at the end of a ``with`` block."""
        self.close()


# ----------------------------------------------------------------------------- building


def _register_preset(open_clip: ModuleType, arch: str, path: Path) -> None:
    """Add one of covip's model presets (tiny, mini) to open_clip's model-config registry once per process."""
    with _lock:
        if arch in _registered and arch in open_clip.list_models():
            return
        if not path.is_file():
            raise EmbedderError(f"the model config {path} is missing; reinstall covip (pip install -e .)")
        open_clip.add_model_config(path)
        _registered.add(arch)


def _resolve_weights(open_clip: ModuleType, config: EmbedderConfig) -> _Weights:
    """Turn model + pretrained into an architecture name, a local weights file and a stable model id."""
    pretrained = config.pretrained.strip() if config.pretrained else None
    if config.is_tiny:
        _register_preset(open_clip, TINY_ARCH, TINY_CONFIG_PATH)
        arch, id_name = TINY_ARCH, _TINY_ID_NAME
        if pretrained is None or pretrained.lower() == _RANDOM:
            return _Weights(arch, None, f"open_clip/{id_name}/random-seed{config.seed}", True, {})
        path = _local_weights(pretrained, arch)
        return _Weights(arch, path, f"open_clip/{id_name}/file-{_digest(path)}", True, {})
    if config.is_mini:
        _register_preset(open_clip, MINI_ARCH, MINI_CONFIG_PATH)
        if pretrained is not None and pretrained.lower() == _RANDOM:
            return _Weights(MINI_ARCH, None, f"open_clip/{_MINI_ID_NAME}/random-seed{config.seed}", True, {})
        path = str(find_mini_weights(config.cache_dir)) if pretrained is None else _local_weights(pretrained, MINI_ARCH)
        return _Weights(MINI_ARCH, path, f"open_clip/{_MINI_ID_NAME}/file-{_digest(path)}", False, {})

    arch = config.model.strip()
    if arch.startswith(("hf-hub:", "local-dir:")):
        return _Weights(arch, None, f"open_clip/{arch}", False, {})
    if open_clip.get_model_config(arch) is None:
        names = open_clip.list_models()
        close = [m for m in names if arch.lower().replace("/", "-") in m.lower()][:10]
        raise EmbedderError(
            f"open_clip has no model named {arch!r}"
            + (f"; did you mean one of {close}?" if close else "")
            + " Use 'tiny' or a name from open_clip.list_models(), e.g. 'ViT-B-32' or 'ViT-L-14'"
        )
    if pretrained is None:
        pretrained = _default_tag(open_clip, arch)
    if pretrained.lower() == _RANDOM:
        return _Weights(arch, None, f"open_clip/{arch}/random-seed{config.seed}", True, {})
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if tag_cfg:
        tag = pretrained.lower().replace("-", "_")
        path = _fetch_tag(open_clip, arch, tag, tag_cfg, config.cache_dir)
        preprocess = {
            f"image_{key}": tag_cfg[key]
            for key in ("mean", "std", "interpolation", "resize_mode")
            if tag_cfg.get(key) is not None
        }
        return _Weights(arch, path, f"open_clip/{arch}/{tag}", False, preprocess)
    if _looks_like_path(pretrained):
        path = _local_weights(pretrained, arch)
        return _Weights(arch, path, f"open_clip/{arch}/file-{_digest(path)}", False, {})
    tags = open_clip.list_pretrained_tags_by_model(arch)
    raise EmbedderError(
        f"pretrained={pretrained!r} is neither a known open_clip tag for {arch!r} (known: {tags or 'none'}) "
        "nor an existing weights file; pass one of those tags, a path to a local weights file, or 'random'"
    )


def _default_tag(open_clip: ModuleType, arch: str) -> str:
    """The pretrained tag used when none is given: a well-known LAION/OpenAI tag, else the first listed."""
    tags = open_clip.list_pretrained_tags_by_model(arch)
    for tag in _PREFERRED_TAGS:
        if tag in tags:
            return tag
    if tags:
        return tags[0]
    raise EmbedderError(
        f"open_clip knows no pretrained weights for {arch!r}; pass pretrained=<local weights file>, "
        "or pretrained='random' for random (meaningless) weights"
    )


def _looks_like_path(value: str) -> bool:
    """Whether a pretrained value is meant as a file path rather than a tag."""
    return (
        os.sep in value
        or "/" in value
        or value.startswith(("~", "."))
        or value.endswith((".bin", ".pt", ".pth", ".safetensors", ".npz"))
        or Path(value).exists()
    )


def _local_weights(value: str, arch: str) -> str:
    """Check a local weights path (file, or a folder holding open_clip weights) and return the file."""
    path = Path(value).expanduser()
    if path.is_dir():
        for name in _LOCAL_NAMES:
            if (path / name).is_file():
                return str(path / name)
        raise EmbedderError(
            f"weights folder '{path}' holds none of {list(_LOCAL_NAMES)}; point pretrained at the weights file itself"
        )
    if not path.is_file():
        raise EmbedderError(
            f"weights file '{path}' for open_clip model {arch!r} does not exist; check the path, or "
            f"download the weights first (e.g. --embedder ViT-B-32 --pretrained /path/{_HF_WEIGHTS})"
        )
    return str(path)


def _digest(path: str) -> str:
    """First 16 hex digits of the file's sha256 (cached per path, size and mtime) for the model id."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    digest = h.hexdigest()[:16]
    with _lock:
        _digests[key] = digest
    return digest


def _offline() -> bool:
    """True when Hugging Face offline mode is on (read now, not at import time)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _weights_source(tag_cfg: dict[str, Any]) -> tuple[str | None, list[str], str]:
    """(hf repo, candidate file names, human-readable download address) for a pretrained tag."""
    hub = tag_cfg.get("hf_hub") or ""
    if hub:
        # open_clip's convention: 'org/repo/' means the default file, 'org/repo/file.pt' names it
        repo, filename = (hub.rstrip("/"), _HF_WEIGHTS) if hub.endswith("/") else os.path.split(hub)
        names = [filename]
        if filename == _HF_WEIGHTS:  # the safetensors twin open_clip itself prefers
            names.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        return repo, names, f"https://huggingface.co/{repo}/blob/main/{filename}"
    url = tag_cfg.get("url") or ""
    return None, [os.path.basename(url)] if url else [], url or "the open_clip model card"


def _fetch_tag(
    open_clip: ModuleType, arch: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None
) -> str:
    """Local file for a pretrained tag: the cache only when offline, else download through open_clip."""
    repo, names, source = _weights_source(tag_cfg)
    found = _cached_tag_file(repo, names, cache_dir)
    if found:
        return found
    if _offline():
        reason = "they are not in the local cache and Hugging Face offline mode is on (HF_HUB_OFFLINE)"
    elif (unreachable := _unreachable(repo, tag_cfg)) is not None:
        reason = f"they are not in the local cache and the download server cannot be reached ({unreachable})"
    else:
        logger.info("downloading open_clip weights %s/%s from %s", arch, tag, source)
        try:
            path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as exc:  # network, HTTP, disk: all mean "not available here"
            path, reason = "", f"{type(exc).__name__}: {exc}"
        else:
            reason = "open_clip returned no file"
        if path and os.path.isfile(path):
            return str(path)
    raise EmbedderError(
        f"weights for open_clip model {arch!r} (pretrained={tag!r}) could not be loaded: {reason}. "
        "This machine may be offline, so they cannot be downloaded. Fetch the weights file on a machine "
        f"with network ({source}), copy it here and point pretrained at the local file, e.g. "
        f"--embedder {arch} --pretrained /path/{names[-1] if names else _HF_WEIGHTS} "
        f"(or EmbedderConfig(model={arch!r}, pretrained='/path/{names[-1] if names else _HF_WEIGHTS}'))"
    )


def _cached_tag_file(repo: str | None, names: list[str], cache_dir: str | None) -> str | None:
    """Find already-downloaded weights for a tag without touching the network."""
    if repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for name in names:
            hit = try_to_load_from_cache(repo, name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    for name in names:  # open_clip's own URL download cache
        candidate = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _unreachable(repo: str | None, tag_cfg: dict[str, Any]) -> str | None:
    """Why the weights server cannot be reached (a quick TCP probe), or None when it can or a proxy is set.

    Without this, huggingface_hub retries a failed DNS lookup for ~45 s before giving up.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    if repo:
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        endpoint = tag_cfg.get("url") or ""
    parsed = urlparse(endpoint)
    if not parsed.hostname:
        return None
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{parsed.hostname}:{port}: {exc}"
    return None


def _build(
    open_clip: ModuleType, torch: ModuleType, config: EmbedderConfig, weights: _Weights, device: str
) -> tuple[Any, Any]:
    """Create the model in eval mode on ``device``; random-weight models are cached per process."""
    key = (weights.arch, config.seed, device) if weights.path is None and weights.meaningless else None
    if key is not None:
        with _lock:
            if key in _random_models:
                return _random_models[key]
    try:
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(weights.meaningless):
            torch.manual_seed(config.seed)  # seed the init without disturbing the caller's RNG
            model, _, preprocess = open_clip.create_model_and_transforms(
                weights.arch,
                pretrained=weights.path,
                device="cpu",
                precision="fp32",
                cache_dir=config.cache_dir,
                weights_only=True,
                **weights.preprocess,
            )
    except EmbedderError:
        raise
    except Exception as exc:
        if weights.path is not None:
            raise EmbedderError(
                f"weights file '{weights.path}' could not be loaded into open_clip model {weights.arch!r} "
                f"({type(exc).__name__}: {exc}); check that it is an open_clip checkpoint for this model "
                "and that the download finished"
            ) from exc
        if weights.arch.startswith("hf-hub:"):
            raise EmbedderError(
                f"open_clip model {weights.arch!r} could not be loaded ({exc}); this machine may be offline: "
                "download the repository and use 'local-dir:/path/to/folder' instead"
            ) from exc
        raise EmbedderError(f"open_clip model {weights.arch!r} could not be built: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    model = model.to(device)
    if key is not None:
        with _lock:
            model, preprocess = _random_models.setdefault(key, (model, preprocess))
    return model, preprocess


class _NoRandomInitWarning(logging.Filter):
    """Drops open_clip's root-logger "No pretrained weights loaded" line: covip already warned, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning(active: bool) -> Iterator[None]:
    if not active:
        yield
        return
    filt = _NoRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(filt)
    try:
        yield
    finally:
        root.removeFilter(filt)


def _output_dim(model: Any) -> int:
    """Embedding length of the image tower."""
    dim = getattr(getattr(model, "visual", None), "output_dim", None)
    if isinstance(dim, int):
        return dim
    proj = getattr(model, "text_projection", None)
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[-1])
    raise EmbedderError("cannot tell the embedding size of this open_clip model")
