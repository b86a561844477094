"""What every covip training config shares: nested mapping <-> typed dataclass groups, YAML files, key help.

The GSPO (:mod:`.gspo_config`), SFT (:mod:`.sft_config`) and embedder (:mod:`.embedder_config`) configs are
dataclasses of dataclass groups (as trl's ``GRPOConfig`` is one dataclass with help metadata); these helpers
build them from YAML-shaped mappings with errors that name the dotted key, and list every key's help.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

from covip.sdk.errors import InputError
from covip.sdk.support import Overrides, parse_overrides

__all__ = ["pack_path", "config_from_dict", "config_to_dict", "read_yaml", "resolve_recipe", "sections_help",
           "apply_overrides", "dump_yaml", "GroupedConfigMixin"]


def config_from_dict(cls: type, sections: Mapping[str, type], data: Any, *, what: str, unknown: str,
                     source: str | None = None, defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """``cls`` built from a nested mapping: groups in ``sections`` become their dataclasses, other keys are coerced.

    ``what`` names the config in errors ("a GSPO config"), ``unknown`` its keys ("config key");
    ``defaults`` gives a group's values that the mapping may override.
    """
    from covip.training.gspo_config import _build_section, _coerce, _hints

    where = f" in {source}" if source else ""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{what} must be a mapping of groups{where}, got {type(data).__name__}")
    top = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in top:
            raise InputError(f"unknown {unknown} {key!r}{where}; known top-level keys: {sorted(top)}")
        if key in sections:
            if defaults and key in defaults:
                value = {**defaults[key], **(value or {})}
            kwargs[key] = _build_section(sections[key], value, key, where)
        else:
            kwargs[key] = _coerce(value, _hints(cls)[key], key, where)
    if source is not None:
        kwargs["source"] = source
    return cls(**kwargs)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict (YAML/JSON-able) of a config, that its ``from_dict`` turns back into an equal one."""
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        out[f.name] = ({s.name: copy.deepcopy(getattr(value, s.name)) for s in fields(value)}
                       if is_dataclass(value) else copy.deepcopy(value))
    return out


def read_yaml(path: Path, what: str = "the config") -> Any:
    """The YAML document of ``path``; InputError naming the file when it cannot be read or parsed."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from None


def resolve_recipe(name_or_path: str | Path, bundled: Mapping[str, Path], what: str) -> Path:
    """A YAML file path as given, else the bundled recipe of that name (no path separators: a name never reaches
    into the package); InputError naming ``what`` ("embedder recipe") and the bundled names otherwise."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    stem = text[:-5] if text.endswith(".yaml") else text
    if stem not in bundled or "/" in text or "\\" in text:
        raise InputError(f"no {what} {text!r}: give a YAML file path or one of the bundled recipes "
                         f"({', '.join(bundled) or 'none installed'})")
    return bundled[stem]


def sections_help(sections: Mapping[str, type]) -> dict[str, str]:
    """Every dotted key of the groups with its help text and default."""
    out: dict[str, str] = {}
    for section, cls in sections.items():
        for f in fields(cls):
            if f.default is not MISSING:
                default = f.default
            elif f.default_factory is not MISSING:
                default = f.default_factory()
            else:  # pragma: no cover - every field has a default
                default = None
            out[f"{section}.{f.name}"] = f"{f.metadata.get('help', '')} [default: {default!r}]"
    return out


