"""covip's own answer routes: ``POST /v1/users/{user}/ask``, ``POST /v1/users/{user}/caption`` and
``POST /v1/embed``.

They return exactly what ``covip ask --json`` and ``covip caption --json`` print (the memories without local
paths), so the CLI can hand its work to a running ``covip serve`` of the same home (as Ollama's CLI does with
its server) and print the same thing; apps that do not speak OpenAI's chat format use them too. ``/v1/embed``
gives the memory's embedding of a photo, so `covip remember`/`recall` need not load the embedder.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from covip.sdk.server.app import ERROR_RESPONSES, ServerState
from covip.sdk.server.work import answer_job, check_user, item_json

__all__ = ["router", "AskRequest", "CaptionRequest", "EmbedRequest"]

router = APIRouter(prefix="/v1", tags=["answers"], responses=ERROR_RESPONSES)


class CaptionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    photo: str = Field(description="A base64 data URL, or an absolute local path / file:// URL inside the memory's "
                                   "photo store or an --allow-dir folder.")


class AskRequest(CaptionRequest):
    question: str = Field(min_length=1, description="The question about the photo.")
    cag: bool = Field(True, description="Caption the photo from the memories first (default).")
    history: list[tuple[str, str]] = Field(default_factory=list, description="Earlier (question, answer) "
                                           "exchanges about this photo, oldest first.")
    system: str | None = Field(None, description="The app's system text, shown first.")
    max_tokens: int | None = Field(None, ge=1, description="May shorten the answer, never lengthen it.")


def _state(request: Request) -> ServerState:
    return request.app.state.covip


@router.post("/users/{user}/ask")
async def ask(user: str, body: AskRequest, request: Request) -> dict[str, Any]:
    """Answer a question about a photo from the user's memories: the `covip ask --json` document."""
    state = _state(request)
    state.check_conversation(body.question, body.history, body.system)
    photo = await state.read_photo(body.photo)
    name = await state.runner.run(lambda _: check_user(state.memory, user), what="finding the user")
    answer = await state.runner.run(
        lambda cancel: answer_job(state.assistant, name, photo, body.question, cag=body.cag,
                                  max_tokens=body.max_tokens, on_piece=None, cancel=cancel,
                                  history=body.history, system=body.system),
        gate=True, what="answering")
    doc = answer.to_dict()
    doc["memories"] = [item_json(m, name) for m in answer.memories]
    return {"user": name, "question": body.question, "model": state.model_name,
            "meaningless": bool(state.assistant.meaningless), **doc}


@router.post("/users/{user}/caption")
async def caption(user: str, body: CaptionRequest, request: Request) -> dict[str, Any]:
    """The personalized caption of a photo (cached): the `covip caption --json` document."""
    state = _state(request)
    photo = await state.read_photo(body.photo)
    name = await state.runner.run(lambda _: check_user(state.memory, user), what="finding the user")
    result = await state.runner.run(lambda _: state.assistant.cag.caption(name, photo),  # the runner holds the lock
                                    gate=True, what="captioning")
    gen = result.generation
    return {"user": name, "model": state.model_name, "meaningless": bool(state.assistant.meaningless),
            "caption": result.caption, "cached": result.cached, "seconds": round(result.seconds, 4),
            "abstained": result.context.abstained, "abstain_reason": result.context.reason or None,
            "memories": [item_json(m, name) for m in result.memories],
            "tokens": None if gen is None else {"prompt": gen.prompt_tokens, "cached": gen.cached_tokens,
                                                "completion": gen.completion_tokens}}


class EmbedRequest(CaptionRequest):
    pass


@router.post("/embed")
async def embed(body: EmbedRequest, request: Request) -> dict[str, Any]:
    """The memory's embedding of a photo (what remember and recall index and search with), so a client can
    remember or recall through its own connection to the memory without loading the embedder."""
    state = _state(request)
    photo = await state.read_photo(body.photo, full=True)  # the same pixels as an in-process remember/recall
    embedder = state.memory.embedder
    vec = await state.runner.run(lambda _: embedder.embed_images([photo.image])[0], gate=True, what="embedding")
    return {"model_id": embedder.model_id, "dim": int(len(vec)), "meaningless": bool(getattr(embedder, "meaningless", False)),
            "embedding": [float(x) for x in vec]}
