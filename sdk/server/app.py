"""The FastAPI application of ``covip serve``: access guard, body limit, error bodies, the page, the routes.

Every error is ``{"error": {"message", "type", "code"}}`` (OpenAI's shape): covip's input errors are 400,
a photo over the pixel limit or a body over the size limit 413, unknown users/photos/concepts 404,
conflicts 409, a missing or wrong token 401, a request from another web site 403, a request past the time
limit 504. Messages never show the memory home's location or the user's home directory.

Web pages of other sites: requests carrying another Origin are refused (CSRF), and so is every ``/v1``
request a browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` (an ``<img>`` tag or a link on
another site's page, which sends no Origin); every response says ``Cross-Origin-Resource-Policy:
same-origin`` so no other page can embed what it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from covip.sdk.errors import (
    BundleError,
    ConflictError,
    CovipError,
    ImageTooLargeError,
    InputError,
    MissingExtraError,
    NotFoundError,
)
from covip.sdk.homefiles import PHOTO_STORE
from covip.sdk.server.config import ServeConfig, check_allowed_dirs, is_loopback
from covip.sdk.server.work import RequestTimeout, Runner, photo_from_url
from covip.sdk.serverfile import home_id

log = logging.getLogger(__name__)

__all__ = ["create_app", "ServerState", "STATIC_DIR", "ERROR_RESPONSES"]

STATIC_DIR = Path(__file__).with_name("static")
PUBLIC_PATHS = ("/", "/favicon.ico")
"""Reachable without the token: the page itself (static files, no data). Everything under /v1 needs it."""

_ERROR_SCHEMA = {"application/json": {"schema": {"type": "object", "properties": {"error": {
    "type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                                     "code": {"type": ["string", "null"]}}}}}}}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": _ERROR_SCHEMA} for code, text in (
        (400, "Bad input (the message says what and how to fix it)"), (401, "Missing or wrong API token"),
        (404, "No such user, photo or concept"), (409, "Conflict with the memory's state"),
        (403, "Another web site's page, or a host that is not this machine"),
        (413, "Body over --max-body-mb, or a photo over the pixel limit"),
        (503, "Busy with --max-decodes large requests for longer than --timeout-s"), (504, "Past --timeout-s"))}

_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (ImageTooLargeError, 413, "request_too_large"),
    (InputError, 400, "invalid_request_error"),
    (BundleError, 400, "invalid_request_error"),
    (NotFoundError, 404, "not_found_error"),
    (ConflictError, 409, "conflict_error"),
    (MissingExtraError, 501, "server_error"),
    (CovipError, 500, "server_error"),
)
_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "request_too_large", 415: "invalid_request_error", 422: "invalid_request_error",
               504: "timeout_error"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                               "style-src 'self'; script-src 'self'; object-src 'none'; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


class BodyTooLarge(HTTPException):
    """A body past --max-body-mb (a FastAPI HTTPException, so body parsing does not turn it into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the server's limit of {limit / 2**20:g} MiB "
                              "(covip serve --max-body-mb); send a smaller photo or raise the limit")


def error_body(message: str, type_: str, code: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, **extra}}


def error_response(status: int, message: str, type_: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code), status_code=status, headers=headers)


def covip_status(exc: BaseException) -> tuple[int, str]:
    for cls, status, type_ in _STATUS:
        if isinstance(exc, cls):
            return status, type_
    return 500, "server_error"


