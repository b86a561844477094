"""The llama.cpp engine: a GGUF text model, optionally with an mmproj vision projector (libmtmd).

Drives llama-cpp-python's low-level bindings (``llama_cpp.llama_cpp`` and ``llama_cpp.mtmd_cpp``) instead of
its chat handlers, because those clear the KV cache on every call. This engine keeps the cache and reuses
it across calls (see :mod:`covip.sdk.engines.base`):

* The chat is rendered with the GGUF's own chat template (Jinja2), each image part replaced by the
  libmtmd media marker, then tokenized into a sequence of *items*: text tokens and whole image chunks
  (keyed by a hash of the pixels).
* The engine remembers the items whose keys and values sit in the cache after a call: the prompt plus
  every generated token that was fed back. A new call keeps the longest common prefix of the two item
  sequences (token by token; an image is kept only whole), removes the rest with
  ``llama_memory_seq_rm`` and prefills only what follows. The CAG answer pass, whose prompt is the caption
  pass's prompt + the caption + a new user turn, therefore re-reads neither the images nor the caption.
* ``snapshot()`` copies sequence 0 of the KV cache out with ``llama_state_seq_get_data`` (cells, positions,
  M-RoPE extras, keys and values) into a private buffer, with the item list and positions; ``restore()``
  clears the cache, loads that buffer back with ``llama_state_seq_set_data`` and takes the item list, so a
  later call reuses the restored prefix as it would have right after the snapshotted call.
* Where the template renders the end of the assistant turn differently from what was generated (the
  end-of-turn token is sampled but never fed back; a re-tokenized caption may split differently), the
  prefix simply ends there and the difference is prefilled, so the result is always the same as a run
  on an empty cache. When call 1's text tokenizes back to the ids it was generated as, call 2 has
  ``cached_tokens == call1.total_prompt_tokens + call1.completion_tokens - 1`` (the last sampled token,
  e.g. the end-of-turn token, which counts as generated, is never fed back).

Native llama.cpp / libmtmd logs go to the Python logger ``covip.sdk.engines.llamacpp.native`` (at DEBUG
unless an engine was opened with ``verbose=True``), and the last native error is quoted in the
:class:`~covip.sdk.errors.EngineError` raised when a file cannot be loaded.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk._config import ConfigMixin
from covip.sdk.engines._decode import StopFilter, compile_chat_template
from covip.sdk.engines._llamacpp_util import (
    Media,
    _check_gguf,
    _Item,
    _item_pos,
    _same,
    error_mark,
    item_tokens,
    last_native_error,
    make_sampler,
    native_lib,
    set_verbose,
)
from covip.sdk.engines._loop import TokenLoopEngine
from covip.sdk.engines.base import (
    Generation,
    GenerationConfig,
    Message,
)
from covip.sdk.errors import EngineError, InputError
from covip.sdk.export_manifest import MAX_IMAGE_TOKENS

__all__ = ["LlamaCppEngineConfig", "LlamaCppEngine"]

logger = logging.getLogger(__name__)
_TINY_MARKER = "covip_tiny.json"  # written by covip.sdk.models.build_tiny_vlm into a tiny model's folder
_ALL_LAYERS = 0x7FFFFFFF
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class LlamaCppEngineConfig(ConfigMixin):
    """Settings of a :class:`LlamaCppEngine` (a GGUF model, optionally with its mmproj projector)."""

    model_path: str | os.PathLike[str] = field(
        metadata={"help": "The GGUF text model (e.g. model-f16.gguf)."})
    mmproj_path: str | os.PathLike[str] | None = field(
        default=None,
        metadata={"help": "The mmproj GGUF (vision projector) of the same model; None = text-only engine "
                  "(caption-only memories, judges)."})
    n_ctx: int = field(default=8192, metadata={"help": "Context window in tokens (KV cache size)."})
    n_batch: int = field(default=512, metadata={"help": "Tokens per prefill batch (and micro-batch)."})
    n_threads: int | None = field(
        default=None, metadata={"help": "CPU threads; None = half the CPU cores (at least 1)."})
    n_gpu_layers: int = field(
        default=0, metadata={"help": "Layers offloaded to a GPU backend (0 = CPU only, -1 = all)."})
    chat_template: str | None = field(
        default=None, metadata={"help": "Jinja2 chat template; None = the GGUF's own template."})
    seed: int | None = field(
        default=None,
        metadata={"help": "Sampling seed used when a call gives none (None = a fresh random seed)."})
    model_id: str | None = field(
        default=None, metadata={"help": "Name reported as model_id; None = the GGUF's general.name."})
    meaningless: bool | None = field(
        default=None,
        metadata={"help": "Mark outputs as meaningless (random weights); None = detect the covip tiny "
                  "marker next to the GGUF or 'covip-tiny' in its general.name."})
    verbose: bool = field(
        default=False, metadata={"help": "Log llama.cpp's native messages at their own level (else DEBUG)."})
    image_min_tokens: int | None = field(
        default=None,
        metadata={"help": "Fewest merged image tokens a photo becomes (libmtmd's image_min_tokens); None = "
                  "libmtmd's default for the projector (8 for Qwen-VL). Set it to the model's processor "
                  "min_pixels / (patch x merge)^2 so small photos keep the layout the model was trained on; "
                  "`covip export gguf` records it and an export directory sets it."})
    image_max_tokens: int | None = field(
        default=None,
        metadata={"help": "Most merged image tokens a photo becomes (libmtmd's image_max_tokens); None = "
                  "libmtmd's default (4096 for Qwen-VL)."})

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, (str, os.PathLike)) or not os.fspath(self.model_path):
            raise InputError("model_path must be the path of a GGUF file")
        if self.mmproj_path is not None and (
            not isinstance(self.mmproj_path, (str, os.PathLike)) or not os.fspath(self.mmproj_path)
        ):
            raise InputError("mmproj_path must be the path of an mmproj GGUF file or None")
        for name, low in (("n_ctx", 16), ("n_batch", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.n_threads is not None and (
            isinstance(self.n_threads, bool) or not isinstance(self.n_threads, int) or self.n_threads < 1
        ):
            raise InputError(f"n_threads must be a positive integer or None, got {self.n_threads!r}")
        if isinstance(self.n_gpu_layers, bool) or not isinstance(self.n_gpu_layers, int) or self.n_gpu_layers < -1:
            raise InputError(f"n_gpu_layers must be -1 (all), 0 (CPU) or a layer count, got {self.n_gpu_layers!r}")
        if self.chat_template is not None and (not isinstance(self.chat_template, str) or not self.chat_template):
            raise InputError("chat_template must be a non-empty Jinja2 template string or None")
        for name in ("image_min_tokens", "image_max_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_IMAGE_TOKENS):
                raise InputError(f"{name} must be an integer from 1 to {MAX_IMAGE_TOKENS:,} or None, got {value!r}")
        if self.image_min_tokens and self.image_max_tokens and self.image_min_tokens > self.image_max_tokens:
            raise InputError(f"image_min_tokens ({self.image_min_tokens}) must not exceed image_max_tokens "
                             f"({self.image_max_tokens})")


@dataclass(frozen=True)
class _Snapshot:
    """What :meth:`LlamaCppEngine.snapshot` keeps: sequence 0's state bytes and the items they hold."""

    buffer: Any  # ctypes c_uint8 array written by llama_state_seq_get_data (None = empty cache)
    size: int
    items: tuple[_Item, ...]
    pos: tuple[int, ...]


