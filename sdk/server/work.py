"""The server's plumbing without FastAPI: running blocking work with a time limit behind the model gate,
taking in photos from requests (through :func:`~covip.sdk.imaging.load_photo`), and JSON shapes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlparse

from covip.sdk.errors import CovipError, ImageError, InputError, NotFoundError
from covip.sdk.imaging import Photo, load_photo

log = logging.getLogger(__name__)

__all__ = ["Runner", "RequestTimeout", "Cancelled", "decode_slot", "photo_from_url", "photo_from_upload",
           "check_user", "photo_json", "item_json", "hit_json", "answer_job"]

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a worker whose request timed out or whose client went away (never reaches a client)."""


class RequestTimeout(Exception):
    """A request ran past ``--timeout-s`` (answered with 504)."""

    def __init__(self, seconds: float, what: str, writes: bool) -> None:
        tail = ("; the change may still be applied in the background, so check before retrying" if writes
                else "; it was stopped")
        super().__init__(f"{what} took longer than the server's time limit of {seconds:g} s (covip serve "
                         f"--timeout-s){tail}. The model answers one request at a time, so a busy server "
                         "makes requests wait: retry later or raise the limit")
        self.seconds = seconds


class Runner:
    """Runs blocking calls in a thread pool, each under a time limit.

    ``gate=True`` work (anything that runs the VLM or the embedder, or changes the memory) holds the
    Assistant's lock: the one model instance serves one request at a time and the others queue (their
    wait counts toward their time limit). A timed-out request sets its cancel event, so queued work is
    skipped and generation stops at its next token.
    """

    def __init__(self, gate: Any, *, timeout_s: float, workers: int) -> None:
        self.gate = gate
        self.timeout_s = timeout_s
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="covip-serve")

    def submit(self, fn: Callable[[threading.Event], T], cancel: threading.Event, *,
               gate: bool) -> concurrent.futures.Future[T]:
        """Start ``fn(cancel)`` in the pool (holding the gate when asked)."""

        def job() -> T:
            if not gate:
                return fn(cancel)
            with self.gate:
                if cancel.is_set():
                    raise Cancelled()
                return fn(cancel)

        return self.executor.submit(job)

    async def run(self, fn: Callable[[threading.Event], T], *, gate: bool = False, what: str = "the request",
                  writes: bool = False) -> T:
        """``await`` ``fn(cancel)``; raise :class:`RequestTimeout` past the limit (the worker is told to stop)."""
        cancel = threading.Event()
        future = self.submit(fn, cancel, gate=gate)
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout_s)
        except asyncio.TimeoutError:
            cancel.set()
            future.add_done_callback(_swallow)
            raise RequestTimeout(self.timeout_s, what, writes) from None
        except asyncio.CancelledError:  # the client went away
            cancel.set()
            future.add_done_callback(_swallow)
            raise

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _swallow(future: concurrent.futures.Future) -> None:
    """Log what an abandoned worker ended with (nobody is waiting for it any more)."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None and not isinstance(exc, (Cancelled, CovipError)):
        log.warning("a timed-out request's worker failed: %r", exc)


# ---------------------------------------------------------------------------------------------- photos in
@contextlib.contextmanager
def decode_slot(slots: threading.Semaphore | None, cancel: threading.Event | None = None) -> Iterator[None]:
    """Hold one of the server's photo-decode slots (``--max-decodes``): a decode of a large photo costs
    hundreds of MB, so only a few run at once; a request that times out while waiting gives up."""
    if slots is None:
        yield
        return
    while not slots.acquire(timeout=0.25):
        if cancel is not None and cancel.is_set():
            raise Cancelled()
    try:
        yield
    finally:
        slots.release()


def _relabel(exc: ImageError, label: str) -> ImageError:
    """The same image error, naming where the photo came from instead of 'the given bytes'."""
    try:
        return type(exc)(f"{label}: {exc}")
    except TypeError:  # pragma: no cover - an ImageError subclass with another signature
        return exc


def _renamed(exc: CovipError, real: str, sent: str) -> CovipError:
    """The same error with the resolved path ``real`` replaced by the path the caller sent."""
    try:
        return type(exc)(str(exc).replace(real, sent))
    except TypeError:  # pragma: no cover - an error class with another signature
        return exc


def photo_from_upload(data: bytes, filename: str | None, *, max_pixels: int, max_side: int | None = None,
                      slots: threading.Semaphore | None = None, cancel: threading.Event | None = None) -> Photo:
    """An uploaded photo's bytes, checked by load_photo (pixel limit included), decoded in a decode slot."""
    try:
        with decode_slot(slots, cancel):
            return load_photo(data, max_pixels=max_pixels, max_side=max_side)
    except ImageError as exc:
        raise _relabel(exc, f"the uploaded photo {filename!r:.200}" if filename else "the uploaded photo") from None


