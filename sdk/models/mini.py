"""The trained ``mini`` model: where it is installed, and the demo set that comes with it.

The miniature reproduction (``covip repro mini``) trains a small Qwen3-VL on covip's synthetic world (SFT, then
GSPO, as in the CoViP paper's recipe). Its last step installs the trained checkpoint into covip's cache, with
the prompt pack it was trained with and a demo set drawn from the world's *held-out* concepts (never trained
on): one remembered photo with its dialogue per concept, and a new photo of it in another pose, background and
light. ``covip demo --model mini`` reads that folder; the SDK never imports the training package, so it never
trains: when nothing is installed, :func:`find_mini_model` says how to build it.

Cache layout (``<cache>`` = ``$COVIP_CACHE`` or the per-user cache directory)::

    <cache>/models/covip-mini/
        model/                  the checkpoint (transformers save_pretrained)
        prompt_pack.toml        the prompt wording it was trained with (covip.sdk.prompts.load_pack), if not covip's
        demo/                   memory photos and new photos of the held-out demo concepts
        covip_mini.json         the install record, written last: source, concepts, metrics
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk._config import cache_root
from covip.sdk.errors import NotFoundError
from covip.sdk.files import path_inside

__all__ = [
    "MINI_MODEL_SPEC",
    "MINI_MODEL_MARKER",
    "MINI_MODEL_BUILD_COMMAND",
    "MINI_MODEL_FORMAT",
    "MINI_MODEL_KIND",
    "MAX_DEMO_CONCEPTS",
    "MiniDemoConcept",
    "InstalledMini",
    "mini_model_dir",
    "find_mini_model",
]

MINI_MODEL_SPEC = "mini"
"""The ``--model`` value that selects the installed mini model."""
MINI_MODEL_MARKER = "covip_mini.json"
MINI_MODEL_BUILD_COMMAND = "covip repro mini"
"""Trains and installs the mini model (about 2 hours per seed on two CPU cores; see training/README.md)."""
MINI_MODEL_FORMAT = 1
MINI_MODEL_KIND = "covip-mini-model"
"""The ``kind`` of an install record."""
MAX_DEMO_CONCEPTS = 64


@dataclass(frozen=True)
class MiniDemoConcept:
    """One held-out concept of the demo: its name, SDK concept kind, the remembered photo with its dialogue,
    and a new photo of it."""

    name: str
    kind: str
    dialogue: str
    memory_photo: Path
    new_photo: Path


@dataclass(frozen=True)
class InstalledMini:
    """An installed mini model: checkpoint folder, prompt pack file, demo concepts and the install record."""

    folder: Path
    model_dir: Path
    prompt_pack: Path | None  # None: covip's own wording
    concepts: tuple[MiniDemoConcept, ...]
    record: dict[str, Any] = field(default_factory=dict)


def mini_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder of the installed mini model (``cache_dir`` replaces covip's cache root)."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    return root / "models" / "covip-mini"


def _not_built(folder: Path, why: str) -> NotFoundError:
    return NotFoundError(
        f"the 'mini' model is not installed ({why}). Build it with `{MINI_MODEL_BUILD_COMMAND}` (trains the "
        "miniature CoViP recipe on two CPU cores, about 2 hours per seed, and installs seed 0's model into "
        f"{folder}; needs pip install 'covip[train]'), or install a model you trained yourself with "
        "`covip train install-mini --model DIR --world DIR`")


def _inside(folder: Path, name: Any, what: str) -> Path:
    """A file the record names, which must be a plain relative path inside the install folder."""
    path = path_inside(folder, name)
    if path is None:
        raise _not_built(folder, f"its record names {what} {name!r}, not a file inside the folder; reinstall it")
    if not path.exists():
        raise _not_built(folder, f"{what} {name} is missing; reinstall it")
    return path


def find_mini_model(cache_dir: str | Path | None = None) -> InstalledMini:
    """The installed mini model, or a NotFoundError that says how to build it."""
    folder = mini_model_dir(cache_dir)
    try:
        record = json.loads((folder / MINI_MODEL_MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _not_built(folder, f"no {MINI_MODEL_MARKER} in {folder}") from None
    except (OSError, ValueError) as exc:
        raise _not_built(folder, f"its record {MINI_MODEL_MARKER} cannot be read: {exc}") from None
    if not isinstance(record, dict) or record.get("kind") != MINI_MODEL_KIND:
        raise _not_built(folder, f"{MINI_MODEL_MARKER} is not a mini model record")
    if record.get("format") != MINI_MODEL_FORMAT:
        raise _not_built(folder, f"its record has format {record.get('format')!r}, this covip reads "
                                 f"{MINI_MODEL_FORMAT}")
    model_dir = _inside(folder, record.get("model"), "the model folder")
    pack = None if record.get("prompt_pack") is None else _inside(folder, record["prompt_pack"], "the prompt pack")
    rows = record.get("demo")
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_DEMO_CONCEPTS:
        raise _not_built(folder, f"its record lists no demo concepts (1-{MAX_DEMO_CONCEPTS} expected)")
    concepts = []
    for row in rows:
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("name", "kind", "dialogue")):
            raise _not_built(folder, f"a demo concept of its record is malformed: {str(row)[:80]!r}")
        concepts.append(MiniDemoConcept(row["name"], row["kind"], row["dialogue"],
                                        _inside(folder, row.get("memory_photo"), "a memory photo"),
                                        _inside(folder, row.get("new_photo"), "a new photo")))
    return InstalledMini(folder, model_dir, pack, tuple(concepts), record)
