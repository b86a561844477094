"""Memory endpoints: users, remembering photos with dialogues, search by photo, concepts, photo bytes,
forgetting (photo / concept / user) and moving a user's memory as a bundle (export / import).

Photos arrive as multipart uploads and go through :func:`~covip.sdk.imaging.load_photo` like everywhere
else (format check, pixel limit). Work that runs a model or changes the memory holds the model gate.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from covip.sdk.errors import InputError, NotFoundError
from covip.sdk.memory.validate import MAX_K
from covip.sdk.server.app import ERROR_RESPONSES, ServerState
from covip.sdk.server.work import (
    episode_json,
    hit_json,
    photo_from_upload,
    photo_json,
    report_json,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["memory"], responses=ERROR_RESPONSES)

UserName = Annotated[str, Path(description="The memory owner's name.", min_length=1, max_length=200)]
PhotoId = Annotated[int, Path(description="A remembered photo's id.", ge=1, le=2**62)]
_MEDIA = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
          "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff", "ICO": "image/x-icon",
          "AVIF": "image/avif", "HEIF": "image/heif"}


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    exist_ok: bool = Field(False, description="Answer 200 instead of 409 when the user exists.")


def _state(request: Request) -> ServerState:
    return request.app.state.covip


async def _read_upload(upload: UploadFile) -> bytes:
    data = await upload.read()
    if not data:
        raise InputError(f"the uploaded file {upload.filename!r} is empty")
    return data


def _opt(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


# ---------------------------------------------------------------------------------------------- users
@router.get("/users")
async def list_users(request: Request) -> dict[str, Any]:
    """Every memory owner."""
    users = await _state(request).runner.run(lambda _: _state(request).memory.users(), what="listing users")
    return {"object": "list", "data": [{"name": u.name, "created_at": u.created_at} for u in users]}


@router.post("/users", status_code=201)
async def add_user(body: NewUser, request: Request) -> dict[str, Any]:
    """Add a memory owner (409 when the name is taken, unless ``exist_ok``)."""
    state = _state(request)
    user = await state.runner.run(lambda _: state.memory.add_user(body.name, exist_ok=body.exist_ok), gate=True,
                                  what="adding the user", writes=True)
    return {"name": user.name, "created_at": user.created_at}


@router.delete("/users/{user}")
async def forget_user(user: UserName, request: Request) -> dict[str, Any]:
    """Forget a user entirely: photos, concepts, dialogues, vectors, cached captions, files."""
    state = _state(request)
    report = await state.runner.run(lambda _: state.memory.forget_user(user), gate=True,
                                    what="forgetting the user", writes=True)
    return {"user": user, **report_json(report)}


# ---------------------------------------------------------------------------------------------- concepts
@router.get("/users/{user}/concepts")
async def list_concepts(user: UserName, request: Request) -> dict[str, Any]:
    """The user's people, pets, objects and places (plus concepts shared with them)."""
    state = _state(request)
    concepts = await state.runner.run(lambda _: state.memory.concepts(user), what="listing concepts")
    return {"object": "list", "user": user, "data": [
        {"name": c.name, "kind": c.kind, "notes": c.notes, "owner": c.user, "photo_count": c.photo_count}
        for c in concepts]}


@router.delete("/users/{user}/concepts/{concept}")
async def forget_concept(user: UserName, concept: Annotated[str, Path(min_length=1, max_length=200)],
                         request: Request, keep_shared_photos: bool = False) -> dict[str, Any]:
    """Forget a concept with its photos and dialogues (``keep_shared_photos`` keeps photos of other concepts)."""
    state = _state(request)
    report = await state.runner.run(
        lambda _: state.memory.forget_concept(user, concept, keep_shared_photos=keep_shared_photos), gate=True,
        what="forgetting the concept", writes=True)
    return {"user": user, "concept": concept, **report_json(report)}


# ---------------------------------------------------------------------------------------------- photos
@router.get("/users/{user}/photos")
async def list_photos(user: UserName, request: Request) -> dict[str, Any]:
    """The user's remembered photos, oldest first (``url`` serves each one's bytes)."""
    state = _state(request)
    photos = await state.runner.run(lambda _: state.memory.photos(user), what="listing photos")
    return {"object": "list", "user": user, "data": [photo_json(p) for p in photos]}


@router.get("/users/{user}/photos/{photo_id}", response_class=Response,
            responses={200: {"content": {"image/*": {}}, "description": "The photo's stored bytes"}})
async def get_photo(user: UserName, photo_id: PhotoId, request: Request) -> Response:
    """A remembered photo's bytes, only to its owner (404 for anyone else's photo)."""
    state = _state(request)

    def read(_: Any) -> tuple[bytes, str]:
        record = state.memory.find_photo(user, photo_id)
        if record.path is None:
            raise NotFoundError(f"photo {photo_id} has no stored copy (the memory keeps only its original path)")
        try:
            data = state.memory.read_photo_bytes(record)  # the photo store's one seam: decrypts, checks
        except OSError as exc:
            raise NotFoundError(f"photo {photo_id}'s file cannot be read ({exc.strerror}); run covip verify") from exc
        return data, _MEDIA.get(record.format.upper(), "application/octet-stream")

    data, media = await state.runner.run(read, what="reading the photo")
    return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600",
                                                     "X-Content-Type-Options": "nosniff"})


