"""OpenAI-compatible endpoints: ``POST /v1/chat/completions`` (also streaming) and ``GET /v1/models``.

The answer is covip's personalized CAG answer about the photo in the conversation: the last user message's
text is the question, the newest ``image_url`` part in the user messages is the photo, and the ``user``
field names whose memory to use. The conversation about that photo is kept: the exchanges from the message
that carried the photo up to the question go to the model as earlier turns (the newest that fit the context
window; the oldest are dropped first), so a text-only follow-up is answered about the same photo, and
system/developer messages are the app's system text. Turns before the photo are about other photos and are
left out. Responses add a ``covip`` field with the provenance: the memories used, the caption, whether it
came from the cache, how many earlier turns were kept and dropped, timings and token counts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from covip.sdk.errors import CovipError, InputError
from covip.sdk.server.app import ERROR_RESPONSES, ServerState, covip_status, error_body
from covip.sdk.server.work import Cancelled, answer_job, check_user, item_json

__all__ = ["router", "ChatRequest"]

router = APIRouter(prefix="/v1", tags=["openai"])


class ImageURL(BaseModel):
    url: str = Field(description="A base64 data URL (data:image/jpeg;base64,...) or an absolute local path / "
                                 "file:// URL inside the memory's photo store or an --allow-dir folder.")
    detail: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request. Sampling fields other than the token limits are accepted and ignored (the
    server's CAG settings decide); ``cag`` (covip's own, via ``extra_body``) turns the caption pass off."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(None, description="Accepted and ignored: the server has one model.")
    messages: list[ChatMessage] = Field(min_length=1)
    user: str | None = Field(None, description="Whose memory to answer from (required).")
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, description="May shorten the answer, never lengthen it "
                                                         "past the server's limit.")
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(1, ge=1, le=1)
    cag: bool = Field(True, description="covip: caption the photo from the memories first (default).")


def _text_of(message: ChatMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content or [] if isinstance(p, TextPart))


class Conversation(BaseModel):
    """What covip takes from an OpenAI conversation: the question, the photo, the earlier exchanges about it
    and the app's system text."""

    question: str
    photo_url: str
    history: list[tuple[str, str]]
    system: str | None


def read_conversation(messages: list[ChatMessage]) -> Conversation:
    """The last user message's text, the newest image URL in the user messages, the (question, answer) pairs
    from the message carrying that image on, and the system/developer messages' text."""
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise InputError("the conversation has no user message; ask a question in a message with role 'user'")
    last = users[-1]
    question = _text_of(messages[last])
    if not question.strip():
        raise InputError("the last user message has no text; ask a question about the photo")
    system = "\n\n".join(_text_of(m).strip() for m in messages if m.role in ("system", "developer")
                          and _text_of(m).strip()) or None
    for i in reversed(users):
        parts = messages[i].content if isinstance(messages[i].content, list) else []
        images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
        if images:
            return Conversation(question=question.strip(), photo_url=images[-1],
                                history=_exchanges(messages[i:last]), system=system)
    raise InputError("no photo in the conversation: covip answers questions about a photo, so add a part "
                     "{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/jpeg;base64,...\"}} "
                     "to a user message")


def _exchanges(messages: list[ChatMessage]) -> list[tuple[str, str]]:
    """(question, answer) pairs: each user message with text, and the assistant text that follows it (a user
    message left unanswered keeps an empty answer; tool and system messages are skipped)."""
    pairs: list[tuple[str, str]] = []
    for m in messages:
        if m.role == "user":
            text = _text_of(m).strip()
            if text:
                pairs.append((text, ""))
        elif m.role == "assistant" and pairs:
            answer = _text_of(m).strip()
            pairs[-1] = (pairs[-1][0], (pairs[-1][1] + "\n" + answer).strip())
    return pairs


def _state(request: Request) -> ServerState:
    return request.app.state.covip


def provenance(answer: Any, user: str, state: ServerState) -> dict[str, Any]:
    """The ``covip`` extension field: what the answer is built on."""
    out = answer.to_dict()
    out.pop("answer", None)
    out["memories"] = [item_json(m, user) for m in answer.memories]
    out["cache_hit"] = answer.caption_cached
    out["user"] = user
    out["meaningless"] = bool(state.assistant.meaningless)
    return out


def _usage(answer: Any) -> dict[str, Any]:
    t = answer.tokens
    prompt = int(t.get("answer_prompt", 0)) + int(t.get("answer_cached", 0))
    completion = int(t.get("answer_completion", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(t.get("answer_cached", 0))}}


