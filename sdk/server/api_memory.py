"""Memory endpoints: users, remembering photos with dialogues, recall by photo, history, concepts (add, change,
rename, merge, share), a photo's concepts (tag, untag, move), episodes (update, forget), photo bytes, forgetting
(photo / concept / user) and moving a user's memory as a bundle (export-memory / import-memory).

The words are the CLI's and the Python API's (README, "One vocabulary"); the older paths ``/search``,
``/export`` and ``/import`` still work and are left out of the OpenAPI document. Photos and episodes are
addressed by the ids ``GET .../history`` shows; another user's id is a 404 like an id that does not exist.
Photos arrive as multipart uploads and go through :func:`~covip.sdk.imaging.load_photo` like everywhere
else (format check, pixel limit). Work that runs a model or changes the memory holds the model gate.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask

from covip.sdk.errors import InputError, NotFoundError
from covip.sdk.memory.validate import MAX_K, file_name_or_none
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
EpisodeId = Annotated[int, Path(description="A dialogue episode's id (GET .../history shows them).", ge=1,
                                le=2**62)]
ConceptName = Annotated[str, Path(description="A concept's name (case-insensitive per user).", min_length=1,
                                  max_length=200)]
OtherUser = Annotated[str, Path(description="The user to share with.", min_length=1, max_length=200)]
Kind = Literal["person", "pet", "object", "place", "other"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
_MEDIA = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp",
          "BMP": "image/bmp", "DIB": "image/bmp", "TIFF": "image/tiff", "ICO": "image/x-icon",
          "AVIF": "image/avif", "HEIF": "image/heif"}


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    exist_ok: bool = Field(False, description="Answer 200 instead of 409 when the user exists.")


class NewConcept(BaseModel):
    name: Name
    kind: Kind = "other"
    notes: str = Field("", max_length=100_000)


class ConceptChange(BaseModel):
    name: Name | None = Field(None, description="A new name (rename; 409 when the user has a concept by that "
                                                "name: merge instead).")
    kind: Kind | None = None
    notes: str | None = Field(None, max_length=100_000)


class MergeSources(BaseModel):
    sources: list[Name] = Field(min_length=1, max_length=1000, description="Concepts to fold into this one; "
                                "their photos, dialogues and shares move over and they disappear.")


class PhotoTag(BaseModel):
    concept: Name = Field(description="The concept to tag the photo with (created as needed).")


class PhotoMove(BaseModel):
    from_concept: Name = Field(description="The wrong concept, taken off the photo and its dialogues.")
    to_concept: Name = Field(description="The right concept (created as needed).")


class TurnIn(BaseModel):
    role: Literal["user", "assistant"]
    text: str = Field(min_length=1, max_length=100_000)


class EpisodeChange(BaseModel):
    """Fields left out stay as they are; ``taken_at`` or ``place`` null clears it."""

    dialogue: str | list[TurnIn] | None = Field(None, description="The corrected dialogue: 'User: ...' / "
                                                "'Assistant: ...' lines, or a list of turns.")
    taken_at: str | None = Field(None, max_length=100, description="ISO 8601 date/time; null clears it.")
    place: str | None = Field(None, max_length=500, description="Where; null clears it.")


def _state(request: Request) -> ServerState:
    return request.app.state.covip


async def _read_upload(upload: UploadFile) -> bytes:
    data = await upload.read()
    if not data:
        raise InputError(f"the uploaded file {upload.filename!r} is empty")
    return data


def _opt(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def _concept_json(c: Any) -> dict[str, Any]:
    return {"name": c.name, "kind": c.kind, "notes": c.notes, "owner": c.user, "photo_count": c.photo_count}


def _tags_json(user: str, tags: Any) -> dict[str, Any]:
    return {"user": user, "photo": photo_json(tags.photo), "concepts": list(tags.concepts), "changed": tags.changed,
            "captions_dropped": tags.captions}


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
    return {"object": "list", "user": user, "data": [_concept_json(c) for c in concepts]}


@router.post("/users/{user}/concepts", status_code=201)
async def add_concept(user: UserName, body: NewConcept, request: Request) -> dict[str, Any]:
    """Add a concept before any photo of it is remembered (409 when the user has one by that name)."""
    state = _state(request)
    concept = await state.runner.run(
        lambda _: state.memory.add_concept(user, body.name, kind=body.kind, notes=body.notes), gate=True,
        what="adding the concept", writes=True)
    return _concept_json(concept)


@router.patch("/users/{user}/concepts/{concept}")
async def change_concept(user: UserName, concept: ConceptName, body: ConceptChange,
                         request: Request) -> dict[str, Any]:
    """Rename a concept (``name``) and/or change its ``kind`` or ``notes``; cached captions that used its photos
    are dropped."""
    state = _state(request)
    if body.name is None and body.kind is None and body.notes is None:
        raise InputError("give at least one of name (rename), kind or notes")

    def work(_: Any) -> Any:
        done = None
        if body.name is not None:  # the body is checked already, so the update below cannot refuse its input
            done = state.memory.rename_concept(user, concept, body.name)
        if body.kind is None and body.notes is None:
            return done
        return state.memory.update_concept(user, done.name if done else concept, kind=body.kind, notes=body.notes)

    done = await state.runner.run(work, gate=True, what="changing the concept", writes=True)
    return _concept_json(done)


@router.post("/users/{user}/concepts/{concept}/merge")
async def merge_concepts(user: UserName, concept: ConceptName, body: MergeSources,
                         request: Request) -> dict[str, Any]:
    """Fold ``sources`` into this concept: their photos, dialogues and shares move over; they disappear."""
    state = _state(request)
    done = await state.runner.run(lambda _: state.memory.merge_concepts(user, body.sources, concept), gate=True,
                                  what="merging the concepts", writes=True)
    return _concept_json(done)


@router.post("/users/{user}/concepts/{concept}/shares/{other}")
async def share_concept(user: UserName, concept: ConceptName, other: OtherUser, request: Request) -> dict[str, Any]:
    """Let ``other`` recall this concept's photos and the dialogues tied to it (nothing else)."""
    state = _state(request)
    await state.runner.run(lambda _: state.memory.share_concept(user, concept, other), gate=True,
                           what="sharing the concept", writes=True)
    return {"user": user, "concept": concept, "shared_with": other, "shared": True}


