"""Install a trained mini model where ``covip demo --model mini`` finds it (:mod:`covip.sdk.models.mini`).

The install copies the checkpoint and the prompt pack it was trained with, and draws the demo set from the
world it was trained on: its *held-out* concepts (the world's test split, never trained on), each with its
remembered photo and dialogue and a new photo of it from the test samples (another pose, background and
light). Written into a temporary folder, the record last, then renamed into place: a failed install leaves
the previous one as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from covip.sdk.errors import InputError
from covip.sdk.files import path_inside
from covip.sdk.models.mini import (
    MAX_DEMO_CONCEPTS,
    MINI_MODEL_FORMAT,
    MINI_MODEL_KIND,
    MINI_MODEL_MARKER,
    InstalledMini,
    find_mini_model,
    mini_model_dir,
)
from covip.training.data.schema import swap_into_place, write_json

log = logging.getLogger(__name__)

__all__ = ["DEMO_CONCEPTS_DEFAULT", "demo_rows", "install_mini"]

DEMO_CONCEPTS_DEFAULT = 12
_SDK_KIND = {"person": "person", "cat": "pet", "dog": "pet", "bird": "pet"}
"""The world's looks as SDK concept kinds (the rest are objects)."""


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} {path} is missing; is this the folder a `covip train sft` world was written "
                         "to (data.world of the config)?") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {path} cannot be read: {exc}") from None


def _inside(root: Path, relative: Any, what: str) -> Path:
    """A photo the world names relative to itself, which must be a file inside the world folder (``../`` or an
    absolute path would copy some other file into the install)."""
    path = path_inside(root, relative)
    if path is None or not path.is_file():
        raise ValueError(f"{what} {relative!r} is not a file inside the world folder")
    return path


def demo_rows(world_dir: str | Path, n: int = DEMO_CONCEPTS_DEFAULT) -> list[dict[str, Any]]:
    """Up to ``n`` held-out concepts of a synthetic world with a photo showing only them: name, SDK kind,
    dialogue, memory photo and new photo (absolute paths), in the world's order."""
    root = Path(world_dir).expanduser()
    concepts = _load_json(root / "concepts.json", "the world's concept list")
    if not isinstance(concepts, list):
        raise InputError(f"{root / 'concepts.json'} is not a concept list")
    held_out = {c["id"]: c for c in concepts if isinstance(c, dict) and c.get("split") == "test"}
    test = root / "test.jsonl"
    if not test.is_file():
        raise InputError(f"{test} is missing; the world has no test samples")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    with test.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if len(rows) >= n:
                break
            try:
                sample = json.loads(line) if line.strip() else {}
                query = (sample.get("meta") or {}).get("query_concept_ids") or []
                if len(query) != 1 or query[0] not in held_out or query[0] in seen:
                    continue
                concept = held_out[query[0]]
                row = {"name": concept["name"], "kind": _SDK_KIND.get(concept["look"]["kind"], "object"),
                       "dialogue": concept["dialogue"],
                       "memory_photo": str(_inside(root, concept["image"], "a concept's photo")),
                       "new_photo": str(_inside(root, sample["images"][-1], "a test sample's photo"))}
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
                raise InputError(f"{test} line {number} is not a test sample of covip's synthetic world "
                                 f"({type(exc).__name__}: {exc}); write the world again with `covip train sft`"
                                 ) from None
            seen.add(query[0])
            rows.append(row)
    if not rows:
        raise InputError(f"{root} has no held-out concept with a photo of its own in test.jsonl; a world written "
                         "by covip's synthetic generator (split test) is needed")
    return rows


def install_mini(model_dir: str | Path, world_dir: str | Path, prompt_pack: str | Path | None, *,
                 cache_dir: str | Path | None = None, n_demo: int = DEMO_CONCEPTS_DEFAULT,
                 source: dict[str, Any] | None = None) -> InstalledMini:
    """Copy a trained checkpoint, its prompt pack and a demo set of the world's held-out concepts into the
    cache folder of the ``mini`` model (replacing an earlier install); ``source``: extra facts for the record
    (recipe, seed, metrics); ``prompt_pack`` None: the model was trained with covip's own wording."""
    from covip.sdk.prompts import load_pack

    if isinstance(n_demo, bool) or not isinstance(n_demo, int) or not 0 < n_demo <= MAX_DEMO_CONCEPTS:
        raise InputError(f"the demo set holds 1-{MAX_DEMO_CONCEPTS} concepts, not {n_demo!r}")
    model = Path(model_dir).expanduser()
    if not (model / "config.json").is_file():
        raise InputError(f"{model} is not a model folder (no config.json); pass the `model/` folder an SFT phase "
                         "wrote, or the `merged/` folder of a GSPO run")
    pack_file = None if prompt_pack is None else Path(prompt_pack).expanduser()
    if pack_file is not None:
        load_pack(pack_file)  # a broken pack fails here, not in the demo
    pack_name = None if pack_file is None else f"prompt_pack{pack_file.suffix or '.toml'}"
    rows = demo_rows(world_dir, n_demo)
    folder = mini_model_dir(cache_dir)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(model, tmp / "model")
        if pack_file is not None and pack_name is not None:
            shutil.copyfile(pack_file, tmp / pack_name)
        (tmp / "demo").mkdir()
        for i, row in enumerate(rows):
            for key, stem in (("memory_photo", "memory"), ("new_photo", "new")):
                name = f"demo/{i:02d}-{stem}{Path(row[key]).suffix}"
                shutil.copyfile(row[key], tmp / name)
                row[key] = name
        record = {"kind": MINI_MODEL_KIND, "format": MINI_MODEL_FORMAT, "model": "model",
                  "prompt_pack": pack_name, "demo": rows,
                  "source": {"model_dir": str(model.resolve()), "world_dir": str(Path(world_dir).resolve()),
                             **(source or {})},
                  "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(tmp / MINI_MODEL_MARKER, record)
        swap_into_place(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"installing the mini model into {folder} failed: {exc}; the earlier install (if any) "
                         "is unchanged") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("mini model installed in %s (%d demo concepts)", folder, len(rows))
    return find_mini_model(cache_dir)
