"""Helpers of the llama.cpp engine: native log routing, library loading, file checks, prompt items, stops."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import EngineError

logger = logging.getLogger("covip.sdk.engines.llamacpp")
native_logger = logging.getLogger("covip.sdk.engines.llamacpp.native")

_GGUF_MAGIC = b"GGUF"


# ----------------------------------------------------------------------------- native side


_lib_lock = threading.Lock()
_lib: dict[str, Any] = {}
_native_errors: deque[tuple[int, str]] = deque(maxlen=16)  # (serial number, line)
_log_state: dict[str, Any] = {"line": "", "level": logging.DEBUG, "verbose_engines": 0, "n_errors": 0}
_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}


def _on_native_log(level: int, text: bytes | None, _user_data: Any) -> None:
    """ggml log callback: assemble lines, remember errors, hand them to Python logging."""
    try:
        piece = (text or b"").decode("utf-8", errors="replace")
        if level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line at its level
            if _log_state["line"]:
                _emit_native_line(_log_state["line"], _log_state["level"])
                _log_state["line"] = ""
            _log_state["level"] = _LEVELS.get(level, logging.DEBUG)
        buf = _log_state["line"] + piece
        *lines, rest = buf.split("\n")
        _log_state["line"] = rest
        for line in lines:
            _emit_native_line(line, _log_state["level"])
    except Exception:  # never let an exception cross the C boundary
        pass


def _emit_native_line(line: str, level: int) -> None:
    line = line.rstrip()
    if not line:
        return
    if level >= logging.ERROR:
        _native_errors.append((_log_state["n_errors"], line))
        _log_state["n_errors"] += 1
    native_logger.log(level if _log_state["verbose_engines"] > 0 else logging.DEBUG, "%s", line)


def set_verbose(delta: int) -> None:
    """Count engines that want native messages at their own level (+1 on open, -1 on close)."""
    _log_state["verbose_engines"] = max(0, _log_state["verbose_engines"] + delta)


def native_lib() -> tuple[Any, Any]:
    """(llama_cpp.llama_cpp, llama_cpp.mtmd_cpp), imported once with logging routed and the backend up."""
    with _lib_lock:
        if not _lib:
            try:
                import llama_cpp  # noqa: F401  (its package import installs a stderr logger we replace)
                import llama_cpp.llama_cpp as llama
            except ImportError as exc:
                raise EngineError(
                    f"the llama.cpp engine needs the Python package llama-cpp-python, which cannot be "
                    f"imported ({exc}); install it with: pip install llama-cpp-python"
                ) from exc
            try:
                import llama_cpp.mtmd_cpp as mtmd
            except Exception as exc:  # a build without libmtmd: text-only GGUFs still work
                logger.debug("libmtmd is not available: %s", exc)
                mtmd = None
            callback = llama.llama_log_callback(_on_native_log)
            llama.llama_log_set(callback, ctypes.c_void_p(0))
            if mtmd is not None:
                mtmd.mtmd_log_set(callback, ctypes.c_void_p(0))
                mtmd.mtmd_helper_log_set(callback, ctypes.c_void_p(0))
            llama.llama_backend_init()
            _lib.update(llama=llama, mtmd=mtmd, callback=callback)  # the callback must stay alive
        return _lib["llama"], _lib["mtmd"]


def error_mark() -> int:
    """A mark to pass to :func:`last_native_error` later."""
    return int(_log_state["n_errors"])


def last_native_error(since: int) -> str:
    """The (last few) native error lines logged after ``since`` = an earlier :func:`error_mark`, joined."""
    lines = [line for n, line in list(_native_errors) if n >= since]
    return "; ".join(lines[-4:])


def _check_gguf(path: Path, what: str) -> Path:
    """Fail early and clearly for a missing, unreadable or non-GGUF file."""
    if not path.exists():
        raise EngineError(f"{what} '{path}' does not exist; check the path (it is relative to {Path.cwd()})")
    if path.is_dir():
        raise EngineError(f"{what} '{path}' is a directory; pass the .gguf file inside it")
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise EngineError(f"{what} '{path}' cannot be read ({exc})") from exc
    if head != _GGUF_MAGIC:
        raise EngineError(
            f"{what} '{path}' is not a GGUF file (it starts with {head!r}, not b'GGUF'); convert the model "
            "with llama.cpp's convert_hf_to_gguf.py or `covip export`"
        )
    return path


# ----------------------------------------------------------------------------- prompt items


@dataclass
class Media:
    """One image chunk of a prompt: compared by key, counted in tokens, advancing ``n_pos`` positions."""

    key: tuple[str, int]
    n_tokens: int
    n_pos: int = field(compare=False)
    chunk_index: int = field(compare=False)


_Item = int | Media  # a text token id, or a whole image chunk


def item_tokens(item: _Item) -> int:
    return item.n_tokens if isinstance(item, Media) else 1


def _item_pos(item: _Item) -> int:
    return item.n_pos if isinstance(item, Media) else 1


def _same(a: _Item, b: _Item) -> bool:
    if isinstance(a, Media) or isinstance(b, Media):
        return isinstance(a, Media) and isinstance(b, Media) and a == b
    return a == b


def make_sampler(llama: Any, vocab: Any, cfg: Any, default_seed: int | None) -> Any:
    """A llama.cpp sampler chain for ``cfg``: greedy, or temperature -> top-k -> top-p -> seeded draw."""
    chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    add = llama.llama_sampler_chain_add
    if cfg.presence_penalty:
        # only generated tokens are accepted into the chain, so only they are penalized (as in vLLM)
        add(chain, llama.llama_sampler_init_penalties(
            llama.llama_vocab_n_tokens(vocab), cfg.max_new_tokens, 1.0, 0.0, float(cfg.presence_penalty)))
    if cfg.temperature == 0:
        add(chain, llama.llama_sampler_init_greedy())
        return chain
    # the order of transformers' logits processors: temperature, top-k, top-p
    add(chain, llama.llama_sampler_init_temp(float(cfg.temperature)))
    if cfg.top_k > 0:
        add(chain, llama.llama_sampler_init_top_k(int(cfg.top_k)))
    if cfg.top_p < 1.0:
        add(chain, llama.llama_sampler_init_top_p(float(cfg.top_p), 1))
    seed = cfg.seed if cfg.seed is not None else default_seed
    seed = 0xFFFFFFFF if seed is None else int(seed) & 0xFFFFFFFF  # LLAMA_DEFAULT_SEED = random
    if seed == 0xFFFFFFFF and (cfg.seed is not None or default_seed is not None):
        seed = 0xFFFFFFFE  # keep an explicit seed deterministic
    add(chain, llama.llama_sampler_init_dist(seed))
    return chain