def photo_from_url(url: str, *, roots: tuple[Path, ...], max_pixels: int, max_side: int | None = None,
                   slots: threading.Semaphore | None = None, cancel: threading.Event | None = None) -> Photo:
    """An OpenAI ``image_url``: a base64 data URL, or a local path / file:// URL inside one of ``roots`` (the
    memory's photo store and the --allow-dir folders), decoded in a decode slot."""
    if not isinstance(url, str) or not url.strip():
        raise InputError("image_url.url is empty; send the photo as a data URL (data:image/jpeg;base64,...)")
    url = url.strip()
    if url[:5].lower() == "data:":
        comma = url.find(",")
        header = url[5:comma] if comma > 0 else ""
        if comma < 0 or not header.lower().endswith(";base64"):
            raise InputError("image_url must be a base64 data URL such as data:image/jpeg;base64,/9j/4AAQ...")
        mime = header[: -len(";base64")].strip().lower()
        if mime and not mime.startswith("image/"):
            raise InputError(f"image_url is a data URL of type {mime!r:.80}; it must hold an image (image/jpeg, ...)")
        with decode_slot(slots, cancel):  # base64 text, its bytes and the pixels: one bounded set of copies
            data = _b64decode(url[comma + 1:])
            try:
                return load_photo(data, max_pixels=max_pixels, max_side=max_side)
            except ImageError as exc:
                raise _relabel(exc, "the photo in image_url") from None
    scheme = urlparse(url).scheme.lower() if "://" in url else ""
    if scheme in ("http", "https", "ftp"):
        raise InputError("the server does not download photos (it runs offline); send the photo itself as a data "
                         "URL (data:image/jpeg;base64,...) or a local path in a folder the server may read")
    if scheme == "file":
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise InputError(f"file URL {url!r:.200} names another machine; give a local path")
        url = unquote(parsed.path)
    elif scheme:
        raise InputError(f"image_url scheme {scheme!r:.40} is not supported; send a data URL or a local path")
    return _photo_from_path(url, roots=roots, max_pixels=max_pixels, max_side=max_side, slots=slots,
                            cancel=cancel)


def _b64decode(payload: str) -> bytes:
    """A data URL's base64 payload as bytes (line breaks and spaces allowed; other stray characters not)."""
    try:
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:  # perhaps wrapped lines: only then the copy without whitespace
            return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError("image_url's base64 data cannot be decoded (not valid base64); send the photo's "
                         "bytes base64-encoded") from None


def _photo_from_path(text: str, *, roots: tuple[Path, ...], max_pixels: int, max_side: int | None,
                     slots: threading.Semaphore | None, cancel: threading.Event | None) -> Photo:
    refusal = (f"the server may not read {text!r:.200}: local photo paths must be inside the memory's photo "
               "store or a folder covip serve was started with --allow-dir DIR; otherwise send the photo as "
               "a data URL")
    try:
        path = Path(text)
        if not path.is_absolute():
            raise InputError(f"local photo path {text!r:.200} is not absolute; give an absolute path")
        real = path.resolve()  # symlinks followed: a link pointing out of the allowed folders is refused
        if not any(real == root or real.is_relative_to(root) for root in roots):
            raise InputError(refusal)
        with decode_slot(slots, cancel):
            try:  # the checked path itself (a link swapped after the check is not followed again)
                return load_photo(real, max_pixels=max_pixels, max_side=max_side)
            except CovipError as exc:  # named as the caller sent it, not where its links lead
                raise _renamed(exc, str(real), text) from None
    except CovipError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # embedded NUL, name too long, symlink loop, ...
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError(f"local photo path {text!r:.200} cannot be used ({why})") from None