class ServerState:
    """What the routes share: the assistant (one model instance), the config, the runner, the decode slots."""

    def __init__(self, assistant: Any, config: ServeConfig) -> None:
        self.assistant = assistant
        self.config = config
        self.memory = assistant.memory
        self.home = Path(self.memory.home).resolve()
        # photos named by path: only the photo store and --allow-dir folders, never the home's own files
        self.roots = (self.home / PHOTO_STORE, *check_allowed_dirs(config.allowed_dirs, self.home))
        self.runner = Runner(getattr(assistant, "_lock", None) or _fallback_lock(), timeout_s=config.timeout_s,
                             workers=config.workers)
        self.decode_slots = threading.BoundedSemaphore(config.max_decodes)
        self.model_name = config.model_name or str(getattr(assistant.engine, "model_id", "covip"))
        self.started = int(time.time())
        # a request's max_tokens may shorten the answer pass, never lengthen it past this
        self.answer_limit = int(assistant.cag.config.answer.max_new_tokens)
        self.photo_max_side = getattr(assistant.cag.config, "photo_max_side", None)
        self._hidden = sorted({str(self.home), str(Path(self.memory.home).absolute())}, key=len, reverse=True)
        try:
            self._user_home = str(Path.home())
        except RuntimeError:  # no home directory known
            self._user_home = ""

    @property
    def max_pixels(self) -> int:
        return int(self.memory.config.max_pixels)

    def check_conversation(self, question: str, history: Sequence[tuple[str, str]] = (),
                           system: str | None = None) -> None:
        """Refuse a question over ``max_question_chars``, or a conversation over 16 times that, before the photo
        is decoded or anything tokenized."""
        limit = self.config.max_question_chars
        chars = len(question) + sum(len(q) + len(a) for q, a in history) + len(system or "")
        if len(question) > limit:
            raise InputError(f"the question is {len(question):,} characters, more than this server's limit of "
                             f"{limit:,} (ServeConfig.max_question_chars); shorten it")
        if chars > 16 * limit:
            raise InputError(f"the question, earlier turns and system text are {chars:,} characters, more than this "
                             f"server takes ({16 * limit:,}); shorten the conversation")

    async def read_photo(self, url: str, *, full: bool = False) -> Any:
        """A request's photo (data URL or allowed path), decoded as the answer passes see it (``full``: as
        Memory.remember decodes it, without the side limit), off the event loop and within the decode slots."""
        side = None if full else self.photo_max_side
        return await self.runner.run(
            lambda cancel: photo_from_url(url, roots=self.roots, max_pixels=self.max_pixels, max_side=side,
                                          slots=self.decode_slots, cancel=cancel),
            what="reading the photo")

    def redact(self, message: str) -> str:
        """``message`` without the memory home's location or the user's home directory."""
        for path in self._hidden:
            message = message.replace(path, "<memory home>")
        if len(self._user_home) > 1:
            message = message.replace(self._user_home + "/", "~/")
        return message


def _fallback_lock() -> Any:
    import threading

    return threading.Lock()


# ---------------------------------------------------------------------------------------------- guard
LARGE_BODY_BYTES = 1 << 20
"""Requests with a body over this (photos, bundles) are served at most ``max_decodes`` at a time."""


