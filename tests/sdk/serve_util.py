"""Helpers for the `covip serve` tests: a fast tiny Assistant, drawn photos as bytes and data URLs."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from covip.sdk.demo import DEMO_CONCEPTS, draw_concept

MAX_PIXELS = 20_000  # the demo photos (128x128) fit; a 200x200 photo is "too large" (413)
CONCEPTS = {c.name: c for c in DEMO_CONCEPTS}


def fast_assistant(home: Path, engine: Any, embedder: Any) -> Any:
    """An Assistant on the shared tiny engine: greedy, 4-token caption and answer passes, a small pixel limit."""
    from covip.sdk import Assistant, AssistantConfig, CagConfig, GenerationConfig, Memory, MemoryConfig

    cag = CagConfig(caption=GenerationConfig(max_new_tokens=4), answer=GenerationConfig(max_new_tokens=4))
    memory = Memory(MemoryConfig(home=home, max_pixels=MAX_PIXELS), embedder=embedder)
    return Assistant(AssistantConfig(home=home, model="tiny", cag=cag), memory=memory, engine=engine)


@contextlib.contextmanager
def assistant_in(home: Path, engine: Any, embedder: Any) -> Iterator[Any]:
    """:func:`fast_assistant` in a ``with`` block that closes it and its memory (a module fixture's body)."""
    bot = fast_assistant(home, engine, embedder)
    try:
        yield bot
    finally:
        bot.close()
        bot.memory.close()


def png(name: str = "Bori", variant: int = 0, size: int = 128) -> bytes:
    """A drawn demo photo of concept ``name`` as PNG bytes."""
    buf = io.BytesIO()
    draw_concept(CONCEPTS[name], variant, size=size).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def chat_body(user: str, url: str, question: str = "Who is this?", **extra: Any) -> dict[str, Any]:
    return {"model": "covip", "user": user, **extra, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}]}