# ----------------------------------------------------------------------------- the engine


class LlamaCppEngine(TokenLoopEngine):
    """A GGUF chat model (plus optional mmproj) behind :class:`~covip.sdk.engines.base.Engine`.

    ``LlamaCppEngine(LlamaCppEngineConfig(model_path=..., mmproj_path=...))`` or
    ``LlamaCppEngine("model.gguf")``. Calls from several threads are serialized by the shared engine shell
    (:class:`~covip.sdk.engines._loop.TokenLoopEngine`), which also owns the close protocol. Close it (or use
    ``with``) to free the native model deterministically.
    """

    def __init__(self, config: LlamaCppEngineConfig | str | os.PathLike[str], **overrides: Any) -> None:
        if isinstance(config, (str, os.PathLike)):
            config = LlamaCppEngineConfig(model_path=config)
        if not isinstance(config, LlamaCppEngineConfig):
            raise InputError("LlamaCppEngine needs a LlamaCppEngineConfig or the path of a GGUF file")
        self.config = config = config.with_overrides(**overrides)
        self._init_shell()
        self._model = self._ctx = self._mctx = self._batch = None
        self._batch_cap = 0
        self._verbose_counted = False
        self._cache_items: list[_Item] = []  # what the KV cache of sequence 0 holds, in order
        self._cache_pos: list[int] = []  # the position of each cached item

        model_path = _check_gguf(Path(os.fspath(config.model_path)).expanduser(), "model file")
        mmproj_path = None
        if config.mmproj_path is not None:
            mmproj_path = _check_gguf(Path(os.fspath(config.mmproj_path)).expanduser(), "mmproj file")
        self.model_path, self.mmproj_path = model_path, mmproj_path
        llama, mtmd = native_lib()
        self._llama, self._mtmd = llama, mtmd
        if config.verbose:
            set_verbose(+1)
            self._verbose_counted = True
        try:
            self._load(model_path, mmproj_path)
        except BaseException:
            self.close()
            raise

    # -- loading

    def _load(self, model_path: Path, mmproj_path: Path | None) -> None:
        llama, mtmd, cfg = self._llama, self._mtmd, self.config
        mark = error_mark()
        mparams = llama.llama_model_default_params()
        mparams.n_gpu_layers = _ALL_LAYERS if cfg.n_gpu_layers == -1 else cfg.n_gpu_layers
        self._model = llama.llama_model_load_from_file(str(model_path).encode("utf-8"), mparams)
        if not self._model:
            self._model = None
            raise EngineError(
                f"llama.cpp cannot load the model file '{model_path}' "
                f"({last_native_error(mark) or 'no reason given'}); the file may be truncated, "
                "corrupt, an mmproj file, or a model architecture this llama-cpp-python does not know"
            )
        self._vocab = llama.llama_model_get_vocab(self._model)
        n_threads = cfg.n_threads or max(1, (os.cpu_count() or 2) // 2)
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = cfg.n_ctx
        cparams.n_batch = cparams.n_ubatch = min(cfg.n_batch, cfg.n_ctx)
        cparams.n_seq_max = 1
        cparams.n_threads = cparams.n_threads_batch = n_threads
        cparams.no_perf = True
        self._ctx = llama.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            self._ctx = None
            raise EngineError(
                f"llama.cpp cannot create a context of {cfg.n_ctx} tokens for '{model_path}' "
                f"({last_native_error(mark) or 'no reason given'}); try a smaller n_ctx"
            )
        self._mem = llama.llama_get_memory(self._ctx)
        self._n_ctx = int(llama.llama_n_ctx(self._ctx))
        # what the context accepts per llama_decode (llama.cpp may round n_ctx up, never n_batch)
        self._n_batch = max(1, min(int(llama.llama_n_batch(self._ctx)), int(llama.llama_n_ubatch(self._ctx))))
        self._batch = llama.llama_batch_init(self._n_batch, 0, 1)
        self._batch_cap = self._n_batch

        if mmproj_path is not None:
            if mtmd is None:
                raise EngineError("this llama-cpp-python build has no libmtmd, so it cannot use an mmproj file")
            mparams_v = mtmd.mtmd_context_params_default()
            mparams_v.use_gpu = cfg.n_gpu_layers != 0
            mparams_v.print_timings = False
            mparams_v.n_threads = n_threads
            mparams_v.warmup = False
            # libmtmd's own limits for Qwen-VL (8..4096 merged tokens) differ from the HF processor the model
            # was trained with; the export's recorded limits keep photos at the trained layout
            if cfg.image_min_tokens is not None:
                mparams_v.image_min_tokens = cfg.image_min_tokens
            if cfg.image_max_tokens is not None:
                mparams_v.image_max_tokens = cfg.image_max_tokens
            self._mctx = mtmd.mtmd_init_from_file(str(mmproj_path).encode("utf-8"), self._model, mparams_v)
            if not self._mctx:
                self._mctx = None
                raise EngineError(
                    f"libmtmd cannot load the mmproj file '{mmproj_path}' for the model '{model_path}' "
                    f"({last_native_error(mark) or 'no reason given'}); the mmproj must be the projector "
                    "converted from the same model (convert_hf_to_gguf.py --mmproj)"
                )
            if not mtmd.mtmd_support_vision(self._mctx):
                raise EngineError(f"the mmproj file '{mmproj_path}' has no vision encoder (audio only?)")
            self._marker = mtmd.mtmd_default_marker().decode("utf-8")
        else:
            self._marker = ""

        self.metadata = self._read_metadata()
        name = self.metadata.get("general.name") or model_path.stem
        self.model_id: str = cfg.model_id or name
        self.meaningless: bool = self._detect_meaningless(name) if cfg.meaningless is None else bool(cfg.meaningless)
        self._add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self._bos_text = self._special_text(llama.llama_vocab_bos(self._vocab))
        self._eos_text = self._special_text(llama.llama_vocab_eos(self._vocab))
        self._template = self._compile_template(cfg.chat_template or self._gguf_template())

    def _read_metadata(self) -> dict[str, str]:
        llama = self._llama
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(4096)
        for i in range(llama.llama_model_meta_count(self._model)):
            if llama.llama_model_meta_key_by_index(self._model, i, buf, len(buf)) < 0:
                continue
            key = buf.value.decode("utf-8", errors="replace")
            if key.startswith("tokenizer.ggml.") or key == "tokenizer.chat_template":
                continue  # long arrays / the template (read on its own)
            n = llama.llama_model_meta_val_str_by_index(self._model, i, buf, len(buf))
            if n >= 0:
                out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    def _gguf_template(self) -> str:
        raw = self._llama.llama_model_chat_template(self._model, None)
        if raw:
            return raw.decode("utf-8")
        logger.warning("%s has no chat template; using ChatML (<|im_start|> ... <|im_end|>)", self.model_path)
        return _CHATML_TEMPLATE

    def _detect_meaningless(self, name: str) -> bool:
        marker = self.model_path.parent / _TINY_MARKER
        if marker.is_file():
            try:
                data = json.loads(marker.read_text())
                return bool(data.get("meaningless", True)) if isinstance(data, dict) else True
            except (OSError, ValueError):
                return True
        return "covip-tiny" in name.lower().replace("_", "-")

    def _compile_template(self, source: str) -> Any:
        return compile_chat_template(source, fix=f"the template of '{self.model_path}'; pass "
                                                 "LlamaCppEngineConfig(chat_template=...)")

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._piece(token, special=True).decode("utf-8", errors="replace")

    # -- public API

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` costs with this model's tokenizer (special tokens parsed, no BOS added)."""
        if not isinstance(text, str):
            raise InputError("count_tokens needs a string")
        self._check_open()
        return len(self._tokenize(text, add_special=False))

    def _reset_cache(self) -> None:
        self._clear_cache()

    def _capture(self) -> tuple[_Snapshot, int, int]:
        """A copy of the KV cache (sequence 0: llama.cpp's serialized state, host memory) and what it holds."""
        llama = self._llama
        items = tuple(dataclasses.replace(i) if isinstance(i, Media) else i for i in self._cache_items)
        buffer, size = None, 0
        if items:
            cap = int(llama.llama_state_seq_get_size(self._ctx, 0))
            buffer = (ctypes.c_uint8 * cap)()
            size = int(llama.llama_state_seq_get_data(self._ctx, buffer, cap, 0))
            if size == 0:
                raise EngineError("llama.cpp could not copy the KV state (llama_state_seq_get_data returned 0)")
        return _Snapshot(buffer=buffer, size=size, items=items, pos=tuple(self._cache_pos)), \
            sum(item_tokens(i) for i in items), size

    def _install(self, data: _Snapshot) -> None:
        """Load a captured state (EngineError when llama.cpp cannot: the cache is then empty)."""
        self._clear_cache()
        if data.buffer is None:
            return
        mark = error_mark()
        if not self._llama.llama_state_seq_set_data(self._ctx, data.buffer, data.size, 0):
            self._clear_cache()
            reason = last_native_error(mark) or "llama_state_seq_set_data returned 0"
            raise EngineError(f"llama.cpp could not load the KV state ({reason})")
        self._cache_items = [dataclasses.replace(i) if isinstance(i, Media) else i for i in data.items]
        self._cache_pos = list(data.pos)

    def prompt_token_ids(self, messages: Sequence[Message]) -> list[int]:
        """Not available: llama.cpp's multimodal prompts are text and image chunks, not one id list."""
        raise EngineError("the llama.cpp engine tokenizes images into media chunks, not token ids; count tokens "
                          "with count_tokens() or see Generation.prompt_tokens")

    @property
    def cached_token_ids(self) -> list[int]:
        """Not available (see :meth:`prompt_token_ids`); :attr:`cached_tokens` counts them."""
        raise EngineError("the llama.cpp engine's cache holds media chunks, not token ids; use cached_tokens")

    @property
    def cached_tokens(self) -> int:
        """Tokens currently held in the KV cache for reuse."""
        return sum(item_tokens(i) for i in self._cache_items)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def multimodal(self) -> bool:
        return self._mctx is not None

    def _release(self) -> None:
        """Free the native model, context and projector."""
        if getattr(self, "_verbose_counted", False):
            set_verbose(-1)
            self._verbose_counted = False
        self._closed = True
        llama, mtmd = getattr(self, "_llama", None), getattr(self, "_mtmd", None)
        if llama is None:
            return
        if self._batch is not None:
            llama.llama_batch_free(self._batch)
            self._batch = None
        if self._mctx is not None and mtmd is not None:
            mtmd.mtmd_free(self._mctx)
            self._mctx = None
        if self._ctx is not None:
            llama.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama.llama_model_free(self._model)
            self._model = None
        self._cache_items, self._cache_pos = [], []

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"n_ctx={getattr(self, '_n_ctx', '?')}"
        return f"LlamaCppEngine({getattr(self, 'model_id', self.config.model_path)!r}, " \
               f"vision={self._mctx is not None}, {state})"

    # -- one call

    def _check_open(self) -> None:
        if self._closed or self._ctx is None:
            raise EngineError("this LlamaCppEngine is closed; open a new one")

    def _run_locked(self, msgs: list[Message], cfg: GenerationConfig) -> Iterator[str]:
        llama = self._llama
        text, images = self._render(msgs)
        bitmaps: list[Any] = []
        chunks = None
        try:
            if images:
                items, chunks, bitmaps = self._tokenize_multimodal(text, images)
            elif self._mctx is not None:
                items, chunks, bitmaps = self._tokenize_multimodal(text, [])
            else:
                items = list(self._tokenize(text, add_special=True))
            if not items or isinstance(items[-1], Media):
                raise InputError("the rendered prompt must end with text (the chat template's generation prompt)")
            n_prompt = sum(item_tokens(i) for i in items)
            if n_prompt >= self._n_ctx:
                raise InputError(f"the prompt has {n_prompt} tokens but the context holds {self._n_ctx}; "
                                 "shorten the context or raise LlamaCppEngineConfig.n_ctx")

            keep = self._reuse_prefix(items)
            cached = sum(item_tokens(i) for i in items[:keep])
            t0 = time.perf_counter()
            self._prefill(items, keep, chunks)
            prefill_s = time.perf_counter() - t0
        finally:
            if chunks is not None:
                self._mtmd.mtmd_input_chunks_free(chunks)
            for bm in bitmaps:
                self._mtmd.mtmd_bitmap_free(bm)

        sampler = self._make_sampler(cfg)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(cfg.stop)
        n_done = 0
        n_kv = n_prompt  # cells of the KV cache in use
        finish = "length"
        t1 = time.perf_counter()
        try:
            while True:
                token = llama.llama_sampler_sample(sampler, self._ctx, -1)
                n_done += 1  # an end-of-turn token counts (as in transformers), but is never fed back
                if llama.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                out = stops.feed(decoder.decode(self._piece(token)))
                if out:
                    yield out
                if stops.stopped:
                    finish = "stop"
                    break
                if n_done >= cfg.max_new_tokens or n_kv >= self._n_ctx:
                    finish = "length"  # enough tokens, or no room left to feed this one back
                    break
                self._decode_tokens([token], self._next_pos(), logits_last=True)
                self._cache_pos.append(self._next_pos())
                self._cache_items.append(token)
                n_kv += 1
            if not stops.stopped:
                tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
                if tail:
                    yield tail
        finally:  # on failure the shell resets the cache (a stream closed early leaves it consistent)
            llama.llama_sampler_free(sampler)
            self.last = Generation(
                text=stops.text,
                prompt_tokens=n_prompt - cached,
                completion_tokens=n_done,
                cached_tokens=cached,
                prefill_s=prefill_s,
                decode_s=time.perf_counter() - t1,
                finish_reason=finish,
            )

    # -- prompt

    def _render(self, msgs: list[Message]) -> tuple[str, list[Any]]:
        """The chat rendered by the template, images replaced by the media marker; plus the images."""
        flat: list[dict[str, str]] = []
        images: list[Any] = []
        for msg in msgs:
            content = msg["content"]
            if not isinstance(content, str):
                parts = []
                for part in content:
                    if part["type"] == "image":
                        if self._mctx is None:
                            raise InputError(
                                f"'{self.model_id}' was opened without a vision projector, so it cannot take "
                                "images; pass LlamaCppEngineConfig(mmproj_path=...) or send text only")
                        images.append(part["image"])
                        parts.append(self._marker)
                    else:
                        self._check_marker(part["text"])
                        parts.append(part["text"])
                content = "".join(parts)
            else:
                self._check_marker(content)
            flat.append({"role": msg["role"], "content": content})
        try:
            text = self._template.render(messages=flat, add_generation_prompt=True,
                                         bos_token=self._bos_text, eos_token=self._eos_text)
        except InputError:
            raise
        except Exception as exc:
            raise EngineError(f"the chat template of '{self.model_id}' failed to render ({exc}); "
                              "pass LlamaCppEngineConfig(chat_template=...)") from exc
        if self._add_bos and self._bos_text and text.startswith(self._bos_text):
            text = text[len(self._bos_text):]  # the tokenizer adds BOS itself
        return text, images

    def _check_marker(self, text: str) -> None:
        if self._marker and self._marker in text:
            raise InputError(f"message text contains {self._marker!r}, which this engine reserves for images")

    def _tokenize(self, text: str, *, add_special: bool) -> list[int]:
        llama = self._llama
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama.llama_token * cap)()
        n = llama.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            cap = -n
            buf = (llama.llama_token * cap)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, cap, add_special, True)
        if n < 0:
            raise EngineError(f"llama.cpp failed to tokenize {len(data)} bytes of text")
        return list(buf[:n])

    def _tokenize_multimodal(self, text: str, images: list[Any]) -> tuple[list[_Item], Any, list[Any]]:
        from covip.sdk.imaging import load_photo

        mtmd = self._mtmd
        bitmaps: list[Any] = []
        chunks = None
        try:
            for payload in images:
                img = load_photo(payload).image
                if img.mode != "RGB":
                    img = img.convert("RGB")
                data = img.tobytes()
                bm = mtmd.mtmd_bitmap_init(img.width, img.height,
                                           (ctypes.c_uint8 * len(data)).from_buffer_copy(data))
                if not bm:
                    raise EngineError(f"libmtmd could not take an image of {img.width}x{img.height} pixels")
                bitmaps.append(bm)
                digest = hashlib.sha256(f"{img.width}x{img.height}:".encode() + data).hexdigest()
                mtmd.mtmd_bitmap_set_id(bm, digest.encode())
            chunks = mtmd.mtmd_input_chunks_init()
            if not chunks:
                raise EngineError("libmtmd could not allocate input chunks")
            inp = mtmd.mtmd_input_text()
            raw = text.encode("utf-8")
            inp.text, inp.text_len, inp.add_special, inp.parse_special = raw, len(raw), True, True
            arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            mark = error_mark()
            rc = mtmd.mtmd_tokenize(self._mctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise EngineError(f"libmtmd failed to tokenize the prompt (code {rc}: "
                                  f"{last_native_error(mark) or 'image count does not match the markers?'})")
            items: list[_Item] = []
            seen: dict[str, int] = {}
            n_tok = ctypes.c_size_t()
            for ci in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, ci)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    ptr = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n_tok))
                    items.extend(ptr[j] for j in range(n_tok.value))
                else:
                    cid = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode()
                    seen[cid] = seen.get(cid, -1) + 1
                    items.append(Media(key=(cid, seen[cid]),
                                        n_tokens=int(mtmd.mtmd_input_chunk_get_n_tokens(chunk)),
                                        n_pos=int(mtmd.mtmd_input_chunk_get_n_pos(chunk)), chunk_index=ci))
            return items, chunks, bitmaps
        except BaseException:
            if chunks is not None:
                mtmd.mtmd_input_chunks_free(chunks)
            for bm in bitmaps:
                mtmd.mtmd_bitmap_free(bm)
            raise

    # -- KV cache

    def _next_pos(self) -> int:
        if not self._cache_items:
            return 0
        return self._cache_pos[-1] + _item_pos(self._cache_items[-1])

    def _clear_cache(self) -> None:
        if self._ctx is not None:
            self._llama.llama_memory_clear(self._mem, True)
        self._cache_items, self._cache_pos = [], []

    def _reuse_prefix(self, items: list[_Item]) -> int:
        """Keep the longest cached prefix of ``items`` (at least the last item is re-read for its logits)."""
        old = self._cache_items
        limit = min(len(old), len(items) - 1)
        keep = 0
        while keep < limit and _same(old[keep], items[keep]):
            keep += 1
        if keep == 0:
            self._clear_cache()
            return 0
        if keep < len(old):
            if not self._llama.llama_memory_seq_rm(self._mem, 0, self._cache_pos[keep], -1):
                logger.debug("llama_memory_seq_rm refused a partial removal; prefilling everything")
                self._clear_cache()
                return 0
            del self._cache_items[keep:], self._cache_pos[keep:]
        return keep

    def _prefill(self, items: list[_Item], start: int, chunks: Any) -> None:
        """Evaluate ``items[start:]`` after the cached prefix; logits only for the last prompt token."""
        try:
            i = start
            while i < len(items):
                item = items[i]
                if isinstance(item, Media):
                    self._eval_media(item, chunks)
                    i += 1
                    continue
                j = i
                while j < len(items) and not isinstance(items[j], Media):
                    j += 1
                run = items[i:j]
                pos0 = self._next_pos()
                self._decode_tokens(run, pos0, logits_last=(j == len(items)))
                self._cache_pos.extend(range(pos0, pos0 + len(run)))
                self._cache_items.extend(run)
                i = j
        except BaseException:
            self._clear_cache()  # a half-filled cache is not worth keeping
            raise

    def _eval_media(self, item: Media, chunks: Any) -> None:
        mtmd = self._mtmd
        chunk = mtmd.mtmd_input_chunks_get(chunks, item.chunk_index)
        pos0 = self._next_pos()
        new_pos = self._llama.llama_pos(pos0)
        mark = error_mark()
        rc = mtmd.mtmd_helper_eval_chunk_single(self._mctx, self._ctx, chunk, pos0, 0, self._n_batch, False,
                                                ctypes.byref(new_pos))
        if rc != 0:
            raise EngineError(f"libmtmd failed to encode/decode an image (code {rc}: "
                              f"{last_native_error(mark) or 'no reason given'})")
        if new_pos.value != pos0 + item.n_pos:
            logger.debug("image chunk advanced %d positions, expected %d", new_pos.value - pos0, item.n_pos)
            item.n_pos = new_pos.value - pos0
        self._cache_pos.append(pos0)
        self._cache_items.append(item)

    def _decode_tokens(self, tokens: Sequence[int], pos0: int, *, logits_last: bool) -> None:
        llama, batch = self._llama, self._batch
        for off in range(0, len(tokens), self._batch_cap):
            part = tokens[off: off + self._batch_cap]
            last_part = off + len(part) >= len(tokens)
            batch.n_tokens = len(part)
            for k, tok in enumerate(part):
                batch.token[k] = tok
                batch.pos[k] = pos0 + off + k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = 0
            if logits_last and last_part:
                batch.logits[len(part) - 1] = 1
            mark = error_mark()
            rc = llama.llama_decode(self._ctx, batch)
            if rc != 0:
                raise EngineError(f"llama_decode failed (code {rc}: {last_native_error(mark) or 'no reason given'})"
                                  + ("; the KV cache is full, raise n_ctx" if rc == 1 else ""))

    # -- sampling

    def _make_sampler(self, cfg: GenerationConfig) -> Any:
        return make_sampler(self._llama, self._vocab, cfg, self.config.seed)

    def _piece(self, token: int, *, special: bool = False) -> bytes:
        llama = self._llama
        buf = ctypes.create_string_buffer(64)
        n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]