def apply_overrides(data: dict[str, Any], overrides: Any, *, what: str, open_groups: tuple[str, ...] = ()) -> dict[str, Any]:
    """``data`` (a config's nested mapping, changed in place and returned) with dotted-key overrides applied:
    ``{"gspo.max_steps": 2}`` or ``["gspo.max_steps=2"]`` (values read as YAML). Every key must exist, except
    below the groups named in ``open_groups`` (e.g. ``"data.synth"``, whose keys another config checks);
    ``what`` names the config in errors ("SFT config key")."""
    for key, value in parse_overrides(overrides).items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                raise InputError(f"unknown {what} {key!r}: {part!r} is not a group")
            node = child
        free = ".".join(parts[:-1]) in open_groups
        if parts[-1] not in node and not free:
            raise InputError(f"unknown {what} {key!r} in the overrides; known keys"
                             f"{' of ' + repr('.'.join(parts[:-1])) if len(parts) > 1 else ''}: {sorted(node)}")
        node[parts[-1]] = value
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    """A config mapping as YAML text, keys in their order (what config files, run folders and hashes hold)."""
    import yaml

    return yaml.safe_dump(dict(data), sort_keys=False, allow_unicode=True)


class GroupedConfigMixin:
    """What the grouped training configs share: ``with_overrides`` (the SDK configs' signature, with dotted keys
    such as ``{"trainer.max_steps": 2}`` reaching into the groups), YAML text, and the identity a finished run's
    hash is taken of."""

    override_what: ClassVar[str] = "config key"  # how errors name a key ("SFT config key")
    open_groups: ClassVar[tuple[str, ...]] = ()  # groups whose keys another config checks (see apply_overrides)
    neutral_when_off: ClassVar[Mapping[str, Any]] = {}
    """Options added after runs were recorded, with the value at which training is exactly what it was before
    them (same draws, same loss): :meth:`identity` leaves them out at that value. A new option joins only if
    that holds."""

    def to_yaml(self) -> str:
        """The config as YAML text."""
        return dump_yaml(self.to_dict())  # type: ignore[attr-defined]

    def identity(self) -> dict[str, Any]:
        """What a run's results depend on: ``to_dict()`` without the free-text ``description`` and without the
        :attr:`neutral_when_off` options that are off. Finished-run hashes (``covip.training.sft.config_hash``,
        ``covip repro mini``'s seed records) use it, so rewording a description or adding an option that is off
        does not make a finished run look like another recipe."""
        data = self.to_dict()  # type: ignore[attr-defined]
        data.pop("description", None)
        for dotted, off in self.neutral_when_off.items():
            section, key = dotted.split(".")
            if key in data.get(section, {}) and data[section][key] == off:
                del data[section][key]
        return data

    def with_overrides(self, overrides: Overrides = None, /, **values: Any) -> Any:
        """A copy with dotted-key overrides applied, as a mapping, ``"key=value"`` strings or keywords."""
        merged = {**parse_overrides(overrides), **values}
        if not merged:
            return copy.deepcopy(self)
        data = apply_overrides(self.to_dict(), merged, what=self.override_what,  # type: ignore[attr-defined]
                               open_groups=self.open_groups)
        return type(self).from_dict(data, source=self.source)  # type: ignore[attr-defined]

    def with_quick(self, what: str) -> Any:
        """A copy with the config's own ``quick`` overrides applied (and emptied, so they apply once); InputError
        naming ``what`` ("the SFT config") when it has none. Each config's ``quick_variant`` builds on it."""
        quick = getattr(self, "quick", None)
        if not quick:
            raise InputError(f"{what} {getattr(self, 'name', '')!r} has no 'quick' overrides; --quick needs them")
        out = self.with_overrides(quick)
        out.quick = {}
        return out


def pack_path(value: str, source: str | None) -> Path:
    """A file a config names (``data.prompt_pack``, an SFT phase under ``then``): an existing path, else relative
    to the config file's folder (the bundled recipes name their packs under ``configs/packs``), else relative to
    the bundled configs' folders: a run's saved ``config.yaml`` keeps the bundled recipe's relative names (they
    are part of its recorded hash), so ``covip train gspo --config runs/x/config.yaml`` still finds them."""
    path = Path(value).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    bundled = Path(__file__).resolve().parent / "configs"
    folders = ([Path(source).parent] if source is not None else []) + [bundled, *sorted(
        p for p in bundled.iterdir() if p.is_dir())]
    for folder in folders:
        if (folder / path).is_file():
            return folder / path
    return path
