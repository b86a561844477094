"""The decoding pieces every engine shares: the sampler, the stop-string rule, incremental detokenization and
the chat-template compiler. (The token loop that uses them is :class:`covip.sdk.engines._loop.TokenLoopEngine`;
llama.cpp samples natively with the same chain and shares the stop rule and the template compiler.)"""

from __future__ import annotations

import json
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np

from covip.sdk.engines.base import GenerationConfig
from covip.sdk.errors import EngineError, InputError

__all__ = ["StopFilter", "Detokenizer", "make_rng", "select_token", "compile_chat_template"]


class StopFilter:
    """Cuts text at the first stop string and holds back any tail that may begin one.

    Only the held-back tail (shorter than the longest stop string) and each new piece are searched: a stop
    string can never start in text already returned, since that text was returned only once no stop string
    could begin in it. So a piece costs the same however long the text before it is."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self._parts: list[str] = []  # the text returned so far
        self._held = ""  # text accepted but not returned yet (it may begin a stop string)
        self.stopped = False

    @property
    def text(self) -> str:
        """All the text accepted so far (cut at the stop string once one was found), held-back tail included."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return (self._parts[0] if self._parts else "") + self._held

    def feed(self, piece: str) -> str:
        """Add decoded text; return what can be shown now."""
        if not self.stops:
            if piece:
                self._parts.append(piece)
            return piece
        buf = self._held + piece
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = buf[: min(hits)]
            self.stopped = True
            return self.flush()
        held = self._held_back(buf)
        out, self._held = (buf[:-held], buf[-held:]) if held else (buf, "")
        if out:
            self._parts.append(out)
        return out

    def flush(self) -> str:
        out, self._held = self._held, ""
        if out:
            self._parts.append(out)
        return out

    def _held_back(self, text: str) -> int:
        for n in range(min(self.longest - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0


_CLEANUP = (" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're")
"""transformers' ``clean_up_tokenization`` replacements (also ``TokenizerAdapter``'s, of ONNX exports)."""
_OPEN = frozenset(p[:k] for p in _CLEANUP for k in range(1, len(p)))  # text ending so may still be rewritten
_OPEN_MAX = max(map(len, _OPEN))
_WINDOW = 16  # tokens the window grows to before it moves (16 ids decode in little more than 2; a move decodes)
_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))  # SentencePiece byte-fallback pieces
_byte_ids_cache: weakref.WeakKeyDictionary[Any, frozenset[int]] = weakref.WeakKeyDictionary()


class Detokenizer:
    """Token ids -> text, incrementally: each push returns the text the new token settled; a trailing
    incomplete UTF-8 sequence (text ending in U+FFFD) waits for the next token, :meth:`flush` returns it.

    The pieces are exactly those of decoding the whole sequence at every token and returning what is new
    (multi-token characters and the tokenizer's merges come out right), at O(1) cost per token instead of
    O(n): each push decodes only a window ``ids[start:]`` and returns the window's text past what it returned
    already (transformers' ``TextIteratorStreamer`` and vLLM's incremental detokenizer work the same way).
    The window grows to a few tokens, then moves on, keeping one settled stretch of tokens before the new
    ones, so decoders that treat the first token apart (SentencePiece's leading-space strip) see the same
    first token in every decode of it. It moves only to a place no later token can reach back across: the
    text before it complete (no U+FFFD pending), at least a few characters long and not ending in what a
    ``clean_up_tokenization`` replacement (`` n't``, `` .``, ...) could still rewrite; not between two
    byte-fallback tokens (``<0xNN>``, decoded as one group); the moved window's text not empty and the end of
    the text decoded so far (exactly the rest of it for a tokenizer that may clean up spaces, whose
    replacements could start at a stripped first space)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._start = 0  # the window is ids[start:]
        self._done = 0  # characters of the window's text returned so far
        self._settled = 0  # the last length of ids at which the window's text was complete and all returned,
        self._settled_len = 0  # the window's text length then,
        self._tail = ""  # and its last characters
        self._byte_ids = _byte_token_ids(tokenizer)
        self._cleanup = _may_clean_up(tokenizer)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        ids = self._ids
        ids.append(token)
        text = self._decode(ids[self._start:])
        safe = len(text.rstrip("\ufffd"))
        done = self._done
        if safe <= done:
            return ""
        self._done = safe
        if safe == len(text):  # complete, and all of it returned: a place the window may start from later
            if len(ids) - self._start > _WINDOW:
                self._move_window(text)
            self._settled, self._settled_len, self._tail = len(ids), self._done, text[-_OPEN_MAX - 1:]
        return text[done:safe]

    def flush(self) -> str:
        text = self._decode(self._ids[self._start:])
        piece = text[self._done:]
        self._done = len(text)
        return piece

    def _move_window(self, text: str) -> None:
        """The window's text is complete and all returned: start the window at the last such place before
        this one if that is safe (see the class doc)."""
        r = self._settled
        if r > self._start and self._movable(r):
            rest = self._decode(self._ids[r:])
            if rest and text.endswith(rest) and (not self._cleanup or self._settled_len + len(rest) == len(text)):
                self._start, self._done = r, len(rest)

    def _movable(self, r: int) -> bool:
        tail = self._tail
        if len(tail) <= _OPEN_MAX or any(tail[-k:] in _OPEN for k in range(1, _OPEN_MAX + 1)):
            return False
        return not self._byte_ids or (self._ids[r - 1] not in self._byte_ids and self._ids[r] not in self._byte_ids)


def _may_clean_up(tokenizer: Any) -> bool:
    """Whether ``decode`` may apply ``clean_up_tokenization`` (covip's ``TokenizerAdapter``, or a transformers
    tokenizer with ``clean_up_tokenization_spaces`` set)."""
    return bool(getattr(tokenizer, "clean_up_spaces", False) or getattr(tokenizer, "clean_up_tokenization_spaces",
                                                                         False))


def _byte_token_ids(tokenizer: Any) -> frozenset[int]:
    """Ids of the tokenizer's byte-fallback pieces ``<0x00>``..``<0xFF>`` (none for byte-level BPE), cached
    per tokenizer."""
    try:
        return _byte_ids_cache[tokenizer]
    except (KeyError, TypeError):
        pass
    token_to_id = getattr(tokenizer, "token_to_id", None)  # tokenizers.Tokenizer, covip's TokenizerAdapter
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)  # transformers: the unknown token's id if absent
    unk = getattr(tokenizer, "unk_token_id", None)

    def lookup(token: str) -> int | None:
        if token_to_id is not None:
            return token_to_id(token)
        i = convert(token) if convert is not None else None
        return None if i == unk else i

    found: frozenset[int] = frozenset()
    if isinstance(lookup("<0x0A>"), int):
        found = frozenset(i for i in map(lookup, _BYTE_TOKENS) if isinstance(i, int))
    try:
        _byte_ids_cache[tokenizer] = found
    except TypeError:  # not weak-referenceable: looked up again by the next Detokenizer
        pass
    return found


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
