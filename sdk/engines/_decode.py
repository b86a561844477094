"""The decoding pieces every engine shares: the sampler, the stop-string rule, incremental detokenization and
the chat-template compiler. (The token loop that uses them is :class:`covip.sdk.engines._loop.TokenLoopEngine`;
llama.cpp samples natively with the same chain and shares the stop rule and the template compiler.)"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from covip.sdk.engines.base import GenerationConfig
from covip.sdk.errors import EngineError, InputError

__all__ = ["StopFilter", "Detokenizer", "make_rng", "select_token", "compile_chat_template"]


class StopFilter:
    """Cuts text at the first stop string and holds back any tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """Add decoded text; return what can be shown now."""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        if self.stops:
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self.flush()
        safe = len(self.text) - self._held_back()
        out = self.text[self.emitted: safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out

    def _held_back(self) -> int:
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


class Detokenizer:
    """Token ids -> text, incrementally: each push returns the text the new token settled (decoding the whole
    sequence each time, so multi-token characters and the tokenizer's merges come out right); a trailing
    incomplete UTF-8 sequence waits for the next token."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._done = 0

    def push(self, token: int) -> str:
        self._ids.append(token)
        full = self._tok.decode(self._ids, skip_special_tokens=True)
        safe = len(full.rstrip("\ufffd"))
        piece = full[self._done:safe] if safe > self._done else ""
        self._done = max(self._done, safe)
        return piece

    def flush(self) -> str:
        full = self._tok.decode(self._ids, skip_special_tokens=True)
        piece = full[self._done:]
        self._done = len(full)
        return piece


def make_rng(config: GenerationConfig) -> np.random.Generator | None:
    """The random generator of one sampled call (None when greedy); ``config.seed`` None draws a fresh seed."""
    if config.temperature == 0:
        return None
    return np.random.default_rng(config.seed)


def select_token(logits: np.ndarray, gen_ids: Sequence[int], config: GenerationConfig,
                 rng: np.random.Generator | None, vocab: int) -> int:
    """Greedy or sampled next token: presence penalty on the generated tokens, temperature, top-k, then top-p
    over the renormalized top-k, one draw from ``rng`` (the sampler of the transformers and ONNX engines;
    llama.cpp runs the same chain natively)."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)[:vocab]
    if config.presence_penalty and gen_ids:
        logits = logits.copy()
        logits[np.fromiter(set(gen_ids), dtype=np.int64)] -= config.presence_penalty
    if config.temperature == 0 or rng is None:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / config.temperature
    if config.top_k and config.top_k < scaled.shape[0]:
        index = np.argpartition(-scaled, config.top_k - 1)[: config.top_k]
        index = index[np.argsort(-scaled[index], kind="stable")]  # most likely first
    elif config.top_p < 1.0:
        index = np.argsort(-scaled, kind="stable")
    else:
        index = np.arange(scaled.shape[0])
    values = scaled[index]
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    if config.top_p < 1.0:
        cum = np.cumsum(probs)
        keep = int(np.searchsorted(cum, config.top_p)) + 1  # the smallest set whose mass reaches top_p
        probs, index = probs[:keep], index[:keep]
    cum = np.cumsum(probs)
    u = rng.random() * cum[-1]
    pick = min(int(np.searchsorted(cum, u, side="right")), len(cum) - 1)
    return int(index[pick])


def compile_chat_template(source: str, *, fix: str) -> Any:
    """A Jinja2 template compiled the way transformers' ``apply_chat_template`` compiles it (sandboxed; the
    ``tojson`` filter, ``raise_exception`` and ``strftime_now`` globals, ``{% generation %}`` blocks rendered).
    ``fix`` tells the user what to do when the template cannot be parsed."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(jinja2.ext.Extension):  # {% generation %} ... {% endgeneration %}: render the body
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message: str) -> None:
        raise InputError(f"the chat template rejected the messages: {message}")

    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise EngineError(f"the chat template cannot be parsed ({exc}); {fix}") from exc