@router.delete("/users/{user}/photos/{photo_id}")
async def forget_photo(user: UserName, photo_id: PhotoId, request: Request) -> dict[str, Any]:
    """Forget one photo: its dialogues, vectors, cached captions and stored copy."""
    state = _state(request)
    report = await state.runner.run(lambda _: state.memory.forget_photo(user, photo_id), gate=True,
                                    what="forgetting the photo", writes=True)
    return {"user": user, "photo_id": photo_id, **report_json(report)}


@router.post("/users/{user}/memories", status_code=201)
async def remember(user: UserName, request: Request,
                   photo: Annotated[UploadFile, File(description="The photo (JPEG, PNG, WebP, ...).")],
                   dialogue: Annotated[str | None, Form(description="What was said about it: plain text "
                                                        "(one user turn) or 'User: ...' / 'Assistant: ...' "
                                                        "lines.")] = None,
                   concepts: Annotated[list[str] | None, Form(description="People, pets, objects, places in "
                                                              "it (repeat the field, or comma-separate).")] = None,
                   taken_at: Annotated[str | None, Form(description="ISO 8601 date/time.")] = None,
                   place: Annotated[str | None, Form()] = None,
                   create_user: Annotated[bool, Form(description="Add the user if missing.")] = True,
                   ) -> dict[str, Any]:
    """Remember a photo with the dialogue about it, tied to concepts (created as needed)."""
    state = _state(request)
    data = await _read_upload(photo)
    names = [n.strip() for field in concepts or [] for n in field.split(",") if n.strip()]

    def work(cancel: Any) -> Any:
        pic = photo_from_upload(data, photo.filename, max_pixels=state.max_pixels, slots=state.decode_slots,
                                cancel=cancel)
        if create_user:
            state.memory.add_user(user, exist_ok=True)
        return state.memory.remember(user, pic, _opt(dialogue), names, taken_at=_opt(taken_at),
                                     place=_opt(place))

    done = await state.runner.run(work, gate=True, what="remembering the photo", writes=True)
    return {"user": user, "new_photo": done.new_photo, "photo": photo_json(done.photo),
            "episode": episode_json(done.episode) if done.episode is not None else None}


@router.post("/users/{user}/search")
async def search(user: UserName, request: Request,
                 photo: Annotated[UploadFile, File(description="The query photo.")],
                 k: Annotated[int, Form(ge=1, le=MAX_K, description="How many results (1 to MAX_K, the "
                                        "memory's one search limit).")] = 5) -> dict[str, Any]:
    """The user's remembered photos most similar to this one, best first, with their dialogues."""
    state = _state(request)
    data = await _read_upload(photo)

    def work(cancel: Any) -> Any:
        pic = photo_from_upload(data, photo.filename, max_pixels=state.max_pixels, max_side=state.photo_max_side,
                                slots=state.decode_slots, cancel=cancel)
        return state.memory.search(user, image=pic, k=k)

    hits = await state.runner.run(work, gate=True, what="searching the memory")
    return {"object": "list", "user": user, "data": [hit_json(h, user) for h in hits]}


# ---------------------------------------------------------------------------------------------- bundles
@router.get("/users/{user}/export", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "The user's memory bundle"}})
async def export_user(user: UserName, request: Request) -> FileResponse:
    """Download the user's whole memory as a bundle (zip: manifest, rows, photos, vectors)."""
    state = _state(request)
    folder = FsPath(tempfile.mkdtemp(prefix="covip-export-"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)[:80] or "user"
    try:
        path = await state.runner.run(lambda _: state.memory.export_user(user, folder / f"{safe}.covip.zip"),
                                      what="exporting the memory")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(path, media_type="application/zip", filename=path.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post("/import", status_code=201)
async def import_bundle(request: Request,
                        bundle: Annotated[UploadFile, File(description="A bundle from export.")],
                        user: Annotated[str | None, Form(description="Import as this user (default: the "
                                                         "bundle's).")] = None,
                        merge: Annotated[bool, Form(description="Add into an existing user.")] = False,
                        ) -> dict[str, Any]:
    """Load a bundle (everything is checked before anything is written; 409 if the user exists and not merge)."""
    state = _state(request)
    data = await _read_upload(bundle)
    folder = FsPath(tempfile.mkdtemp(prefix="covip-import-"))
    try:
        path = folder / "upload.covip.zip"
        path.write_bytes(data)
        counts = await state.runner.run(
            lambda _: state.memory.import_bundle(path, user=_opt(user), merge=merge), gate=True,
            what="importing the bundle", writes=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"imported": counts}
