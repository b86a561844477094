"""Running the app on uvicorn: in the foreground (``covip serve``) or on a background thread (tests, apps)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from covip.sdk.errors import ConfigError
from covip.sdk.server.app import create_app
from covip.sdk.server.config import ServeConfig
from covip.sdk.serverfile import announce

__all__ = ["serve", "BackgroundServer", "bind_socket"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = a free one); ConfigError when the port is taken."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
                          "(0 = any free port) or stop the program using it") from exc
    sock.listen(128)
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}"


def _uvicorn_config(app: Any, *, log_level: str, access_log: bool) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on",
                          timeout_graceful_shutdown=5, server_header=False)


def _announced(assistant: Any, url: str, config: ServeConfig) -> Any:
    """The home's server file while serving on loopback (the CLI of that home then answers through this
    server); nothing is announced for a server reachable from other machines."""
    if not config.loopback:
        return contextlib.nullcontext()
    return announce(assistant.memory.home, url, str(assistant.engine.model_id))


def serve(assistant: Any, config: ServeConfig, *, on_ready: Callable[[str], None] | None = None,
          log_level: str = "warning") -> None:
    """Serve ``assistant`` until interrupted (Ctrl-C); ``on_ready(url)`` runs once the socket listens."""
    app = create_app(assistant, config)
    sock = bind_socket(config.host, config.port)
    url = _url(config.host, sock.getsockname()[1])
    server = uvicorn.Server(_uvicorn_config(app, log_level=log_level, access_log=log_level in ("info", "debug")))
    if on_ready is not None:
        on_ready(url)
    try:
        with _announced(assistant, url, config):
            server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """The app on uvicorn in a daemon thread: ``with BackgroundServer(assistant, config) as srv: srv.url``."""

    def __init__(self, assistant: Any, config: ServeConfig | None = None, *, app: Any = None,
                 log_level: str = "warning", announce: bool = False) -> None:
        """``announce``: write the home's server file while running, as ``covip serve`` does."""
        self.config = config or ServeConfig(port=0)
        self._announce = contextlib.ExitStack()
        self._assistant, self._announcing = assistant, announce
        self.app = app if app is not None else create_app(assistant, self.config)
        self._sock = bind_socket(self.config.host, self.config.port)
        self.port = self._sock.getsockname()[1]
        self.url = _url(self.config.host, self.port)
        self.server = uvicorn.Server(_uvicorn_config(self.app, log_level=log_level, access_log=False))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]},
                                        name="covip-serve", daemon=True)

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise ConfigError("the covip server thread stopped while starting; see the log above")
            if time.monotonic() > deadline:
                raise ConfigError(f"the covip server did not start within {timeout_s:g} s")
            time.sleep(0.02)
        if self._announcing:
            self._announce.enter_context(_announced(self._assistant, self.url, self.config))
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._announce.close()
        self.server.should_exit = True
        self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
