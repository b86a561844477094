"""How the CLI finds a ``covip serve`` of its own home: the server writes ``locks/serve.json`` in the home
while it runs (pid, URL, model; never the token), and ``covip ask``/``caption`` send their work to it when it
answers ``/v1/health`` with the same home id, instead of loading the model again (as Ollama's CLI does).

Stdlib only: the CLI reads it without the ``serve`` extra.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from covip.sdk.files import atomic_write_text, pid_alive

log = logging.getLogger(__name__)

__all__ = ["SERVER_FILE", "home_id", "announce", "read_server_file"]

SERVER_FILE = "locks/serve.json"


def home_id(home: str | os.PathLike[str]) -> str:
    """An opaque id of a home (a hash of its resolved path): the server proves which memory it serves without
    revealing where it is."""
    return hashlib.sha256(str(Path(home).resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:32]


@contextlib.contextmanager
def announce(home: str | os.PathLike[str], url: str, model: str) -> Iterator[Path]:
    """Write the home's server file while the block runs; remove it after (unless another server replaced it)."""
    path = Path(home) / SERVER_FILE
    doc = {"pid": os.getpid(), "url": url, "model": model, "home_id": home_id(home),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(path, json.dumps(doc) + "\n", durable=False)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text("utf-8")).get("pid") == os.getpid():
                path.unlink()


def read_server_file(home: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The home's server file when its process still runs (None: no server, a stale or unreadable file)."""
    path = Path(home) / SERVER_FILE
    try:
        if path.stat().st_size > 4096:
            return None
        doc = json.loads(path.read_text("utf-8"))
        pid, url = int(doc["pid"]), str(doc["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid <= 0 or not url.startswith(("http://127.", "http://[::1]", "http://localhost")) or not pid_alive(pid):
        return None  # a server elsewhere is never used implicitly; a dead one left its file behind
    return doc
