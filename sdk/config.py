"""Where the memory home lives, and the home's ``config.json`` (written by ``covip init``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from covip.sdk.errors import ConfigError, InputError

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
    if home is None:
        return default_home()
    if not isinstance(home, (str, os.PathLike)) or (isinstance(home, str) and not home.strip()):
        raise InputError(f"the home must be a folder path, not {type(home).__name__} {str(home)[:80]!r}")
    try:
        path = Path(home).expanduser()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"the home {str(home)[:80]!r} is not a usable folder path ({exc})") from exc
    if "\x00" in str(path) or len(os.fsencode(path)) > 4096 or any(len(os.fsencode(p)) > 255 for p in path.parts):
        raise InputError(f"the home {str(path)[:80]!r}... is not a usable folder path (too long, or a NUL byte)")
    if path.exists() and not path.is_dir():
        raise InputError(f"the home {str(path)[:80]!r} is a file, not a folder; give a folder path (a new one is "
                         "created)")
    return path


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
    """Write ``config.json`` atomically (0600, like every file of the home)."""
    from covip.sdk.files import atomic_write_bytes, private_dir

    private_dir(home)  # 0700 whatever the umask: the home is private from the start
    path = home / SETTINGS_FILE
    atomic_write_bytes(path, (json.dumps(settings, indent=2, sort_keys=True) + "\n").encode(), home / "tmp")
    return path
