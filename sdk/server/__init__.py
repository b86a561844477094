"""``covip serve``: a local HTTP API (OpenAI-compatible chat + the memory) and a photo-chat web page.

    from covip.sdk import Assistant
    from covip.sdk.server import ServeConfig, create_app, serve

    app = create_app(assistant, ServeConfig())            # any ASGI server can run it
    serve(assistant, ServeConfig(port=8765))              # or run it on uvicorn until Ctrl-C

Needs the ``serve`` extra (``pip install 'covip[serve]'``: fastapi, uvicorn, python-multipart); importing
this package works without it, calling :func:`create_app` / :func:`serve` raises MissingExtraError.

Bound to 127.0.0.1 by default. Any other address needs an API token (``ServeConfig.token``, ``--token``
or ``$COVIP_API_TOKEN``), and then every request but the page itself (``/``, ``/static/``) needs
``Authorization: Bearer <token>``. Chat requests may name photos by local path only inside the memory's
photo store and the ``allowed_dirs`` folders (``--allow-dir``, never the home or its index, locks or tmp
folders); otherwise send them as data URLs. Requests that another web site's page makes (``Sec-Fetch-Site``
cross-site or same-site, or another ``Origin``) get 403.
"""

from __future__ import annotations

from typing import Any

from covip.sdk._extras import require
from covip.sdk.server.config import TOKEN_ENV, ServeConfig, is_loopback

__all__ = ["ServeConfig", "TOKEN_ENV", "is_loopback", "create_app", "serve", "BackgroundServer", "require_serve"]

_FEATURE = "covip serve (the local HTTP API)"


def require_serve() -> None:
    """Raise MissingExtraError (naming ``pip install 'covip[serve]'``) unless the serve extra is installed."""
    require("fastapi", feature=_FEATURE, extra="serve")
    require("uvicorn", feature=_FEATURE, extra="serve")
    try:  # python-multipart: module 'python_multipart' since 0.0.13, 'multipart' before
        require("python_multipart", feature=_FEATURE, extra="serve")
    except ImportError:
        require("multipart", feature=_FEATURE, extra="serve")


def create_app(assistant: Any, config: ServeConfig | None = None) -> Any:
    """The FastAPI app serving ``assistant`` (see :mod:`covip.sdk.server.app`)."""
    require_serve()
    from covip.sdk.server.app import create_app as _create_app

    return _create_app(assistant, config)


def serve(assistant: Any, config: ServeConfig, **kwargs: Any) -> None:
    """Run the app on uvicorn until interrupted (see :func:`covip.sdk.server.serve.serve`)."""
    require_serve()
    from covip.sdk.server.serve import serve as _serve

    _serve(assistant, config, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "BackgroundServer":
        require_serve()
        from covip.sdk.server.serve import BackgroundServer

        return BackgroundServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