# ---------------------------------------------------------------------------------------------- memory calls
def check_user(mem: Any, user: str) -> str:
    """The cleaned user name; NotFoundError (404) when the memory has no such user."""
    from covip.sdk.memory.validate import clean_name

    name = clean_name(user, "user name")
    if not any(u.name == name for u in mem.users()):
        raise NotFoundError(f"no user named {name!r} in this memory; add it with POST /v1/users "
                            "(or remember a photo for it: POST /v1/users/{user}/memories)")
    return name


def answer_job(assistant: Any, user: str, photo: Photo, question: str, *, cag: bool, max_tokens: int | None,
               on_piece: Callable[[str], None] | None, cancel: threading.Event, history: Any = None,
               system: str | None = None) -> Any:
    """Answer with CAG (the caller holds the Assistant's lock, so the config swap below is private to this
    request); a set ``cancel`` stops generation at the next token."""
    generator = assistant.cag
    base = generator.config

    def on_token(piece: str) -> None:
        if cancel.is_set():
            raise Cancelled()
        if on_piece is not None:
            on_piece(piece)

    if max_tokens is not None and max_tokens < base.answer.max_new_tokens:  # a request may only shorten it
        generator.config = dataclasses.replace(
            base, answer=dataclasses.replace(base.answer, max_new_tokens=max_tokens))
    try:
        return generator.ask(user, photo, question, cag=cag, on_token=on_token, history=history, system=system)
    finally:
        generator.config = base


# ---------------------------------------------------------------------------------------------- JSON shapes
def photo_url(owner: str, photo_id: int) -> str:
    """Where the owner fetches a remembered photo's bytes."""
    return f"/v1/users/{quote(owner, safe='')}/photos/{photo_id}"


def photo_json(record: Any) -> dict[str, Any]:
    """A remembered photo without its local path (the ``url`` serves its bytes to the owner)."""
    return {"id": record.id, "owner": record.owner, "sha256": record.sha256, "format": record.format,
            "width": record.width, "height": record.height, "taken_at": record.taken_at, "place": record.place,
            "gps": list(record.gps) if record.gps else None, "created_at": record.created_at,
            "original_name": getattr(record, "original_name", None), "url": photo_url(record.owner, record.id)}


def episode_json(episode: Any) -> dict[str, Any]:
    return {"id": episode.id, "photo_id": episode.photo_id, "dialogue": episode.text,
            "turns": [{"role": t.role, "text": t.text} for t in episode.dialogue],
            "concepts": list(episode.concepts), "taken_at": episode.taken_at, "place": episode.place,
            "created_at": episode.created_at}


def item_json(item: Any, user: str) -> dict[str, Any]:
    """One memory an answer used (provenance): the context item, with a photo URL instead of a local path."""
    out = item.to_dict()
    out.pop("path", None)
    out["photo_url"] = photo_url(item.photo.owner, item.photo.id) if item.photo.owner == user else None
    return out


def hit_json(hit: Any, user: str) -> dict[str, Any]:
    photo = photo_json(hit.photo)
    if hit.photo.owner != user:  # a photo shared through a concept: its bytes stay with its owner
        photo["url"] = None
    return {"score": round(float(hit.score), 4), "shared": hit.shared, "concepts": list(hit.concepts),
            "photo": photo, "episodes": [episode_json(e) for e in hit.episodes]}


def report_json(report: Any) -> dict[str, Any]:
    return {"forgot": dataclasses.asdict(report)}
