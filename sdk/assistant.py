"""The Assistant facade: memory + embedder + engine + CAG behind a few calls an app makes.

    from covip.sdk import Assistant, AssistantConfig
    with Assistant.open(AssistantConfig(home="~/covip", model="tiny", embedder="tiny")) as bot:
        bot.remember("ana", "bori.jpg", "User: This is Bori at the Han river.", concepts=["Bori"])
        reply = bot.ask("ana", "new.jpg", "Who is this and where did I last see her?")
        print(reply.answer, [m.concepts for m in reply.memories])
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from covip.sdk._config import ConfigMixin
from covip.sdk.cag import Answer, CagConfig, CaptionAugmentedGenerator, CaptionResult
from covip.sdk.config import read_settings, resolve_home
from covip.sdk.context import ContextConfig
from covip.sdk.errors import InputError

if TYPE_CHECKING:
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["AssistantConfig", "Assistant", "TINY_MAX_TOKENS"]

TINY_MAX_TOKENS = 32
"""Default cap on the caption and answer of a random-weight model, which never stops by itself."""


@dataclass
class AssistantConfig(ConfigMixin):
    """Everything an app chooses: where the memory lives, which models, how much context."""

    home: Path | None = field(default=None, metadata={"help": "Memory home (default: $COVIP_HOME or the user "
                                                      "data dir)."})
    model: str | None = field(default=None, metadata={"help": "'tiny', a hub id, a local HF dir, or a GGUF "
                                                      "export dir; None = what `covip init` chose."})
    embedder: str | None = field(default=None, metadata={"help": "open_clip spec ('tiny', 'ViT-B-32/laion2b_"
                                                         "s34b_b79k'); None = what `covip init` chose."})
    context: ContextConfig = field(default_factory=ContextConfig, metadata={"help": "Context assembly."})
    cag: CagConfig = field(default_factory=CagConfig, metadata={"help": "Caption and answer passes."})
    engine_options: dict[str, Any] = field(default_factory=dict, metadata={"help": "Extra engine settings "
                                                                          "(device, dtype, n_ctx, ...)."})
    meaningless_max_tokens: int | None = field(default=TINY_MAX_TOKENS, metadata={"help": (
        "A random-weight model (the offline 'tiny' ones) never stops by itself: its caption and answer are cut "
        "at this many tokens (when the cag config allows more). None = no cap.")})


class Assistant:
    """Personalized photo chat for an app: remember, caption, ask (optionally streaming)."""

    def __init__(self, config: AssistantConfig, *, memory: Memory | None = None, engine: Any = None) -> None:
        self.config = config
        home = resolve_home(config.home)
        settings = read_settings(home)
        self._owns_memory = memory is None
        if memory is None:
            from covip.sdk.memory import Memory, MemoryConfig

            memory = Memory(MemoryConfig(home=home), embedder=config.embedder)
        self.memory = memory
        model = config.model or settings.get("model") or "tiny"
        options = dict(config.engine_options)
        if config.model is None and settings.get("quant") and "quant" not in options:
            options["quant"] = settings["quant"]  # the file `covip init --quant` chose for the home's model
        if engine is None:
            from covip.sdk.engines.factory import make_engine

            engine = make_engine(model, **options)
            self._owns_engine = True
        else:
            self._owns_engine = False
        self.engine = engine
        cag = config.cag
        cap = config.meaningless_max_tokens
        if cap and getattr(engine, "meaningless", False):  # one default for the API, the CLI and the server
            cag = dataclasses.replace(
                cag, caption=dataclasses.replace(cag.caption, max_new_tokens=min(cag.caption.max_new_tokens, cap)),
                answer=dataclasses.replace(cag.answer, max_new_tokens=min(cag.answer.max_new_tokens, cap)))
        self.cag = CaptionAugmentedGenerator(self.memory, engine, context=config.context, config=cag)
        self._lock = threading.Lock()  # one model instance: one generation at a time

    @classmethod
    def open(cls, config: AssistantConfig | None = None, **overrides: Any) -> Assistant:
        """Open with a config (keyword overrides win, e.g. ``Assistant.open(home=..., model="tiny")``); the
        caller's config is left as it was (the overrides go into a copy)."""
        config = config or AssistantConfig()
        known = {f.name for f in dataclasses.fields(config)}
        bad = sorted(set(overrides) - known)
        if bad:
            raise InputError(f"unknown AssistantConfig field(s) {bad}; known: {sorted(known)}")
        if "home" in overrides and overrides["home"] is not None:
            overrides["home"] = Path(overrides["home"]).expanduser()
        return cls(dataclasses.replace(config, **overrides) if overrides else config)

    def __enter__(self) -> Assistant:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_engine and hasattr(self.engine, "close"):
            self.engine.close()
        if self._owns_memory:
            self.memory.close()

    @property
    def meaningless(self) -> bool:
        """True when the model or the embedder has random weights (answers/similarities mean nothing)."""
        return bool(getattr(self.engine, "meaningless", False) or getattr(self.memory.embedder, "meaningless", False))

    def remember(self, user: str, photo: Any, dialogue: Any = None, concepts: Any = (), **kw: Any) -> Any:
        """Store a photo with its dialogue (see :meth:`Memory.remember`)."""
        return self.memory.remember(user, photo, dialogue, concepts, **kw)

    def caption(self, user: str, photo: Any) -> CaptionResult:
        """The personalized caption of a photo (cached)."""
        with self._lock:
            return self.cag.caption(user, photo)

    def ask(self, user: str, photo: Any, question: str, *, cag: bool = True, history: Any = None,
            system: str | None = None) -> Answer:
        """Answer a question about a photo from the user's memories (CAG unless ``cag=False``); ``history``:
        the conversation's earlier (question, answer) pairs about this photo, ``system``: the app's system
        text (see :meth:`CaptionAugmentedGenerator.ask`)."""
        with self._lock:
            return self.cag.ask(user, photo, question, cag=cag, history=history, system=system)

    def ask_stream(self, user: str, photo: Any, question: str, *, cag: bool = True, history: Any = None,
                   system: str | None = None) -> Iterator[str | Answer]:
        """Yield answer text pieces as they are decoded, then the final :class:`Answer` (for chat UIs)."""
        pieces: queue.Queue = queue.Queue()
        done = object()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with self._lock:
                    result["answer"] = self.cag.ask(user, photo, question, cag=cag, on_token=pieces.put,
                                                   history=history, system=system)
            except BaseException as exc:  # handed to the consumer below
                result["error"] = exc
            finally:
                pieces.put(done)

        worker = threading.Thread(target=run, name="covip-answer", daemon=True)
        worker.start()
        while (piece := pieces.get()) is not done:
            yield piece
        worker.join()
        if "error" in result:
            raise result["error"]
        yield result["answer"]

