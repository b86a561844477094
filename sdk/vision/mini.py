"""Where the ``mini`` embedder's weights live, and the clear error when they are not built yet.

``mini`` is a small open_clip model (architecture: the preset file ``covip-mini-clip.json``) trained
contrastively on the photos of covip's synthetic world, so that it really retrieves there (the ``tiny``
embedder has random weights). Training needs the world generator of the training package; the SDK
never imports that package, so it never trains: ``covip train embedder --config mini-cpu`` builds the
weights into covip's cache once, and ``make_embedder("mini")`` loads them from there.

Cache layout (``<cache>`` = ``$COVIP_CACHE`` or the per-user cache directory)::

    <cache>/embedders/covip-mini-clip-<preset digest>/
        open_clip_model.safetensors     the weights (open_clip state dict)
        covip_embedder.json             the build record, written last: recipe, seed, metrics, versions

The folder name carries a digest of the preset, so a changed architecture never loads old weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from covip.sdk._config import cache_root
from covip.sdk.errors import EmbedderError

__all__ = [
    "MINI_ARCH",
    "MINI_CONFIG_PATH",
    "MINI_MARKER",
    "MINI_WEIGHTS",
    "MINI_BUILD_COMMAND",
    "mini_preset_digest",
    "mini_embedder_dir",
    "read_mini_marker",
    "find_mini_weights",
]

MINI_ARCH = "covip-mini-clip"
"""open_clip model-config name of the mini architecture (the preset file's stem)."""
MINI_CONFIG_PATH = Path(__file__).resolve().parent.parent / "presets" / f"{MINI_ARCH}.json"
MINI_MARKER = "covip_embedder.json"
MINI_WEIGHTS = "open_clip_model.safetensors"
MINI_BUILD_COMMAND = "covip train embedder --config mini-cpu"
"""The command that trains the mini embedder into the cache."""
_MARKER_KIND = "covip-mini-embedder"


def mini_preset_digest() -> str:
    """sha256 of the mini preset (canonical JSON), the key the cache folder is named by."""
    try:
        preset = json.loads(MINI_CONFIG_PATH.read_text())
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"the mini model config {MINI_CONFIG_PATH} cannot be read ({exc}); reinstall covip "
                            "(pip install -e .)") from exc
    return hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()


def mini_embedder_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder of the mini embedder's weights (``cache_dir`` replaces covip's cache root)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "embedders" / f"{MINI_ARCH}-{mini_preset_digest()[:12]}"


def read_mini_marker(folder: str | Path) -> dict[str, Any] | None:
    """The build record of a mini embedder folder, or None when there is no finished build."""
    try:
        data = json.loads((Path(folder) / MINI_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != _MARKER_KIND:
        return None
    return data


def find_mini_weights(cache_dir: str | Path | None = None) -> Path:
    """The built weights file, or an EmbedderError that says how to build it."""
    folder = mini_embedder_dir(cache_dir)
    marker = read_mini_marker(folder)
    weights = folder / MINI_WEIGHTS
    if marker is not None and marker.get("preset_sha256") == mini_preset_digest() and weights.is_file():
        return weights
    raise EmbedderError(
        f"the 'mini' embedder is not built yet (no finished build in {folder}). Build it once with "
        f"`{MINI_BUILD_COMMAND}` (trains an open_clip model on the synthetic world for a few minutes on CPU; "
        "needs pip install 'covip[train]'), or pass pretrained=<weights file> (--pretrained PATH) to load "
        "weights built elsewhere"
    )
