"""How ``covip serve`` runs: address, API token, limits, readable photo folders (no FastAPI needed here)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from covip.sdk._config import ConfigMixin
from covip.sdk.errors import InputError
from covip.sdk.homefiles import PRIVATE_DIRS

__all__ = ["ServeConfig", "TOKEN_ENV", "is_loopback", "check_allowed_dirs"]

TOKEN_ENV = "COVIP_API_TOKEN"
"""Environment variable holding the API token (preferred over ``--token``, which other users can see in ps)."""

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or 'localhost') is reachable only from this machine."""
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass
class ServeConfig(ConfigMixin):
    """Address, access and limits of the local HTTP API (``covip serve``)."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to bind. Anything but a loopback address needs an API token."})
    port: int = field(default=8765, metadata={"help": "TCP port (0 = any free port, printed at start)."})
    token: str | None = field(default=None, metadata={
        "help": f"API token: every request must carry 'Authorization: Bearer TOKEN' (env {TOKEN_ENV})."})
    max_body_mb: float = field(default=32.0, metadata={
        "help": "Refuse request bodies larger than this many MiB with 413 (before reading them)."})
    timeout_s: float = field(default=300.0, metadata={
        "help": "Per-request time limit (waiting for the model included); past it the request gets 504."})
    allowed_dirs: tuple[Path, ...] = field(default=(), metadata={
        "help": "Folders whose photos a chat request may name by local path (besides the memory's own photo "
                "store); a folder that is or holds the memory home, or lies in its index, locks or tmp folder, is "
                "refused at start."})
    model_name: str | None = field(default=None, metadata={
        "help": "Model id shown by /v1/models and in responses (default: the engine's model id)."})
    workers: int = field(default=16, metadata={
        "help": "Threads for blocking work; generation itself runs one request at a time."})
    max_decodes: int = field(default=2, metadata={
        "help": "Photos decoded, and requests with a body over 1 MiB (photos, bundles) served, at the same time: "
                "each costs up to a few hundred MB; further ones wait for a slot (before their body is read). "
                "This bounds the server's memory whatever the number of clients."})
    max_question_chars: int = field(default=65_536, metadata={
        "help": "Refuse chat questions longer than this many characters (400) before any other work; the "
                "model's context window is checked too, in tokens."})

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host.strip():
            raise InputError("host is empty; give an address such as 127.0.0.1")
        self.host = self.host.strip()
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise InputError(f"port must be an integer from 0 to 65535, not {self.port!r}")
        if self.token is not None:
            if not isinstance(self.token, str) or not self.token.strip() or any(c.isspace() for c in self.token):
                raise InputError("the API token must be non-empty text without spaces")
        if not self.max_body_mb > 0:
            raise InputError("max_body_mb must be positive")
        if not self.timeout_s > 0:
            raise InputError("timeout_s must be positive")
        if self.workers < 1:
            raise InputError("workers must be at least 1")
        if self.max_decodes < 1 or self.max_question_chars < 1:
            raise InputError("max_decodes and max_question_chars must be at least 1")
        self.allowed_dirs = tuple(Path(d).expanduser().resolve() for d in self.allowed_dirs)
        if not self.loopback and not self.token:
            raise InputError(f"binding to {self.host} makes the server reachable from other machines, so it needs "
                             f"an API token: pass --token TOKEN or set {TOKEN_ENV} (or bind to 127.0.0.1)")

    @classmethod
    def from_env(cls, **kwargs: object) -> ServeConfig:
        """Like the constructor, taking the token from $COVIP_API_TOKEN when none is given."""
        if kwargs.get("token") is None and os.environ.get(TOKEN_ENV):
            kwargs["token"] = os.environ[TOKEN_ENV]
        return cls(**kwargs)  # type: ignore[arg-type]

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


def check_allowed_dirs(dirs: tuple[Path, ...], home: Path) -> tuple[Path, ...]:
    """The --allow-dir folders, refusing (InputError) one that is the memory home, holds it, or is one of its
    private folders (index, locks, tmp): a chat request could otherwise name the database or index files."""
    home = Path(home).resolve()
    private = [home / sub for sub in PRIVATE_DIRS]
    for folder in dirs:
        real = Path(folder).resolve()
        if real == home or home.is_relative_to(real):
            raise InputError(f"--allow-dir {folder} contains the memory home {home}, whose database and index "
                             "files no request may read; allow only the folder(s) holding your photos")
        if any(real.is_relative_to(p) for p in private):
            raise InputError(f"--allow-dir {folder} is inside the memory home's own files ({home}); allow a "
                             "folder of photos instead (the memory's remembered photos are always readable)")
    return tuple(Path(d).resolve() for d in dirs)
