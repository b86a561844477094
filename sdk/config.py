"""Where the memory home lives, and the home's ``config.json`` (written by ``covip init``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from covip.sdk.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["default_home", "resolve_home", "read_settings", "write_settings", "SETTINGS_FILE"]

SETTINGS_FILE = "config.json"
DEFAULT_EMBEDDER = "ViT-B-32/laion2b_s34b_b79k"


def default_home() -> Path:
    """``$COVIP_HOME`` if set, else the per-user data directory (e.g. ~/.local/share/covip)."""
    env = os.environ.get("COVIP_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("covip", appauthor=False))


def resolve_home(home: str | os.PathLike | None) -> Path:
    """The home directory to use: the argument, else :func:`default_home`."""
    return Path(home).expanduser() if home is not None else default_home()


def read_settings(home: Path) -> dict[str, Any]:
    """The home's ``config.json`` (written by ``covip init``), or {} when there is none."""
    path = home / SETTINGS_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} is not valid JSON ({exc}); fix it or run `covip init --force` to write a new one"
        ) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object; run `covip init --force` to write a new one")
    return data


def write_settings(home: Path, settings: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically."""
    from covip.sdk.memory.files import atomic_write_bytes

    home.mkdir(parents=True, exist_ok=True)
    path = home / SETTINGS_FILE
    atomic_write_bytes(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(), home / "tmp")
    return path