@router.delete("/users/{user}/concepts/{concept}/shares/{other}")
async def unshare_concept(user: UserName, concept: ConceptName, other: OtherUser,
                          request: Request) -> dict[str, Any]:
    """Stop sharing this concept with ``other``."""
    state = _state(request)
    await state.runner.run(lambda _: state.memory.unshare_concept(user, concept, other), gate=True,
                           what="unsharing the concept", writes=True)
    return {"user": user, "concept": concept, "shared_with": other, "shared": False}


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


@router.post("/users/{user}/photos/{photo_id}/concepts")
async def tag_photo(user: UserName, photo_id: PhotoId, body: PhotoTag, request: Request) -> dict[str, Any]:
    """Tag the photo and its dialogues with a concept (created as needed); ``changed`` is false when it was
    tagged already. Cached captions that used the photo are dropped."""
    state = _state(request)
    tags = await state.runner.run(lambda _: state.memory.tag_photo(user, photo_id, body.concept), gate=True,
                                  what="tagging the photo", writes=True)
    return _tags_json(user, tags)


@router.delete("/users/{user}/photos/{photo_id}/concepts/{concept}")
async def untag_photo(user: UserName, photo_id: PhotoId, concept: ConceptName, request: Request) -> dict[str, Any]:
    """Take a concept off the photo and its dialogues (404 when the photo is not tagged with it)."""
    state = _state(request)
    tags = await state.runner.run(lambda _: state.memory.untag_photo(user, photo_id, concept), gate=True,
                                  what="untagging the photo", writes=True)
    return _tags_json(user, tags)


@router.post("/users/{user}/photos/{photo_id}/move")
async def move_photo(user: UserName, photo_id: PhotoId, body: PhotoMove, request: Request) -> dict[str, Any]:
    """Move the photo and its dialogues from a wrong concept to the right one (untag + tag, one transaction)."""
    state = _state(request)
    tags = await state.runner.run(
        lambda _: state.memory.move_photo(user, photo_id, body.from_concept, body.to_concept), gate=True,
        what="moving the photo", writes=True)
    return _tags_json(user, tags)