def _finish_reason(answer: Any, limit: int) -> str:
    return "length" if int(answer.tokens.get("answer_completion", 0)) >= limit else "stop"


@router.get("/models", responses=ERROR_RESPONSES)
async def list_models(request: Request) -> dict[str, Any]:
    """The one model this server runs (OpenAI's list shape)."""
    state = _state(request)
    return {"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": state.started, "owned_by": "covip",
        "covip": {"meaningless": bool(state.assistant.meaningless),
                  "embedder": str(getattr(state.memory.embedder, "model_id", ""))}}]}


@router.post("/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    """Answer the last question about the conversation's photo from ``user``'s memories (CAG)."""
    state = _state(request)
    if body.user is None or not body.user.strip():
        raise InputError("set the request's 'user' field to the memory owner's name (e.g. user=\"ana\"); "
                         "covip answers from that user's memories")
    talk = read_conversation(body.messages)
    question, url = talk.question, talk.photo_url
    state.check_conversation(question, talk.history, talk.system)  # before the photo is decoded
    photo = await state.read_photo(url)
    user = await state.runner.run(lambda _: check_user(state.memory, body.user or ""), what="finding the user")
    limit = state.answer_limit
    requested = body.max_completion_tokens or body.max_tokens
    effective = min(limit, requested) if requested else limit
    meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name}
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _stream(state, meta, user, photo, question, cag=body.cag, max_tokens=requested, limit=effective,
                    include_usage=include_usage, history=talk.history, system=talk.system),
            media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    answer = await state.runner.run(
        lambda cancel: answer_job(state.assistant, user, photo, question, cag=body.cag, max_tokens=requested,
                                  on_piece=None, cancel=cancel, history=talk.history, system=talk.system),
        gate=True, what="answering")
    return {**meta, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(answer, effective)}],
            "usage": _usage(answer), "covip": provenance(answer, user, state)}


def _sse(doc: Any) -> str:
    return f"data: {json.dumps(doc, ensure_ascii=False)}\n\n"


def _chunk(meta: dict, delta: dict, finish: str | None = None, **extra: Any) -> str:
    return _sse({**meta, "object": "chat.completion.chunk", "system_fingerprint": None,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra})


async def _stream(state: ServerState, meta: dict, user: str, photo: Any, question: str, *, cag: bool,
                  max_tokens: int | None, limit: int, include_usage: bool, history: list[tuple[str, str]],
                  system: str | None) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format; an error after the start is an ``error`` event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()

    def on_piece(piece: str) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, ("piece", piece))

    future = state.runner.submit(
        lambda c: answer_job(state.assistant, user, photo, question, cag=cag, max_tokens=max_tokens,
                             on_piece=on_piece, cancel=c, history=history, system=system), cancel, gate=True)
    future.add_done_callback(lambda f: loop.call_soon_threadsafe(queue.put_nowait, ("done", f)))
    deadline = loop.time() + state.config.timeout_s
    finished = False
    try:
        yield _chunk(meta, {"role": "assistant", "content": ""})
        started = False
        while True:
            try:
                kind, value = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                cancel.set()
                yield _sse(error_body(f"answering took longer than the server's time limit of "
                                      f"{state.config.timeout_s:g} s (covip serve --timeout-s); it was stopped",
                                      "timeout_error", "RequestTimeout"))
                finished = True
                return
            if kind == "piece":
                if not started:  # the final answer is stripped; so is the start of the stream
                    value = value.lstrip()
                    started = bool(value)
                if value:
                    yield _chunk(meta, {"content": value})
                continue
            finished = True
            exc = value.exception()
            if exc is not None:
                if isinstance(exc, CovipError):
                    status, type_ = covip_status(exc)
                    yield _sse(error_body(state.redact(str(exc)), type_, type(exc).__name__, status=status))
                elif not isinstance(exc, Cancelled):
                    yield _sse(error_body(f"internal error ({type(exc).__name__})", "server_error"))
                return
            answer = value.result()
            yield _chunk(meta, {}, _finish_reason(answer, limit), covip=provenance(answer, user, state))
            if include_usage:
                yield _sse({**meta, "object": "chat.completion.chunk", "choices": [], "usage": _usage(answer)})
            yield "data: [DONE]\n\n"
            return
    finally:
        if not finished:  # the client went away: stop generating
            cancel.set()
