"""One interface for every inference back end (transformers, llama.cpp, ONNX).

Messages are the usual chat structure with image parts::

    [{"role": "user", "content": [{"type": "text", "text": "Earlier:"},
                                  {"type": "image", "image": <PIL.Image | path | Photo>},
                                  {"type": "text", "text": "User: ..."}]},
     {"role": "assistant", "content": "a caption"},
     {"role": "user", "content": "a question"}]

Prefix reuse: an engine keeps the KV state of its last call. When the next call's prompt extends the
previous prompt plus its completion (the CAG answer pass continues the caption pass), only the new tokens
are prefilled; :class:`Generation` reports ``cached_tokens`` (reused) and ``prompt_tokens`` (prefilled now).

Snapshots: ``state = engine.snapshot()`` copies that KV state (and the engine's record of which tokens and
images it holds) into an opaque :class:`EngineState`; ``engine.restore(state)`` later puts it back, whatever
ran in between, so the engine behaves exactly as right after the snapshotted call: a call that extends it
prefills only the new tokens and answers what a fresh engine answers. CAG snapshots the end of the caption
pass and restores it when the caption comes from the cache (see :mod:`covip.sdk.cag`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from covip.sdk._config import ConfigMixin
from covip.sdk.errors import EngineError, InputError

__all__ = ["Message", "GenerationConfig", "Generation", "EngineState", "Engine", "check_messages", "iter_images"]

Message = dict[str, Any]


@dataclass
class GenerationConfig(ConfigMixin):
    """Sampling settings for one call (temperature 0 = greedy)."""

    max_new_tokens: int = field(default=256, metadata={"help": "Stop after this many generated tokens."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy decoding; >0 samples."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0 = off)."})
    top_k: int = field(default=0, metadata={"help": "Sample among the k most likely tokens (0 = off)."})
    presence_penalty: float = field(default=0.0, metadata={"help": "Penalty on tokens already generated."})
    seed: int | None = field(default=None, metadata={"help": "Seed for sampling (None = nondeterministic)."})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "Stop when any of these strings appears."})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise InputError("temperature must be >= 0, top_p in (0, 1], top_k >= 0")
        self.stop = tuple(self.stop)


@dataclass
class Generation:
    """What one call produced, with token counts and timings."""

    text: str
    prompt_tokens: int  # tokens prefilled by this call (only the new ones when a prefix was reused)
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens taken from the KV cache of the previous call
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = "stop"  # "stop" (EOS or a stop string) or "length"

    @property
    def total_prompt_tokens(self) -> int:
        return self.prompt_tokens + self.cached_tokens


@dataclass(frozen=True, eq=False)
class EngineState:
    """An engine's KV cache plus its bookkeeping of what the cache holds, as :meth:`Engine.snapshot` took it.

    Opaque: only the engine instance that made it can restore it (another one raises EngineError). It is
    never changed by later calls, so it can be restored any number of times. ``nbytes`` is the memory it
    keeps alive (KV tensors or bytes, plus kept image tensors; on a GPU engine that is GPU memory), for
    callers that bound a collection of states; ``n_tokens`` the prompt tokens the KV cache holds.
    """

    model_id: str
    n_tokens: int
    nbytes: int
    owner: object = field(repr=False)  # a token unique to the engine instance that made it
    data: Any = field(repr=False)  # engine-specific payload


@runtime_checkable
class Engine(Protocol):
    """A chat VLM behind one call. ``meaningless`` is True for random-weight test models."""

    model_id: str
    meaningless: bool

    def generate(self, messages: Sequence[Message], config: GenerationConfig | None = None, *,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        """Generate the assistant's next turn; ``on_token`` receives text pieces as they are decoded."""
        ...

    def stream(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text pieces as they are decoded (the final :class:`Generation` is ``self.last``)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs with this engine's tokenizer (for context budgets)."""
        ...

    def reset(self) -> None:
        """Drop the KV state kept from the last call (the next call prefills everything)."""
        ...

    def snapshot(self) -> EngineState:
        """A copy of the KV state kept from the last call (see :class:`EngineState`)."""
        ...

    def restore(self, state: EngineState) -> None:
        """Replace the KV state with ``state`` (EngineError if another engine made it)."""
        ...

    def close(self) -> None:
        ...


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """Validate the chat structure; raises InputError naming the bad message."""
    if not isinstance(messages, Sequence) or not messages:
        raise InputError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for n, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"message {n} needs role 'system', 'user' or 'assistant'")
        content = msg.get("content")
        if isinstance(content, str):
            out.append(msg)
            continue
        if not isinstance(content, Sequence) or not content:
            raise InputError(f"message {n} content must be text or a non-empty list of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "image" and part.get("image") is not None:
                continue
            raise InputError(f"message {n} has a bad part {part!r:.80}; use {{'type': 'text', 'text': ...}} "
                             "or {'type': 'image', 'image': ...}")
        out.append(msg)
    return out


def state_data(state: Any, owner: object, model_id: str) -> Any:
    """The payload of ``state`` if the engine identified by ``owner`` made it; else EngineError."""
    if not isinstance(state, EngineState):
        raise EngineError(f"restore() needs an EngineState from snapshot(), got {type(state).__name__}")
    if state.owner is not owner:
        where = "an engine of another model" if state.model_id != model_id else "another engine instance"
        raise EngineError(f"this EngineState was made by {where} ({state.model_id}); a state can only be "
                          f"restored on the engine that made it ({model_id})")
    return state.data


def iter_images(messages: Sequence[Message]) -> Iterator[Any]:
    """The image parts' payloads, in prompt order."""
    for msg in messages:
        if isinstance(msg.get("content"), str):
            continue
        for part in msg["content"]:
            if part.get("type") == "image":
                yield part["image"]
