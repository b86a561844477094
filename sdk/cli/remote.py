"""The CLI's client of a running ``covip serve`` of its own home (stdlib HTTP only).

``covip ask`` and ``covip caption`` load the model for every call (seconds); when ``covip serve`` runs for
the same home, they send the work to it instead and print the same thing. Only a server this home announced
(``locks/serve.json``, on loopback, its process alive, answering ``/v1/health`` with this home's id) is
used; ``--local`` or ``COVIP_NO_SERVER=1`` keeps the work in-process, as do the model options (--model,
-k, ...) that the server's settings would ignore.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from covip.sdk import errors
from covip.sdk.serverfile import home_id, read_server_file

log = logging.getLogger(__name__)

__all__ = ["RemoteAssistant", "find_server", "local_option", "NO_SERVER_ENV", "MAX_UPLOAD_BYTES"]

NO_SERVER_ENV = "COVIP_NO_SERVER"
MAX_UPLOAD_BYTES = 16 << 20  # larger photos are answered in-process (the server's default body limit is 32 MB)


class RemoteAssistant:
    """``ask``/``caption`` through a covip server: the documents ``covip ask/caption --json`` print."""

    def __init__(self, url: str, model: str, *, token: str | None = None, timeout_s: float = 600.0) -> None:
        self.url, self.model, self.token, self.timeout_s = url.rstrip("/"), model, token, timeout_s

    def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(doc).encode("utf-8"), method="POST",
                                         headers={"Content-Type": "application/json", **self._auth()})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 (loopback URL)
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _error_from(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            raise errors.CovipError(f"the covip server at {self.url} stopped answering ({exc}); run the command "
                                    "again with --local, or restart `covip serve`") from None

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ask(self, user: str, photo: Path, question: str, *, cag: bool = True) -> dict[str, Any]:
        return self._post(f"/v1/users/{_quote(user)}/ask",
                          {"photo": _data_url(photo), "question": question, "cag": cag})

    def caption(self, user: str, photo: Path) -> dict[str, Any]:
        return self._post(f"/v1/users/{_quote(user)}/caption", {"photo": _data_url(photo)})

    def embed(self, photo: Path) -> dict[str, Any]:
        """The memory's embedding of ``photo``: ``{"model_id", "dim", "meaningless", "embedding"}``."""
        doc = self._post("/v1/embed", {"photo": _data_url(photo)})
        if not isinstance(doc.get("embedding"), list) or len(doc["embedding"]) != doc.get("dim"):
            raise errors.CovipError(f"the covip server at {self.url} sent a malformed embedding; run the command "
                                    "again with --local")
        return doc


def find_server(home: Path, photo: Path | None = None) -> RemoteAssistant | None:
    """The running server of ``home``, or None (no server, another home's, unreachable, turned off by
    ``COVIP_NO_SERVER``, or a photo too large to send)."""
    if os.environ.get(NO_SERVER_ENV, "").strip() not in ("", "0"):
        return None
    doc = read_server_file(home)
    if doc is None:
        return None
    if photo is not None:
        try:
            if photo.stat().st_size > MAX_UPLOAD_BYTES:
                return None
        except OSError:
            return None
    token = os.environ.get("COVIP_API_TOKEN") or None
    url = str(doc["url"]).rstrip("/")
    request = urllib.request.Request(url + "/v1/health", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:  # noqa: S310 (a loopback URL)
            health = json.loads(response.read(65536))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.info("the covip server announced at %s does not answer (%s); working in-process", url, exc)
        return None
    if health.get("home_id") != home_id(home):
        log.info("the server at %s serves another memory; working in-process", url)
        return None
    return RemoteAssistant(url, str(health.get("model", doc.get("model", ""))), token=token)


def local_option() -> Any:
    """``--local``: keep the work in this process even when `covip serve` runs for the home."""
    import click

    return click.option("--local", is_flag=True,
                        help="Load the models in this process even when `covip serve` runs for this memory "
                             f"(also {NO_SERVER_ENV}=1).")


def _quote(user: str) -> str:
    from urllib.parse import quote

    return quote(user, safe="")


def _data_url(photo: Path) -> str:
    mime = mimetypes.guess_type(photo.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(photo.read_bytes()).decode('ascii')}"


def _error_from(exc: urllib.error.HTTPError) -> errors.CovipError:
    """The server's error as the same CovipError class (so the exit code is the same as in-process)."""
    try:
        body = json.loads(exc.read(1 << 20))["error"]
        message, code = str(body.get("message") or exc.reason), str(body.get("code") or "")
    except (ValueError, KeyError, TypeError, OSError):
        message, code = f"HTTP {exc.code} {exc.reason}", ""
    cls = getattr(errors, code, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.CovipError)):
        cls = {400: errors.InputError, 404: errors.NotFoundError, 409: errors.ConflictError,
               413: errors.InputError}.get(exc.code, errors.CovipError)
    return cls(f"{message} (from covip serve)")
