"""Shared pieces of covip's config dataclasses and torch device choice (one copy, used everywhere)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from covip.sdk.errors import CovipError, InputError

__all__ = ["ConfigMixin", "pick_device", "cache_root", "option_help", "parse_overrides", "lazy_exports"]

Overrides = Mapping[str, Any] | Sequence[str] | None
"""What every config's ``with_overrides`` takes: ``{"key": value}`` or ``["key=value", ...]`` (the CLI's
``--set`` form, values read as YAML), with dotted keys for grouped configs."""


def parse_overrides(overrides: Overrides) -> dict[str, Any]:
    """Overrides as a dict; ``"key=value"`` strings have their value read as YAML (``2``, ``true``), or as
    JSON when PyYAML is not installed (the SDK alone does not need it)."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    if isinstance(overrides, (str, bytes)):
        raise InputError(f"overrides must be a mapping or a list of 'key=value' strings, not one string {overrides!r}")
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        if not sep or not key.strip():
            raise InputError(f"an override must look like key=value (group.key=value in grouped configs), got {item!r}")
        out[key.strip()] = _scalar(raw)
    return out


def _scalar(raw: str) -> Any:
    if not raw.strip():
        return None
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def cache_root() -> Path:
    """covip's cache directory: ``$COVIP_CACHE``, else the per-user cache directory (e.g. ~/.cache/covip)."""
    env = os.environ.get("COVIP_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("covip", appauthor=False))


def option_help(cls: type, name: str) -> str:
    """A CLI option's help from a config dataclass field: its help text and its default, so the CLI never
    restates (and never drifts from) what the config says."""
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == name:
            return f"{f.metadata.get('help', '').rstrip('.')}. Default: {f.default}."
    raise KeyError(f"{cls.__name__} has no field {name!r}")


class ConfigMixin:
    """``field_help()`` and ``with_overrides()`` for config dataclasses (help text lives in field metadata)."""

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Map each field name to its help text (for CLI options and docs)."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}  # type: ignore[arg-type]

    def with_overrides(self, overrides: Overrides = None, /, **values: Any) -> Any:
        """A copy with fields replaced, given as keywords, a mapping or ``["name=value"]`` strings (every
        covip config takes the same three forms); unknown names raise InputError."""
        overrides = {**parse_overrides(overrides), **values}
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        bad = sorted(set(overrides) - known)
        if bad:
            raise InputError(f"unknown {type(self).__name__} field(s) {bad}; known: {sorted(known)}")
        return replace(self, **overrides) if overrides else self  # type: ignore[type-var]


def pick_device(torch: Any, requested: str, error: type[CovipError]) -> str:
    """Resolve 'auto' to cuda, then mps, else cpu; refuse an explicit device that is not there (``error``)."""
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise error(f"device {requested!r} was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        index = requested.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise error(f"device {requested!r} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
    if requested == "mps" and not mps_ok:
        raise error("device 'mps' was requested but torch sees no Apple GPU; use 'cpu' or 'auto'")
    return requested


def lazy_exports(module: str, names: Mapping[str, str]) -> tuple[Any, Any]:
    """``(__getattr__, __dir__)`` for a package that exports ``names`` (name -> defining module) on first use
    (PEP 562), so importing the package stays light: ``__getattr__, __dir__ = lazy_exports(__name__, _LAZY)``."""
    import importlib
    import sys

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's name
        source = names.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        setattr(sys.modules[module], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted({*vars(sys.modules[module]), *names})

    return __getattr__, __dir__
