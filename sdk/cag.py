"""Caption-Augmented Generation: caption the photo in the user's context first, then answer with it.

``caption()`` builds the personalized caption s ~ pi(. | x, c, p_s) and caches it in the memory (key:
engine model id, prompt version, photo hash, ids of the context photos; any edit or forget of one of
those memories drops the entry). ``ask()`` continues that chat with the question as the next user turn,
so the caption pass is the answer pass's prefix and an engine with a KV cache does not re-read images.

KV snapshots: right after a caption pass the engine's KV state is snapshotted (:meth:`Engine.snapshot`) into
:class:`KvSnapshots`, an in-memory LRU bounded by ``CagConfig.kv_snapshot_mb`` and keyed like the caption
cache. When a later ``ask()`` finds the caption in the cache, the snapshot is restored before the answer
pass, which then prefills only the end of the caption turn and the question instead of the context images,
the instruction and the caption (the engine's KV may hold anything else by then). A snapshot is used only
while the caption cache holds the caption it was made with: a cache miss for its key drops it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from covip.sdk import prompts
from covip.sdk._config import ConfigMixin
from covip.sdk.context import Context, ContextConfig, ContextItem, assemble
from covip.sdk.engines.base import Engine, EngineState, Generation, GenerationConfig
from covip.sdk.errors import EngineError, InputError
from covip.sdk.imaging import Photo, load_photo

if TYPE_CHECKING:
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["CagConfig", "CaptionResult", "Answer", "CaptionAugmentedGenerator", "KvSnapshots", "context_length"]
_MIB = 1 << 20
PROMPT_OVERHEAD_TOKENS = 64
TURN_OVERHEAD_TOKENS = 12  # the role markers around one earlier (question, answer) exchange
"""Tokens the chat template, the headers and the instruction add around the context, photo and question."""


def context_length(engine: Engine) -> int | None:
    """The engine's context window in tokens (llama.cpp's ``n_ctx``, a transformers model's
    ``max_position_embeddings``), or None when the engine does not say."""
    for attr in ("context_length", "n_ctx"):
        value = getattr(engine, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    config = getattr(getattr(engine, "model", None), "config", None)
    if config is not None:
        text = config.get_text_config() if callable(getattr(config, "get_text_config", None)) else config
        value = getattr(text, "max_position_embeddings", None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@dataclass
class CagConfig(ConfigMixin):
    """Sampling settings of the two passes and the caption-only switch."""

    caption: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(max_new_tokens=512, temperature=0.0),
        metadata={"help": "Caption pass (greedy by default, as the paper's evaluation)."})
    answer: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(max_new_tokens=256, temperature=0.7, top_p=0.8, top_k=20,
                                                 presence_penalty=1.5),
        metadata={"help": "Answer pass (the authors sample at 0.7 / top-p 0.8 / top-k 20 / presence 1.5)."})
    caption_only: bool = field(
        default=False,
        metadata={"help": "Weak devices: context items carry a cached plain caption of their photo instead of "
                  "the image, so only the query image is encoded."})
    kv_snapshot_mb: int = field(
        default=256,
        metadata={"help": "Memory (MiB) for the engine's KV state at the end of recent caption passes, kept in "
                  "RAM (GPU memory for a transformers engine on a GPU), least recently used dropped first. "
                  "A warm ask (caption from the cache) restores it, so the answer pass prefills only the "
                  "question instead of the images, instruction and caption again. 0 disables."})
    layout: str = field(
        default="prefix",
        metadata={"help": "Answer-pass layout. 'prefix' (default, for apps): the caption chat, the caption as the "
                  "assistant's turn, the question, so the answer pass reuses the caption pass's KV cache, images "
                  "included. 'paper': as the paper's evaluation, the captioning instruction moves to a system "
                  "turn and the user turn holds only context and photo; only the start of the prompt is shared, "
                  "so the images are prefilled a second time."})
    prompt_pack: str | None = field(
        default=None,
        metadata={"help": "A prompt pack file (TOML/JSON, covip.sdk.prompts.load_pack) that words the prompts, e.g. "
                  "the text a released checkpoint was trained on; None = covip's own. Its hash is part of the "
                  "caption cache key."})
    photo_max_side: int | None = field(
        default=2048,
        metadata={"help": "Photos shown to the model are decoded at most this many pixels on their longest side "
                  "(JPEGs directly at a reduced scale), which bounds the memory one question costs; the "
                  "model's image processor shrinks them further anyway. None decodes at full size."})

    def __post_init__(self) -> None:
        mb = self.kv_snapshot_mb
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
            raise InputError(f"CagConfig.kv_snapshot_mb must be an integer >= 0 (0 disables), got {mb!r}")
        if self.layout not in ("prefix", "paper"):
            raise InputError(f"CagConfig.layout must be 'prefix' or 'paper', got {self.layout!r}")
        side = self.photo_max_side
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 16):
            raise InputError(f"CagConfig.photo_max_side must be an integer of at least 16 (or None), got {side!r}")


@dataclass(frozen=True)
class CaptionResult:
    caption: str
    context: Context
    cached: bool
    generation: Generation | None
    seconds: float

    @property
    def memories(self) -> tuple[ContextItem, ...]:
        return self.context.items


@dataclass(frozen=True)
class Answer:
    """The answer with everything that explains it: caption, memories used, cache hit, timings."""

    answer: str
    caption: str | None
    context: Context
    caption_cached: bool
    cag: bool
    timings: dict[str, float]
    tokens: dict[str, int]
    history_turns: int = 0  # earlier exchanges the model saw
    history_dropped: int = 0  # the oldest exchanges left out to fit the context window

    @property
    def memories(self) -> tuple[ContextItem, ...]:
        return self.context.items

    def to_dict(self) -> dict[str, Any]:
        return {"answer": self.answer, "caption": self.caption, "cag": self.cag,
                "caption_cached": self.caption_cached, "abstained": self.context.abstained,
                "abstain_reason": self.context.reason or None,
                "memories": [m.to_dict() for m in self.memories], "timings": self.timings, "tokens": self.tokens,
                "history_turns": self.history_turns, "history_dropped": self.history_dropped}


SnapshotKey = tuple[str, str, str, str, tuple[int, ...]]  # user, model id, prompt version, photo sha256, context


class KvSnapshots:
    """Engine KV snapshots of caption passes in memory, least recently used dropped past ``max_bytes``.

    Each entry holds the caption its pass produced; :meth:`get` returns the snapshot only for that same
    caption (a different cached caption drops it). Thread-safe; one store may be shared by several
    generators on the same engine. ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InputError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[SnapshotKey, tuple[str, EngineState]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes the stored snapshots hold (their ``EngineState.nbytes``)."""
        return self._nbytes

    def get(self, key: SnapshotKey, caption: str) -> EngineState | None:
        """The snapshot stored for ``key`` if it was made with ``caption`` (then most recently used)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] != caption:
                self._pop(key)
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: SnapshotKey, caption: str, state: EngineState) -> bool:
        """Store a snapshot (replacing ``key``'s), evicting the least recently used; False if it cannot fit."""
        with self._lock:
            self._pop(key)
            if state.nbytes > self.max_bytes:
                return False
            while self._entries and self._nbytes + state.nbytes > self.max_bytes:
                self._pop(next(iter(self._entries)))
            self._entries[key] = (caption, state)
            self._nbytes += state.nbytes
            return True

    def discard(self, key: SnapshotKey) -> None:
        with self._lock:
            self._pop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def _pop(self, key: SnapshotKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._nbytes -= entry[1].nbytes


class CaptionAugmentedGenerator:
    """Ties a memory, an embedder and an engine together for one user-facing question at a time.

    ``kv_snapshots``: a :class:`KvSnapshots` to use (e.g. shared with another generator on the same
    engine); by default a private one of ``config.kv_snapshot_mb`` MiB. Engines without ``snapshot()`` /
    ``restore()`` simply run without snapshots.
    """

    def __init__(self, memory: Memory, engine: Engine, *, context: ContextConfig | None = None,
                 config: CagConfig | None = None, kv_snapshots: KvSnapshots | None = None) -> None:
        self.memory = memory
        self.engine = engine
        self.context_config = context or ContextConfig()
        self.config = config or CagConfig()
        self.pack = prompts.load_pack(self.config.prompt_pack)
        if kv_snapshots is None:
            kv_snapshots = KvSnapshots(self.config.kv_snapshot_mb * _MIB)
        self.kv_snapshots = kv_snapshots
        self._live: tuple[SnapshotKey, Any] | None = None  # the conversation the engine's KV cache now holds

    # -------------------------------------------------------------- context
    def context_for(self, user: str, photo: Photo) -> Context:
        """Search the user's memory with the photo and fit the context to the budget (never more than the
        model's context window leaves after the photo, the caption and the answer)."""
        embedder = self.memory.embedder
        vec = embedder.embed_images([photo.image])[0]
        image_tokens = None
        if self.config.caption_only:
            image_tokens = 0  # captions are counted as dialogue text below
        config = self.context_config
        window = context_length(self.engine)
        if window is not None:
            room = max(1, window - self._reserved_tokens(cag=True))
            if room < config.token_budget:
                config = dataclasses.replace(config, token_budget=room)
        return assemble(self.memory, user, vec, config, count_tokens=self.engine.count_tokens,
                        model_id=embedder.model_id, image_tokens=image_tokens)

    def _reserved_tokens(self, *, cag: bool) -> int:
        """Tokens a question needs besides its own text and the memories: the photo, the template, the
        caption (CAG) and the answer."""
        return (self.context_config.image_tokens + PROMPT_OVERHEAD_TOKENS + self.config.answer.max_new_tokens
                + (self.config.caption.max_new_tokens if cag else 0))

    def check_question(self, question: str, *, cag: bool = True, context_tokens: int = 0) -> int:
        """The question's token count; InputError (with the numbers) when the prompt it makes cannot fit the
        model's context window. Runs before any other work, so an oversized question costs nothing."""
        if not isinstance(question, str):
            raise InputError(f"the question must be text, not {type(question).__name__}")
        window = context_length(self.engine)
        if window is None:
            return self.engine.count_tokens(question)
        if len(question) > 64 * window:  # no tokenizer packs 64 characters per token: refuse unread
            raise InputError(f"the question is {len(question):,} characters, far more than the model's context "
                             f"of {window:,} tokens holds; shorten the question")
        tokens = self.engine.count_tokens(question)
        reserved = self._reserved_tokens(cag=cag)
        needed = tokens + reserved + context_tokens
        if needed > window:
            memories = f", the memories shown ({context_tokens:,})" if context_tokens else ""
            caption = f", the caption (up to {self.config.caption.max_new_tokens:,})" if cag else ""
            raise InputError(
                f"the question is {tokens:,} tokens; with the photo (~{self.context_config.image_tokens:,}){memories}"
                f"{caption}, the prompt template ({PROMPT_OVERHEAD_TOKENS}) and the answer (up to "
                f"{self.config.answer.max_new_tokens:,}) it needs {needed:,} tokens, more than the model's context "
                f"length of {window:,} tokens; shorten the question to at most "
                f"{max(0, window - reserved - context_tokens):,} tokens")
        return tokens

    def _entries(self, user: str, context: Context) -> list[prompts.ContextEntry]:
        entries = []
        for item in context.items:
            if self.config.caption_only:
                entries.append(prompts.ContextEntry(dialogue=item.dialogue, caption=self._plain_caption(user, item)))
            else:
                entries.append(prompts.ContextEntry(dialogue=item.dialogue, image=self._load(self.memory.read_photo_bytes(item.photo)).image))
        return entries

    def _plain_caption(self, user: str, item: ContextItem) -> str:
        """A non-personal description of a memory photo, made once and cached (caption-only mode)."""
        key = {"model_id": self.engine.model_id,
               "prompt_version": f"{self.pack.tag()}/describe/max{min(96, self.config.caption.max_new_tokens)}",
               "photo_sha256": item.photo.sha256, "context_ids": [item.photo.id]}
        owner = item.photo.owner
        cached = self.memory.cached_caption(owner, **key)
        if cached is not None:
            return cached
        gen = self.engine.generate(prompts.describe_messages(self._load(self.memory.read_photo_bytes(item.photo)).image, pack=self.pack),
                                   GenerationConfig(max_new_tokens=min(96, self.config.caption.max_new_tokens)))
        self.memory.cache_caption(owner, gen.text.strip(), **key)
        return gen.text.strip()

    # -------------------------------------------------------------- passes
    def _load(self, photo: Any) -> Photo:
        """A photo for the model: checked, decoded at most ``photo_max_side`` pixels on its longest side."""
        return load_photo(photo, max_pixels=self.memory.config.max_pixels, max_side=self.config.photo_max_side)

    def caption(self, user: str, photo: Any, *, on_token: Callable[[str], None] | None = None) -> CaptionResult:
        """The personalized caption of ``photo`` for ``user`` (from the cache when nothing changed)."""
        pic = self._load(photo)
        return self._caption(user, pic, on_token)[0]

    def _caption(self, user: str, pic: Photo, on_token: Callable[[str], None] | None,
                 timings: dict[str, float] | None = None, question: str | None = None,
                 fit: Callable[[int], int] | None = None) -> tuple[CaptionResult, SnapshotKey]:
        """The caption and its KV snapshot key; a generated caption's pass is snapshotted at once. With the
        ``question`` that follows, its prompt is checked against the context window before the caption pass
        (``fit(context tokens)`` -> the tokens of the system text and earlier turns that come with it)."""
        t0 = time.perf_counter()
        context = self.context_for(user, pic)
        if question is not None:
            extra = fit(context.tokens) if fit is not None else 0
            self.check_question(question, cag=True, context_tokens=context.tokens + extra)
        key = {"model_id": self.engine.model_id, "prompt_version": self._prompt_version(),
               "photo_sha256": pic.sha256, "context_ids": context.photo_ids}
        skey: SnapshotKey = (user, key["model_id"], key["prompt_version"], pic.sha256,
                             tuple(sorted({int(i) for i in context.photo_ids})))
        cached = self.memory.cached_caption(user, **key)
        if cached is not None:
            log.info("caption cache hit for photo %s", pic.sha256[:12])
            if on_token is not None:
                on_token(cached)
            return CaptionResult(cached, context, True, None, time.perf_counter() - t0), skey
        self.kv_snapshots.discard(skey)  # its caption is gone from the cache (or never was there)
        messages = prompts.caption_messages(self._entries(user, context), pic.image, pack=self.pack)
        gen = self.engine.generate(messages, self.config.caption, on_token=on_token)
        # kept exactly as generated (not stripped): the answer pass re-renders it, and the same text
        # tokenizes back to the same ids, so the engine's KV cache of the caption pass is reused in full
        caption = gen.text
        self._snapshot(skey, caption, timings)  # before anything else runs on the engine
        self.memory.cache_caption(user, caption, **key)
        return CaptionResult(caption, context, False, gen, time.perf_counter() - t0), skey

    def _snapshot(self, skey: SnapshotKey, caption: str, timings: dict[str, float] | None) -> None:
        snapshot = getattr(self.engine, "snapshot", None)
        if self.kv_snapshots.max_bytes <= 0 or not callable(snapshot) or self.config.layout == "paper":
            return  # (the paper layout's answer pass cannot continue the caption pass's state)
        t0 = time.perf_counter()
        try:
            state = snapshot()
        except EngineError as exc:
            log.info("no KV snapshot of the caption pass: %s", exc)
            return
        if not self.kv_snapshots.put(skey, caption, state):
            log.info("KV snapshot of %d bytes exceeds kv_snapshot_mb; not kept", state.nbytes)
        if timings is not None:
            timings["kv_snapshot_s"] = time.perf_counter() - t0

    def _restore(self, skey: SnapshotKey, caption: str, timings: dict[str, float], tokens: dict[str, int]) -> None:
        """Put the caption pass's KV state back into the engine, when a snapshot of it is stored."""
        restore = getattr(self.engine, "restore", None)
        state = self.kv_snapshots.get(skey, caption) if callable(restore) else None
        if state is None:
            return
        t0 = time.perf_counter()
        try:
            restore(state)
        except EngineError as exc:  # e.g. a store shared with another engine instance
            log.info("KV snapshot not restored: %s", exc)
            self.kv_snapshots.discard(skey)
            return
        timings["kv_restore_s"] = time.perf_counter() - t0
        tokens["kv_restored"] = state.n_tokens

    def _prompt_version(self) -> str:
        """Prompt version plus what else shapes the caption (mode, length cap, sampling), for the cache key."""
        cap = self.config.caption
        return (f"{self.pack.tag()}{'/caption-only' if self.config.caption_only else ''}"
                f"/max{cap.max_new_tokens}/t{cap.temperature:g}")

    def _fit_history(self, history: list[prompts.Exchange], system: str | None, question_tokens: int, *, cag: bool,
                     context_tokens: int) -> tuple[list[prompts.Exchange], int]:
        """The newest earlier exchanges that fit the context window after the memories, the photo, the caption,
        the question and the answer (oldest dropped first), and the tokens they take with the system text."""
        window = context_length(self.engine)
        if system and window is not None and len(system) > 64 * window:  # refused unread, like a huge question
            raise InputError(f"the system text is {len(system):,} characters, far more than the model's context "
                             f"of {window:,} tokens holds; shorten it")
        system_tokens = self.engine.count_tokens(system) + TURN_OVERHEAD_TOKENS if system else 0
        if window is None:
            return history, system_tokens + sum(self._turn_tokens(t) for t in history)
        room = (window - self._reserved_tokens(cag=cag) - context_tokens - system_tokens
                - question_tokens)
        kept: list[prompts.Exchange] = []
        used = chars = 0
        for turn in reversed(history):
            chars += len(turn[0]) + len(turn[1])
            if chars > 64 * window:  # no tokenizer packs 64 characters per token: cannot fit, left uncounted
                break
            need = self._turn_tokens(turn)
            if used + need > room:
                break
            kept.append(turn)
            used += need
        kept.reverse()
        return kept, system_tokens + used

    def _turn_tokens(self, turn: prompts.Exchange) -> int:
        return self.engine.count_tokens(turn[0]) + self.engine.count_tokens(turn[1]) + TURN_OVERHEAD_TOKENS

    def ask(self, user: str, photo: Any, question: str, *, cag: bool = True,
            on_token: Callable[[str], None] | None = None, history: Sequence[prompts.Exchange] | None = None,
            system: str | None = None) -> Answer:
        """Answer ``question`` about ``photo`` from the user's memories; ``cag=False`` asks directly.

        ``history``: the earlier (question, answer) exchanges of this conversation about the same photo, oldest
        first; the newest that fit the context window are shown (oldest dropped first; the Answer says how
        many), and a follow-up reuses the engine's KV cache of the previous turn, so it prefills only its new
        tokens. ``system``: the app's system text, shown first. A question whose prompt cannot fit the model's
        context window is refused (InputError with the token counts) before the photo is even read."""
        turns, system = _clean_history(history), _clean_system(system)
        question_tokens = self.check_question(question, cag=cag)
        pic = self._load(photo)
        t0 = time.perf_counter()
        tokens: dict[str, int] = {}
        timings: dict[str, float] = {}
        kept: list[prompts.Exchange] = []

        def fit(context_tokens: int) -> int:
            nonlocal kept
            kept, extra = self._fit_history(turns, system, question_tokens, cag=cag, context_tokens=context_tokens)
            return extra

        skey: SnapshotKey | None = None
        if cag:
            cap, skey = self._caption(user, pic, None, timings, question=question, fit=fit)
            timings["caption_s"] = cap.seconds
            if cap.generation is not None:
                tokens.update(caption_prompt=cap.generation.prompt_tokens,
                              caption_cached=cap.generation.cached_tokens,
                              caption_completion=cap.generation.completion_tokens)
            if self.config.layout == "paper":  # nothing past the system turn matches the caption pass: no restore
                messages = prompts.paper_answer_messages(self._entries(user, cap.context), pic.image, cap.caption,
                                                         question, history=kept, app_system=system, pack=self.pack)
                skey = None
            else:
                messages = prompts.answer_messages(self._entries(user, cap.context), pic.image, cap.caption,
                                                   question, history=kept, system=system, pack=self.pack)
                # after _entries(), which may run describe passes (caption-only mode); a follow-up whose previous
                # turn is still in the engine's cache continues it instead
                if cap.cached and not system and not (kept and self._continues(skey)):
                    self._restore(skey, cap.caption, timings, tokens)
            context, caption, cached = cap.context, cap.caption, cap.cached
        else:
            context = self.context_for(user, pic)
            extra = fit(context.tokens)
            self.check_question(question, cag=cag, context_tokens=context.tokens + extra)
            messages = prompts.direct_messages(self._entries(user, context), pic.image, question, history=kept,
                                               system=system, pack=self.pack)
            caption, cached = None, False
        t1 = time.perf_counter()
        gen = self.engine.generate(messages, self.config.answer, on_token=on_token)
        self._live = (skey, getattr(self.engine, "last", None)) if skey is not None else None
        timings.update(answer_s=time.perf_counter() - t1, total_s=time.perf_counter() - t0,
                       answer_prefill_s=gen.prefill_s, answer_decode_s=gen.decode_s)
        tokens.update(answer_prompt=gen.prompt_tokens, answer_cached=gen.cached_tokens,
                      answer_completion=gen.completion_tokens)
        return Answer(answer=gen.text.strip(), caption=caption.strip() if caption is not None else None,
                      context=context, caption_cached=cached, cag=cag,
                      timings={k: round(v, 4) for k, v in timings.items()}, tokens=tokens,
                      history_turns=len(kept), history_dropped=len(turns) - len(kept))

    def _continues(self, skey: SnapshotKey) -> bool:
        """Whether the engine's KV cache still holds this conversation's previous answer pass (nothing else ran
        on the engine since), which a follow-up extends: restoring the caption snapshot would throw it away."""
        live = self._live
        return live is not None and live[0] == skey and live[1] is not None and getattr(self.engine, "last", None) is live[1]


MAX_HISTORY_TURNS = 1000


def _clean_history(history: Any) -> list[prompts.Exchange]:
    """Earlier exchanges as (question, answer) string pairs; InputError naming the bad one."""
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
        raise InputError(f"history must be a list of (question, answer) pairs, not {type(history).__name__}")
    if len(history) > MAX_HISTORY_TURNS:
        history = history[-MAX_HISTORY_TURNS:]  # more than any context window holds: the oldest go unread
    out: list[prompts.Exchange] = []
    for i, turn in enumerate(history):
        if (not isinstance(turn, (tuple, list)) or len(turn) != 2
                or not all(isinstance(x, str) for x in turn)):
            raise InputError(f"history item {i + 1} must be a (question, answer) pair of strings, got "
                             f"{type(turn).__name__}")
        if not turn[0].strip():
            raise InputError(f"history item {i + 1} has an empty question")
        out.append((turn[0], turn[1]))
    return out


def _clean_system(system: Any) -> str | None:
    if system is None:
        return None
    if not isinstance(system, str):
        raise InputError(f"the system text must be a string, not {type(system).__name__}")
    return system.strip() or None