# ---------------------------------------------------------------------------------------------- episodes
@router.get("/users/{user}/history")
async def history(user: UserName, request: Request,
                  concept: Annotated[str | None, Query(min_length=1, max_length=200,
                                                       description="Only dialogues tied to this concept.")] = None,
                  limit: Annotated[int | None, Query(ge=1, le=2**62, description="At most this many.")] = None,
                  ) -> dict[str, Any]:
    """The user's dialogue episodes, newest first, each with its photo (their ids address the edit routes)."""
    state = _state(request)
    items = await state.runner.run(lambda _: state.memory.history(user, concept, limit=limit),
                                   what="reading the history")
    data = []
    for item in items:
        photo = photo_json(item.photo)
        if item.photo.owner != user:  # a photo shared through a concept: its bytes stay with its owner
            photo["url"] = None
        data.append({"episode": episode_json(item.episode), "photo": photo})
    return {"object": "list", "user": user, "concept": concept, "data": data}


@router.patch("/users/{user}/episodes/{episode_id}")
async def update_episode(user: UserName, episode_id: EpisodeId, body: EpisodeChange,
                         request: Request) -> dict[str, Any]:
    """Correct one episode's dialogue, time or place (fields left out stay; null clears taken_at or place). The
    old text is scrubbed from the database files and cached captions that used the photo are dropped."""
    state = _state(request)
    given = body.model_fields_set
    changes: dict[str, Any] = {}
    if "dialogue" in given:
        changes["dialogue"] = (body.dialogue if not isinstance(body.dialogue, list)
                               else [t.model_dump() for t in body.dialogue])
    for field in ("taken_at", "place"):
        if field in given:
            changes[field] = getattr(body, field)
    episode = await state.runner.run(lambda _: state.memory.update_episode(user, episode_id, **changes), gate=True,
                                     what="updating the episode", writes=True)
    return {"user": user, "episode": episode_json(episode)}


@router.delete("/users/{user}/episodes/{episode_id}")
async def forget_episode(user: UserName, episode_id: EpisodeId, request: Request) -> dict[str, Any]:
    """Forget one dialogue episode, scrubbed; its photo (and the photo's other dialogues) stay."""
    state = _state(request)
    report = await state.runner.run(lambda _: state.memory.forget_episode(user, episode_id), gate=True,
                                    what="forgetting the episode", writes=True)
    return {"user": user, "episode_id": episode_id, **report_json(report)}


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
                                     place=_opt(place), original_name=file_name_or_none(photo.filename))

    done = await state.runner.run(work, gate=True, what="remembering the photo", writes=True)
    return {"user": user, "new_photo": done.new_photo, "photo": photo_json(done.photo),
            "episode": episode_json(done.episode) if done.episode is not None else None}


@router.post("/users/{user}/recall")
@router.post("/users/{user}/search", include_in_schema=False)  # the older name, kept
async def recall(user: UserName, request: Request,
                 photo: Annotated[UploadFile, File(description="The query photo.")],
                 k: Annotated[int, Form(ge=1, le=MAX_K, description="How many results (1 to MAX_K, the "
                                        "memory's one search limit).")] = 5) -> dict[str, Any]:
    """The user's remembered photos most similar to this one, best first, with their dialogues."""
    state = _state(request)
    data = await _read_upload(photo)

    def work(cancel: Any) -> Any:
        pic = photo_from_upload(data, photo.filename, max_pixels=state.max_pixels, max_side=state.photo_max_side,
                                slots=state.decode_slots, cancel=cancel)
        return state.memory.recall(user, image=pic, k=k)

    hits = await state.runner.run(work, gate=True, what="searching the memory")
    return {"object": "list", "user": user, "data": [hit_json(h, user) for h in hits]}


# ---------------------------------------------------------------------------------------------- bundles
@router.get("/users/{user}/export-memory", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}, "description": "The user's memory bundle"}})
@router.get("/users/{user}/export", response_class=FileResponse, include_in_schema=False)  # the older path, kept
async def export_memory(user: UserName, request: Request) -> FileResponse:
    """Download the user's whole memory as a bundle (zip: manifest, rows, photos, vectors)."""
    state = _state(request)
    folder = FsPath(tempfile.mkdtemp(prefix="covip-export-"))
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)[:80] or "user"
    try:
        path = await state.runner.run(lambda _: state.memory.export_memory(user, folder / f"{safe}.covip.zip"),
                                      what="exporting the memory")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(path, media_type="application/zip", filename=path.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))


@router.post("/import-memory", status_code=201)
@router.post("/import", status_code=201, include_in_schema=False)  # the older path, kept
async def import_memory(request: Request,
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
            lambda _: state.memory.import_memory(path, user=_opt(user), merge=merge), gate=True,
            what="importing the bundle", writes=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"imported": counts}