class Guard:
    """Pure ASGI middleware in front of everything: Host, Origin and Sec-Fetch-Site checks, the token, the
    body limit, and the large-request slots: at most ``max_decodes`` requests with a body over 1 MiB are
    read, decoded and answered at once (the others wait before their body is read), so the memory a burst
    of large photos costs is bounded by the slots, not by the number of clients."""

    def __init__(self, app: Any, config: ServeConfig) -> None:
        self.app = app
        self.config = config
        self.token = config.token.encode() if config.token else None
        self.limit = config.max_body_bytes
        self.large_slots = asyncio.Semaphore(config.max_decodes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_corp(send)
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await error_response(400, "the Content-Length header is not a number",
                                     "invalid_request_error")(scope, receive, send)
                return
            if int(length) > self.limit:  # refused before a byte of the body is read
                exc = BodyTooLarge(self.limit)
                await error_response(413, exc.detail, "request_too_large",
                                     headers={"Connection": "close"})(scope, receive, send)
                return
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if (length is not None and int(length) > LARGE_BODY_BYTES) or (length is None and chunked):
            try:
                await asyncio.wait_for(self.large_slots.acquire(), self.config.timeout_s)
            except asyncio.TimeoutError:
                await error_response(503, f"the server is busy with {self.config.max_decodes} large requests "
                                          f"(photos, bundles) and waited {self.config.timeout_s:g} s for a slot; "
                                          "retry later", "server_error",
                                     headers={"Retry-After": "5"})(scope, receive, send)
                return
            try:
                await self._serve(scope, receive, send)
            finally:
                self.large_slots.release()
            return
        await self._serve(scope, receive, send)

    async def _serve(self, scope: dict, receive: Any, send: Any) -> None:
        """Run the app with the body limit enforced while the body streams in (chunked bodies too)."""
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # a chunked body with no Content-Length
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await error_response(413, str(exc.detail), "request_too_large",
                                 headers={"Connection": "close"})(scope, receive, send)

    def _refusal(self, scope: dict, headers: Headers) -> JSONResponse | None:
        host = headers.get("host", "")
        if not self.token and self.config.loopback and not _loopback_host(host):
            # DNS rebinding: a web page whose name resolves to 127.0.0.1 must not reach the memory
            return error_response(403, f"host {host!r} is not this machine; without an API token the server "
                                       "only answers requests addressed to 127.0.0.1 or localhost",
                                  "permission_error")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            # another web site's page (CSRF): browsers send its Origin; other HTTP clients send none
            return error_response(403, f"requests from web pages of another origin ({origin:.100}) are refused; "
                                       "call the API from your app's backend or from this server's own page",
                                  "permission_error")
        path = scope.get("path", "")
        public = path in PUBLIC_PATHS or path.startswith("/static/")
        site = (headers.get("sec-fetch-site") or "").strip().lower()
        if site and site not in ("same-origin", "none") and not public:
            # an <img> tag, a link or a form on another site's page: browsers send no Origin on GETs, but
            # they do say where the request comes from
            return error_response(403, f"requests made by another web site's pages (Sec-Fetch-Site: {site:.20}) "
                                       "are refused; open this server's own page, or call the API from an app",
                                  "permission_error")
        if self.token is None or public:
            return None
        auth = headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
            what = "no API token was sent" if not auth else "the API token is wrong"
            return error_response(401, f"{what}; send the header 'Authorization: Bearer <token>' with the token "
                                       "covip serve was started with (--token or COVIP_API_TOKEN)",
                                  "authentication_error", headers={"WWW-Authenticate": "Bearer"})
        return None


def _with_corp(send: Any) -> Any:
    """``send`` adding ``Cross-Origin-Resource-Policy: same-origin`` to the response headers (no other site's
    page may embed a response of this server, e.g. a photo in an <img>)."""

    async def corp_send(message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            if "cross-origin-resource-policy" not in headers:
                headers.append("Cross-Origin-Resource-Policy", "same-origin")
        await send(message)

    return corp_send


def _split_host(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _loopback_host(host: str) -> bool:
    return bool(host) and is_loopback(_split_host(host))


def _same_origin(origin: str, host: str) -> bool:
    from urllib.parse import urlparse

    try:
        parsed = urlparse(origin)
        return parsed.scheme in ("http", "https") and parsed.netloc.lower() == host.strip().lower()
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- the app
def create_app(assistant: Any, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``assistant`` (its one model instance is shared by all requests)."""
    from covip.sdk.server.api_assist import router as assist_router
    from covip.sdk.server.api_memory import router as memory_router
    from covip.sdk.server.api_openai import router as openai_router

    config = config or ServeConfig()
    state = ServerState(assistant, config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        state.runner.close()

    app = FastAPI(title="covip", version=_version(), docs_url=None, redoc_url=None,  # their pages load CDNs
                  lifespan=lifespan,
                  description="Personalized photo chat on this device: an OpenAI-compatible chat endpoint "
                              "answering from the user's own photo memories, and the memory itself. "
                              "Errors are {\"error\": {\"message\", \"type\", \"code\"}}.")
    app.state.covip = state
    app.add_middleware(Guard, config=config)
    _install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(memory_router)
    app.include_router(assist_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/v1/health", tags=["server"], responses=ERROR_RESPONSES)
    async def health() -> dict[str, Any]:
        """Whether the server is up, with the model it serves and which memory (an opaque id of its home, so
        the CLI can tell its own home's server without the server revealing where the home is)."""
        return {"status": "ok", "model": state.model_name, "meaningless": bool(assistant.meaningless),
                "home_id": home_id(state.home)}

    @app.get("/v1/verify", tags=["memory"], responses=ERROR_RESPONSES)
    async def verify(deep: bool = False) -> dict[str, Any]:
        """Check the memory's database, photo files and index files (``deep`` also re-hashes photos)."""
        report = await state.runner.run(lambda _: state.memory.verify(deep=deep), what="verifying the memory")
        return {"ok": report.ok, "errors": report.errors, "warnings": report.warnings, "checked": report.checked}

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(CovipError)
    async def covip_error(request: Request, exc: CovipError) -> JSONResponse:
        status, type_ = covip_status(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return error_response(status, request.app.state.covip.redact(str(exc)), type_, type(exc).__name__)

    @app.exception_handler(RequestTimeout)
    async def timeout(request: Request, exc: RequestTimeout) -> JSONResponse:
        return error_response(504, str(exc), "timeout_error", "RequestTimeout")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(400, "invalid request: " + "; ".join(problems), "invalid_request_error",
                              "validation_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (GET /openapi.json lists them)"
        return error_response(exc.status_code, message, _HTTP_TYPES.get(exc.status_code, "server_error"),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details",
                              "server_error")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("covip")
    except metadata.PackageNotFoundError:
        return "0"
