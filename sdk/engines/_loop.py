"""The one engine shell (transformers, ONNX Runtime, llama.cpp): the public calls, one-call-at-a-time
locking, stream ownership, cache reset on failure, the close protocol, the snapshot/restore skeleton and the
token loop. Back ends implement only hooks: ``_run_locked`` (usually prefill + :meth:`~TokenLoopEngine._token_loop`
with their prefill/step), ``_tokenize``, ``_reset_cache``, ``_capture``/``_install`` and ``_release``.

Close protocol (the same for every engine): ``close()`` is idempotent. Called from another thread while a
call runs, it waits for that call to end, then frees the model. Called from the running call's own thread
(an ``on_token`` callback, or between pieces of an open ``stream()``), it cannot wait for a lock its own call
holds: it marks the engine closed, the call in progress stops with :class:`EngineError` at its next token, and
the resources are freed as that call unwinds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from covip.sdk.engines._decode import Detokenizer, StopFilter, make_rng, select_token
from covip.sdk.engines.base import (
    EngineState,
    Generation,
    GenerationConfig,
    Message,
    check_messages,
    state_data,
)
from covip.sdk.errors import EngineError, InputError

logger = logging.getLogger(__name__)

__all__ = ["TokenLoopEngine", "common_prefix"]


class TokenLoopEngine:
    """Engine shell: subclasses call :meth:`_init_shell` in ``__init__``, set ``model_id`` (and ``tokenizer``,
    ``_vocab``, ``_eos`` when they use :meth:`_token_loop`) and implement the hooks (see the module doc)."""

    model_id: str
    tokenizer: Any
    last: Generation | None
    _lock: threading.Lock
    _owner: int | None
    _closed: bool
    _ids: list[int]

    def _init_shell(self) -> None:
        """The shell's own state: the call lock, the stream owner, the snapshot owner token, closed, last."""
        self._lock = threading.Lock()
        self._owner = None
        self._state_owner = object()  # identifies the EngineStates this instance made
        self._closed = False
        self._live_text = True  # whether the running call's caller takes text piece by piece (set per call)
        self.last = None

    def _run_locked(self, msgs: list[Message], config: GenerationConfig) -> Iterator[str]:
        raise NotImplementedError

    def _capture(self) -> tuple[Any, int, int]:
        """(a private copy of the KV state and its bookkeeping, tokens it holds, bytes it takes); lock held."""
        raise NotImplementedError

    def _install(self, data: Any) -> None:
        """Make the engine hold ``data`` from :meth:`_capture` (copying what later calls would mutate)."""
        raise NotImplementedError

    def _tokenize(self, msgs: list[Message]) -> Any:
        raise NotImplementedError

    def _reset_cache(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the model, sessions and KV cache (called once, with the lock held, by the close protocol)."""
        raise NotImplementedError

    def _after_run(self) -> None:
        """Called with the lock held after every call: frees the resources of an engine closed mid-call."""
        if self._closed:
            self._release_once()

    def _release_once(self) -> None:
        if not getattr(self, "_released", False):
            self._released = True
            self._release()

    # ------------------------------------------------------------------ public API
    def generate(self, messages: Sequence[Message], config: GenerationConfig | None = None, *,
                 on_token: Callable[[str], None] | None = None) -> Generation:
        """Generate the assistant's next turn; ``on_token`` receives text pieces as they are decoded (without
        it, and without stop strings, the text is detokenized once at the end: the same text, less work per
        token)."""
        pieces = self._run(messages, config, live=on_token is not None)
        try:
            for piece in pieces:
                if on_token is not None:
                    on_token(piece)
        finally:
            pieces.close()  # also when on_token raised: releases the engine at once
        assert self.last is not None
        return self.last

    def stream(self, messages: Sequence[Message], config: GenerationConfig | None = None) -> Iterator[str]:
        """Yield text pieces as they are decoded (the final :class:`Generation` is ``self.last``).

        The engine is busy until the iterator is exhausted or closed; a stream left open blocks other
        threads' calls, and the same thread's next call raises EngineError.
        """
        yield from self._run(messages, config)

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs with this model's tokenizer (no special tokens added)."""
        self._check_open()
        if not isinstance(text, str):
            raise InputError(f"count_tokens needs a string, got {type(text).__name__}")
        return len(self.tokenizer.encode(text, add_special_tokens=False)) if text else 0

    def prompt_token_ids(self, messages: Sequence[Message]) -> list[int]:
        """The token ids a call with ``messages`` would put in front of its answer (the full prompt)."""
        self._check_open()
        return list(self._tokenize(check_messages(messages)).ids)

    @property
    def cached_token_ids(self) -> list[int]:
        """The token ids whose keys/values the engine holds for reuse by the next call."""
        return list(self._ids)

    def snapshot(self) -> EngineState:
        """A copy of the KV state kept from the last call (tokens, photos, positions), for :meth:`restore`.
        Raises EngineError while this thread is consuming a :meth:`stream`."""
        self._check_open()
        self._check_not_streaming("snapshot()")
        with self._lock:
            self._check_open()
            data, n_tokens, nbytes = self._capture()
            return EngineState(model_id=self.model_id, n_tokens=n_tokens, nbytes=nbytes, owner=self._state_owner,
                               data=data)

    def restore(self, state: EngineState) -> None:
        """Make the engine hold ``state`` (from this engine's :meth:`snapshot`), as right after that call: the
        next call reuses its longest common prefix with the restored tokens. EngineError for a state another
        engine made."""
        self._check_open()
        data = state_data(state, self._state_owner, self.model_id)
        self._check_not_streaming("restore()")
        with self._lock:
            self._check_open()
            self._install(data)

    def reset(self) -> None:
        """Forget the KV cache of the last call (the next call prefills its whole prompt)."""
        self._check_not_streaming("reset()")
        with self._lock:
            self._check_open()
            self._reset_cache()

    def __enter__(self) -> Any:
        """Use the engine in a ``with`` block that closes it."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the engine at the end of a ``with`` block."""
        self.close()

    def close(self) -> None:
        """Release the model and the KV cache (idempotent; see the module doc for calls in progress)."""
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "_released", False):
            return
        if getattr(self, "_owner", None) == threading.get_ident():  # from on_token, or inside an open stream
            self._closed = True  # the call in progress stops with EngineError and frees the resources
            return
        with lock:
            self._closed = True
            self._release_once()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass

    # ------------------------------------------------------------------ the token loop
    _vocab: int
    _eos: set[int] | frozenset[int]

    def _token_loop(self, config: GenerationConfig, *, t0: float, n_prompt: int, reuse: int,
                    prefill: Callable[[], Any], step: Callable[[int], Any],
                    to_numpy: Callable[[Any], Any] = lambda x: x,
                    argmax: Callable[[Any], int] | None = None) -> Iterator[str]:
        """The token loop every back end runs: ``prefill()`` (the prompt's uncached tokens -> last logits), then
        pick a token (:func:`~covip.sdk.engines._decode.select_token`), stop at EOS, a stop string or the
        budget, detokenize, and ``step(token)`` for the next logits. ``argmax`` (optional) picks a greedy token
        where the logits live (e.g. on the GPU), so plain greedy decoding never copies them to the host.
        Sets :attr:`last` however it ends.

        A call whose caller takes the text only at the end (``generate`` without ``on_token``) and has no stop
        strings detokenizes its tokens once the loop is over, in one pass: the same pieces, joined, without
        per-token Python work between the model's steps (where each piece would run with caches the step just
        evicted)."""
        gen_ids: list[int] = []
        detok, stops = Detokenizer(self.tokenizer), StopFilter(config.stop)
        live = self._live_text or bool(stops.stops)
        n_text, texted = 0, live  # generated tokens that are text (all but an EOS); whether detok has them
        finish, prefill_s, decode_start = "cancelled", 0.0, None
        plain_greedy = argmax is not None and config.temperature == 0 and not config.presence_penalty
        try:
            logits = prefill()
            prefill_s = time.perf_counter() - t0
            rng = make_rng(config)
            decode_start = time.perf_counter()
            while True:
                token = argmax(logits) if plain_greedy else select_token(to_numpy(logits), gen_ids, config, rng,
                                                                         self._vocab)
                gen_ids.append(token)
                if token in self._eos:
                    finish = "stop"
                    break
                n_text += 1
                if live:
                    piece = stops.feed(detok.push(token))
                    if piece:
                        yield piece
                    if stops.stopped:
                        finish = "stop"
                        break
                if len(gen_ids) >= config.max_new_tokens:
                    finish = "length"
                    break
                logits = step(token)
            if not stops.stopped:
                tail, texted = self._text_of(detok, stops, [] if live else gen_ids[:n_text]), True
                if tail:
                    yield tail
        finally:
            if decode_start is None:
                prefill_s, decode_s = time.perf_counter() - t0, 0.0
            else:
                decode_s = time.perf_counter() - decode_start
            if not texted:  # not live, and it ended early (an error): the text of the tokens so far, as live
                stops.feed("".join([detok.push(t) for t in gen_ids[:n_text]]))
            self.last = Generation(text=stops.text, prompt_tokens=n_prompt - reuse, completion_tokens=len(gen_ids),
                                   cached_tokens=reuse, prefill_s=prefill_s, decode_s=decode_s, finish_reason=finish)
        logger.debug("generated %d tokens (%s); prompt %d (%d cached); prefill %.3f s, decode %.3f s",
                     len(gen_ids), finish, n_prompt, reuse, prefill_s, decode_s)

    @staticmethod
    def _text_of(detok: Detokenizer, stops: StopFilter, ids: list[int]) -> str:
        """Push ``ids`` (the tokens of a call that is not live), then flush: the text not returned yet."""
        pending = "".join([detok.push(t) for t in ids])
        return stops.feed(pending + detok.flush()) + stops.flush()

    # ------------------------------------------------------------------ guards
    def _run(self, messages: Sequence[Message], config: GenerationConfig | None, *,
             live: bool = True) -> Iterator[str]:
        """Check the call, then return the guarded token loop (bad input fails here, before any work).
        ``live``: the caller wants the text piece by piece as it is decoded (else in one piece at the end)."""
        self._check_open()
        config = config or GenerationConfig()
        if not isinstance(config, GenerationConfig):
            raise InputError(f"config must be a GenerationConfig, got {type(config).__name__}")
        return self._guarded(check_messages(messages), config, live)

    def _guarded(self, msgs: list[Message], config: GenerationConfig, live: bool = True) -> Iterator[str]:
        me = threading.get_ident()
        if self._owner == me:
            raise EngineError("this thread is still consuming a stream() of this engine; finish or close it "
                              "before starting another call")
        with self._lock:
            self._check_open()
            self._owner = me
            self._live_text = live
            try:
                for piece in self._run_locked(msgs, config):
                    yield piece
                    if self._closed:
                        raise EngineError(f"engine {self.model_id} was closed during generation")
            except (GeneratorExit, InputError):  # a stream closed early (the cache holds exactly the tokens
                raise  # run so far), or bad input caught before the cache was touched
            except BaseException:
                self._reset_cache()  # the cache may hold a half-written step: never reuse it
                raise
            finally:
                self._owner = None
                self._after_run()

    def _check_not_streaming(self, what: str) -> None:
        if self._owner == threading.get_ident():
            raise EngineError(f"this thread is still consuming a stream() of this engine; finish or close it "
                              f"before {what}")

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"engine {getattr(self, 'model_id', '')} is closed; build a new {type(self).__name__}")


def common_prefix(old_ids: Sequence[int], old_spans: Sequence[tuple[int, int, str]], new_ids: Sequence[int],
                  new_spans: Sequence[tuple[int, int, str]]) -> int:
    """How many leading tokens of a new prompt a KV cache holding ``old_ids`` can serve: the common token
    prefix, at least one token short of the new prompt (its logits are needed), never ending inside an
    image, and never across an image span holding another photo (spans are (start, end, photo key))."""
    limit = min(len(old_ids), len(new_ids) - 1)
    n = 0
    while n < limit and old_ids[n] == new_ids[n]:
        n += 1
    cached_keys = {start: key for start, _, key in old_spans}
    for start, end, key in new_spans:
        if start >= n:
            break
        if end > n or cached_keys.get(start) != key:
            return start
    return n
