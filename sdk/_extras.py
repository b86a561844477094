"""Optional dependencies: import them by name, or fail with the ``pip install`` line to run."""

from __future__ import annotations

import importlib
from types import ModuleType

from covip.sdk.errors import MissingExtraError

__all__ = ["require"]


def require(module: str, *, feature: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``pip install 'covip[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name not in (None, module, top) and not module.startswith(str(exc.name)):
            raise  # the module exists but one of *its* imports is broken: show the real error
        raise MissingExtraError(feature, extra, top) from exc
