"""Hugging Face transformers back end: any VLM with a chat template (Qwen3-VL first, Qwen2.5-VL too).

torch and transformers are imported only when a :class:`TransformersEngine` is built, so importing this
module (and ``covip.sdk.engines``) works on a machine without torch.

The engine runs its own decode loop (prefill, then one forward per token over a ``DynamicCache``) so it
can time prefill and decode separately, stream text, apply stop strings, and keep the KV cache of its
last call for the next one:

* After a call, the engine remembers the token ids whose keys/values are in the cache: the prompt plus
  every generated token except the last one (the last sampled token was never run through the model),
  and which photo sits in each image span.
* The next call tokenizes its whole prompt, finds the longest common prefix with those ids (image spans
  count as equal only when the same photo is in them, and a prefix never ends inside an image), crops the
  cache to it and prefills only the rest. Images inside the reused prefix are not encoded again.
* Qwen-style processors: each photo's pixel tensors are kept from the last call, so the answer pass does
  not preprocess its photos again either (checked once per engine against the processor's own output).
* Qwen's multimodal RoPE: the 3-D positions of the whole new prompt are computed from its token ids and
  image grids (they depend only on the tokens before each position, so the reused prefix keeps the
  positions it was computed with); the suffix gets its slice, and decoding continues at
  ``index + rope_delta`` on all three axes.

With ``cache_implementation='static'`` the cache is one ``StaticCache`` of ``max_cache_len`` positions, kept
for the engine's life (reset, cropped and refilled in place; a call that needs more positions gets a larger
one). ``compile=True`` adds what transformers' ``generate`` does for speed: the decode step runs
``model.get_compiled_call(CompileConfig(...))`` (torch.compile; CUDA graphs on a GPU) over that static cache
with fixed shapes, the prefill stays eager, and the greedy text is the eager engine's. The first call pays the
compile. On a GPU the compiled step (CUDA graphs) targets the Python and kernel-launch overhead that bounds
one-sequence decoding (benchmarks/engines.py --compile-only measures it; see benchmarks/RESULTS.md).

``snapshot()`` deep-copies the ``DynamicCache`` (its tensors are cloned, so crops and appends of later calls
never reach the copy) together with the token ids, image spans, photo pixel tensors and RoPE delta;
``restore()`` installs another deep copy of it (into the engine's own StaticCache, in place, for a static one),
so one snapshot can be restored any number of times.

``Generation.cached_tokens`` is the length of that reused prefix, ``prompt_tokens`` the tokens prefilled
now; their sum is always the full prompt length. When call 2 continues call 1 (call 1's messages, then
call 1's text as the assistant turn, then a new user turn) and call 1's text tokenizes back to the same
ids, ``cached_tokens == call1.total_prompt_tokens + call1.completion_tokens - 1``.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from covip.sdk._config import ConfigMixin, pick_device
from covip.sdk._extras import require
from covip.sdk.engines._hf_util import (
    _auto_model_class,
    _image_spans,
    _pick_dtype,
    _resolve_model,
    _same_tensors,
    quiet_progress,
    set_pixels,
    template_messages,
)
from covip.sdk.engines._loop import TokenLoopEngine, common_prefix
from covip.sdk.engines.base import (
    GenerationConfig,
    Message,
)
from covip.sdk.errors import CovipError, EngineError, InputError

__all__ = ["TransformersEngine", "TransformersEngineConfig"]

logger = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
_CACHES = (None, "dynamic", "static")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class TransformersEngineConfig(ConfigMixin):
    """Which Hugging Face VLM to load and how to run it (every field has a ``help`` text for CLIs)."""

    model: str = field(
        default="tiny",
        metadata={
            "help": "A hub id (e.g. 'Qwen/Qwen3-VL-2B-Instruct'), a local directory written by "
            "save_pretrained, or a built-in tiny random-weight model: 'tiny' (= 'tiny-qwen3-vl') or "
            "'tiny-qwen2.5-vl', whose text is meaningless (tests, offline runs)."
        },
    )
    device: str = field(
        default="auto",
        metadata={"help": "'auto' (cuda, then mps, then cpu), 'cpu', 'cuda', 'cuda:N' or 'mps'."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "'auto' (bfloat16 on cuda, float32 on cpu and mps), 'float32', 'bfloat16' or 'float16'."
        },
    )
    min_pixels: int | None = field(
        default=None,
        metadata={"help": "Override the image processor's minimum pixels per image (None keeps the model's)."},
    )
    max_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Override the image processor's maximum pixels per image (None keeps the model's); "
            "fewer pixels means fewer image tokens and a faster prefill."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow model repositories to run their own Python code (only for models you trust)."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "'sdpa', 'eager', 'flash_attention_2' (needs the flash-attn package, a CUDA GPU and bfloat16 or "
            "float16), ... ; 'auto' picks flash_attention_2 where it can run, else sdpa; None lets transformers "
            "choose (sdpa where torch has it)."
        },
    )
    cache_implementation: str | None = field(
        default=None,
        metadata={
            "help": "The KV cache: None or 'dynamic' (transformers' DynamicCache, grown token by token) or 'static' (a "
            "StaticCache preallocated for max_cache_len tokens: fixed shapes, what compile needs)."
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the decode step, as transformers' generate does (model.get_compiled_call; "
            "CUDA graphs on a GPU); implies cache_implementation='static'. The first call compiles (tens of "
            "seconds to minutes); later calls run with far less Python overhead per token. Prefill stays eager."
        },
    )
    max_cache_len: int = field(
        default=4096,
        metadata={
            "help": "Tokens the static KV cache holds (prompt + answer; cache_implementation='static' or compile). "
            "A call that needs more gets a cache twice as large, or more (and the decode step compiles again)."
        },
    )

    def __post_init__(self) -> None:
        """Reject values that would only fail later, deep inside transformers."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError(f"TransformersEngineConfig.model must be a non-empty string, got {self.model!r}")
        device, _, index = self.device.partition(":") if isinstance(self.device, str) else (None, "", "")
        if device not in ("auto", "cpu", "cuda", "mps") or (index and not (device == "cuda" and index.isdigit())):
            raise InputError(
                f"TransformersEngineConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', "
                f"got {self.device!r}"
            )
        if self.dtype not in _DTYPES:
            raise InputError(f"TransformersEngineConfig.dtype must be one of {_DTYPES}, got {self.dtype!r}")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"TransformersEngineConfig.{name} must be a positive integer or None, got {value!r}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise InputError("TransformersEngineConfig.min_pixels must not exceed max_pixels")
        if self.attn_implementation is not None and (not isinstance(self.attn_implementation, str)
                                                     or not self.attn_implementation.strip()):
            raise InputError("TransformersEngineConfig.attn_implementation must be a name such as 'sdpa', 'auto' or "
                             f"None, got {self.attn_implementation!r}")
        if self.cache_implementation not in _CACHES:
            raise InputError(f"TransformersEngineConfig.cache_implementation must be one of {_CACHES}, got "
                             f"{self.cache_implementation!r}")
        if not isinstance(self.compile, bool):
            raise InputError(f"TransformersEngineConfig.compile must be true or false, got {self.compile!r}")
        if self.compile and self.cache_implementation == "dynamic":
            raise InputError("TransformersEngineConfig.compile needs the static KV cache: leave cache_implementation "
                             "None (or 'static') with compile=True")
        if isinstance(self.max_cache_len, bool) or not isinstance(self.max_cache_len, int) or self.max_cache_len < 16:
            raise InputError(f"TransformersEngineConfig.max_cache_len must be an integer of at least 16, got "
                             f"{self.max_cache_len!r}")

    @property
    def static_cache(self) -> bool:
        """Whether the engine runs a preallocated StaticCache (asked for, or implied by compile)."""
        return self.compile or self.cache_implementation == "static"


@dataclass
class _Prompt:
    """One call's tokenized prompt with its images."""

    ids: list[int]
    spans: list[tuple[int, int, str]]  # (start, end) of each image's placeholder tokens, and the photo's key
    tensors: dict[str, Any]  # processor output (input_ids, pixel_values, image_grid_thw, ...)


@dataclass(frozen=True)
class _Snapshot:
    """What :meth:`TransformersEngine.snapshot` keeps: a private copy of the cache and its bookkeeping."""

    cache: Any  # a DynamicCache no live call uses (None = empty)
    ids: tuple[int, ...]
    spans: tuple[tuple[int, int, str], ...]
    delta: int
    image_memo: dict[str, tuple[Any, Any]]  # photo key -> (pixel_values, image_grid_thw), never mutated


class TransformersEngine(TokenLoopEngine):
    """An :class:`~covip.sdk.engines.Engine` backed by a Hugging Face image-text-to-text model."""

    def __init__(self, config: TransformersEngineConfig | None = None, **overrides: Any) -> None:
        """Load the model named by ``config`` (default: the tiny Qwen3-VL); raise EngineError if it cannot."""
        self.config = (config or TransformersEngineConfig()).with_overrides(**overrides)
        self._torch = torch = require("torch", feature="the transformers engine", extra="torch")
        self._tf = require("transformers", feature="the transformers engine", extra="torch")
        self.device = pick_device(torch, self.config.device, EngineError)
        self.dtype = _pick_dtype(torch, self.config.dtype, self.device)
        logger.info("transformers engine: device %s (asked %r), dtype %s (asked %r)", self.device,
                    self.config.device, str(self.dtype).removeprefix("torch."), self.config.dtype)
        source, self.model_id, marker = _resolve_model(self.config.model)
        self.meaningless: bool = marker is not None
        if self.meaningless:
            logger.warning(
                "model %s has random weights: the text it writes is meaningless (use it for tests and "
                "offline runs only; pick e.g. Qwen/Qwen3-VL-2B-Instruct for real answers)", self.model_id,
            )
        self.processor, self.model = self._load(source)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self._setup_model_specifics()
        self._static_cache: Any = None  # the one StaticCache of a static-cache engine, reused by every call
        self._decode_call = self._compiled_step() if self.config.compile else self.model
        self._init_shell()
        self._reset_cache()
        logger.info("transformers engine %s ready on %s", self.model_id, self.device)

    def __repr__(self) -> str:
        """Show model id, device and dtype."""
        return f"TransformersEngine(model_id={self.model_id!r}, device={self.device!r}, dtype={self.dtype})"

    # ------------------------------------------------------------------ public API

    def _capture(self) -> tuple[_Snapshot, int, int]:
        """The cache copied on the engine's device; bytes = its key/value tensors + the photos' pixel tensors."""
        data = _Snapshot(cache=self._copy_cache(self._cache), ids=tuple(self._ids), spans=tuple(self._spans),
                         delta=self._delta, image_memo=dict(self._image_memo))
        nbytes = _tensor_bytes(data.cache) + sum(_tensor_bytes(v) for v in data.image_memo.values())
        return data, len(data.ids), nbytes

    def _install(self, data: _Snapshot) -> None:
        cache = self._copy_into_static(data.cache)
        if cache is None:
            cache = self._copy_cache(data.cache)  # the snapshot stays untouched by the calls that follow
        self._reset_cache()
        self._cache, self._ids, self._spans, self._delta = cache, list(data.ids), list(data.spans), data.delta
        self._image_memo = dict(data.image_memo)

    def _release(self) -> None:
        """Drop the model, the processor and the KV cache, and free cached GPU memory."""
        self._reset_cache()
        self._static_cache = self._decode_call = None
        self.model = None
        self.processor = self.tokenizer = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------------------ loading

    def _load(self, source: str) -> tuple[Any, Any]:
        tf, cfg = self._tf, self.config
        common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
        try:
            processor = tf.AutoProcessor.from_pretrained(source, **common)
            kwargs = dict(common, dtype=self.dtype)
            if cfg.attn_implementation:
                kwargs["attn_implementation"] = _pick_attention(self._torch, cfg.attn_implementation, self.device,
                                                                self.dtype)
            with quiet_progress(tf):
                model = _auto_model_class(tf, source, common).from_pretrained(source, **kwargs)
        except (OSError, ValueError, KeyError, ImportError) as exc:
            if isinstance(exc, CovipError):
                raise
            raise EngineError(
                f"cannot load the model {cfg.model!r} ({type(exc).__name__}: {str(exc)[:400]}); give a hub id "
                "that is downloaded or reachable, a directory written by save_pretrained, or 'tiny'"
            ) from exc
        model = model.to(self.device).eval()
        if getattr(processor, "tokenizer", None) is None or getattr(processor, "chat_template", None) is None:
            raise EngineError(f"the model {cfg.model!r} has no processor with a tokenizer and a chat template")
        ip = getattr(processor, "image_processor", None)
        if ip is not None and (cfg.min_pixels or cfg.max_pixels):
            set_pixels(ip, cfg.min_pixels, cfg.max_pixels)
        return processor, model

    def _setup_model_specifics(self) -> None:
        model, tok = self.model, self.tokenizer
        mcfg = model.config
        self._image_token_id = getattr(mcfg, "image_token_id", None)
        if self._image_token_id is None:
            self._image_token_id = getattr(mcfg, "image_token_index", None)
        if self._image_token_id is None and getattr(self.processor, "image_token", None):
            self._image_token_id = tok.convert_tokens_to_ids(self.processor.image_token)
        inner = getattr(model, "model", model)
        self._rope_index = getattr(inner, "get_rope_index", None) or getattr(model, "get_rope_index", None)
        self._rope_params = set(inspect.signature(self._rope_index).parameters) if self._rope_index else set()
        forward_params = set(inspect.signature(model.forward).parameters)
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in forward_params else None
        eos: set[int] = set()
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        for value in (gen_eos, tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, (list, tuple)):
                eos.update(v for v in value if isinstance(v, int))
        eos.discard(getattr(tok, "unk_token_id", None))
        self._eos = eos
        self._forward_params = forward_params
        self._vocab = len(tok)  # logits past the tokenizer's vocabulary are padding rows
        self._fast_images: bool | None = None  # None: not yet checked against the processor
        cache_utils = importlib.import_module("transformers.cache_utils")
        self._dynamic_layer = getattr(cache_utils, "DynamicLayer", None)
        # layers a crop keeps exact (sliding-window layers may have dropped what a crop would need)
        self._croppable_layers = {c for c in (self._dynamic_layer, getattr(cache_utils, "StaticLayer", None)) if c}

    # ------------------------------------------------------------------ the decode loop

    def _run_locked(self, msgs: list[Message], config: GenerationConfig) -> Iterator[str]:
        torch = self._torch
        t0 = time.perf_counter()
        prompt = self._tokenize(msgs)
        reuse = self._reusable_prefix(prompt)
        need = len(prompt.ids) + config.max_new_tokens  # what a static cache must hold
        if reuse == 0 or self._cache is None or (self.config.static_cache and need > _cache_capacity(self._cache)):
            self._cache = self._new_cache(need)
            reuse = 0
        elif reuse < len(self._ids):
            with torch.inference_mode():  # a static cache crops in place (its tensors are inference tensors)
                self._cache.crop(reuse - len(self._ids))
        self._ids = self._ids[:reuse]
        self._spans = [s for s in self._spans if s[1] <= reuse]

        def prefill() -> Any:
            with torch.inference_mode():  # never held across a yield: the caller's code runs outside it
                positions, self._delta = self._positions(prompt)
                logits = self._prefill(prompt, reuse, positions)
            self._ids, self._spans = list(prompt.ids), list(prompt.spans)
            return logits

        def step(token: int) -> Any:
            with torch.inference_mode():
                logits = self._step(token)
            self._ids.append(token)
            return logits

        yield from self._token_loop(config, t0=t0, n_prompt=len(prompt.ids), reuse=reuse, prefill=prefill, step=step,
                                    to_numpy=lambda t: t.float().cpu().numpy(),
                                    argmax=lambda t: int(t[: self._vocab].argmax()))

    def _tokenize(self, msgs: list[Message]) -> _Prompt:
        """Render the chat template, take in the photos, and run the processor on text + images."""
        template_msgs, images, keys = template_messages(msgs)
        try:
            text = self.processor.apply_chat_template(template_msgs, tokenize=False, add_generation_prompt=True)
            tensors = self._process(text, images, keys)
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"the model's processor rejected these messages ({exc})") from exc
        ids = tensors["input_ids"][0].tolist()
        spans = _image_spans(ids, self._image_token_id) if images else []
        if len(spans) != len(images):
            raise EngineError(
                f"found {len(spans)} image placeholder runs for {len(images)} images in the rendered prompt; "
                "this model's chat template or processor is not supported by the prefix cache"
            )
        return _Prompt(ids, [(s, e, k) for (s, e), k in zip(spans, keys)], tensors)

    def _process(self, text: str, images: list[Image.Image], keys: list[str]) -> dict[str, Any]:
        """The processor's tensors for one prompt; Qwen-style processors reuse the last call's image tensors."""
        fast = None
        if images and self._fast_images is not False:
            fast = self._process_fast(text, images, keys)
        if fast is not None and self._fast_images:
            return fast
        kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kwargs["images"] = images
        full = dict(self.processor(**kwargs))
        if fast is not None:  # first use: the fast path must give exactly what the processor gives
            self._fast_images = _same_tensors(self._torch, fast, full)
            if not self._fast_images:
                self._image_memo = {}
                logger.info("per-image preprocessing cache disabled: it differs from %s's output",
                            type(self.processor).__name__)
        return full

    def _process_fast(self, text: str, images: list[Image.Image], keys: list[str]) -> dict[str, Any] | None:
        """Qwen-style processing with per-image memo: placeholder k becomes grid_k.prod() / merge**2 tokens."""
        torch, proc = self._torch, self.processor
        ip = getattr(proc, "image_processor", None)
        token = getattr(proc, "image_token", None)
        merge = getattr(ip, "merge_size", None)
        if ip is None or not token or not merge or "image_grid_thw" not in getattr(ip, "model_input_names", ()):
            self._fast_images = False
            return None
        pieces = text.split(token)
        if len(pieces) - 1 != len(images):
            return None
        memo: dict[str, tuple[Any, Any]] = {}
        for img, key in zip(images, keys):
            if key not in memo:
                hit = self._image_memo.get(key)
                if hit is None:
                    out = ip(images=[img], return_tensors="pt")
                    hit = (out["pixel_values"], out["image_grid_thw"])
                memo[key] = hit
        self._image_memo = memo  # only the latest call's photos stay
        grids = [memo[k][1] for k in keys]
        expanded = pieces[0]
        for grid, piece in zip(grids, pieces[1:]):
            expanded += token * (int(grid.prod()) // merge**2) + piece
        out = dict(self.tokenizer([expanded], return_tensors="pt"))
        out.pop("token_type_ids", None)
        if getattr(proc, "return_mm_token_type_ids", False):
            ids = out["input_ids"]
            types = torch.zeros_like(ids)
            types[ids == self._image_token_id] = 1
            video = getattr(proc, "video_token_id", None)
            if video is not None:
                types[ids == video] = 2
            out["mm_token_type_ids"] = types
        out["pixel_values"] = torch.cat([memo[k][0] for k in keys], dim=0)
        out["image_grid_thw"] = torch.cat(grids, dim=0)
        return out

    def _reusable_prefix(self, prompt: _Prompt) -> int:
        """Length of the cached prefix the new prompt can reuse (0 = prefill everything)."""
        if self._cache is None or not self._ids:
            return 0
        n = common_prefix(self._ids, self._spans, prompt.ids, prompt.spans)
        if n < len(self._ids) and not self._croppable():
            return 0
        return n

    def _croppable(self) -> bool:
        layers = getattr(self._cache, "layers", None)
        if layers is None or self._dynamic_layer is None:
            return True
        return all(type(layer) in self._croppable_layers for layer in layers)

    def _positions(self, prompt: _Prompt) -> tuple[Any, int]:
        """(position ids for the whole prompt or None, the RoPE delta for tokens after it)."""
        torch = self._torch
        n = len(prompt.ids)
        if self._rope_index is None:
            return None, 0
        text_pos = torch.arange(n, device=self.device).view(1, 1, n)
        if not prompt.spans:
            return text_pos.expand(4, 1, n), 0
        t = prompt.tensors
        kwargs: dict[str, Any] = {}
        for name in ("image_grid_thw", "mm_token_type_ids", "attention_mask"):
            if name in self._rope_params and t.get(name) is not None:
                kwargs[name] = t[name].to(self.device)
        pos, delta = self._rope_index(t["input_ids"].to(self.device), **kwargs)
        delta_val = int(delta.reshape(-1)[0].item()) if hasattr(delta, "reshape") else int(delta)
        return torch.cat([text_pos, pos.to(self.device)], dim=0), delta_val

    def _prefill(self, prompt: _Prompt, start: int, positions: Any) -> Any:
        """Run the uncached part of the prompt (with the pixels of the images in it); return last logits."""
        torch = self._torch
        t = prompt.tensors
        ids = t["input_ids"][:, start:].to(self.device)
        kwargs: dict[str, Any] = {"input_ids": ids, self._cache_kw: self._cache, "use_cache": True}
        if not self.config.static_cache:  # one unpadded sequence: a static cache masks by position itself
            kwargs["attention_mask"] = torch.ones(1, len(prompt.ids), dtype=torch.long, device=self.device)
        if positions is not None:
            kwargs["position_ids"] = positions[:, :, start:]
        if self._keep_kw:
            kwargs[self._keep_kw] = 1
        new_images = [i for i, (s, _, _) in enumerate(prompt.spans) if s >= start]
        if new_images:
            grid = t.get("image_grid_thw")
            pixels = t["pixel_values"]
            if grid is not None and len(new_images) < len(prompt.spans):
                rows = [int(g.prod()) for g in grid]
                first = new_images[0]
                pixels = pixels[sum(rows[:first]):]
                grid = grid[first:]
            kwargs["pixel_values"] = pixels.to(self.device, self.dtype)
            if grid is not None:
                kwargs["image_grid_thw"] = grid.to(self.device)
            if t.get("mm_token_type_ids") is not None and "mm_token_type_ids" in self._forward_params:
                kwargs["mm_token_type_ids"] = t["mm_token_type_ids"][:, start:].to(self.device)
        out = self.model(**kwargs)
        return out.logits[0, -1]

    def _step(self, token: int) -> Any:
        """Run one generated token through the model (the compiled decode step with ``compile``); return its
        logits."""
        torch = self._torch
        pos = len(self._ids)
        kwargs: dict[str, Any] = {"input_ids": torch.tensor([[token]], device=self.device), self._cache_kw: self._cache,
                                  "use_cache": True}
        if not self.config.static_cache:  # a static cache: every input keeps its shape from token to token
            kwargs["attention_mask"] = torch.ones(1, pos + 1, dtype=torch.long, device=self.device)
        if self._rope_index is not None:
            p = torch.tensor([pos, pos + self._delta, pos + self._delta, pos + self._delta], device=self.device)
            kwargs["position_ids"] = p.view(4, 1, 1)
        out = self._decode_call(**kwargs)
        if self._decode_call is self.model:
            return out.logits[0, -1]
        return out.logits[0, -1].clone()  # a CUDA-graph output is overwritten by the next replay

    def _compiled_step(self) -> Any:
        """The model's ``__call__`` compiled for decode steps the way transformers' generate compiles it
        (``get_compiled_call`` with a ``CompileConfig``): CUDA graphs ('reduce-overhead') on a GPU, inductor's
        default mode elsewhere; fixed shapes (one token over the static cache), graph breaks allowed."""
        tf, torch = self._tf, self._torch
        mode = "reduce-overhead" if self.device.startswith("cuda") else "default"
        compile_config = tf.CompileConfig(fullgraph=False, dynamic=False, mode=mode)
        get = getattr(self.model, "get_compiled_call", None)
        if get is not None:
            return get(compile_config)
        return torch.compile(self.model.__call__, **compile_config.to_dict())  # pragma: no cover - older transformers

    # ------------------------------------------------------------------ helpers

    def _new_cache(self, need: int = 0) -> Any:
        """An empty cache for a call that needs ``need`` positions: a new DynamicCache, or the engine's one
        StaticCache reset (its tensors keep their addresses, so the compiled step stays valid), made anew
        twice as large (or more) when it holds fewer than ``need``."""
        if not self.config.static_cache:
            return self._tf.DynamicCache(config=self.model.config)
        cache = self._static_cache
        if cache is not None and _cache_capacity(cache) >= need:
            with self._torch.inference_mode():
                cache.reset()
            return cache
        size = self.config.max_cache_len
        while size < need:
            size *= 2
        if cache is not None:
            logger.info("static KV cache grows from %d to %d tokens (the compiled decode step compiles again)",
                        _cache_capacity(cache), size)
        self._static_cache = None  # the old one's memory goes before the new one's is taken
        self._static_cache = self._tf.StaticCache(config=self.model.config, max_cache_len=size)
        return self._static_cache

    def _copy_into_static(self, cache: Any) -> Any:
        """The engine's StaticCache holding a copy of the snapshot's static ``cache`` (copied in place, so the
        compiled decode step keeps running on the same tensors), or None when the two do not match."""
        live = self._static_cache
        if cache is None or live is None or type(cache) is not type(live) or len(cache.layers) != len(live.layers):
            return None
        pairs = list(zip(cache.layers, live.layers))
        if not all(getattr(a, "is_initialized", False) and getattr(b, "is_initialized", False)
                   and a.keys.shape == b.keys.shape and a.values.shape == b.values.shape for a, b in pairs):
            return None
        with self._torch.inference_mode():
            for a, b in pairs:
                b.keys.copy_(a.keys)
                b.values.copy_(a.values)
                b.cumulative_length.copy_(a.cumulative_length)
        return live

    def _copy_cache(self, cache: Any) -> Any:
        """A deep copy of a cache (tensors cloned); None stays None."""
        if cache is None:
            return None
        try:
            with self._torch.inference_mode():  # the copies are inference tensors, like the engine's own
                return copy.deepcopy(cache)
        except Exception as exc:  # e.g. an offloading cache holding CUDA streams
            raise EngineError(f"cannot copy this model's KV cache ({type(cache).__name__}: {exc})") from exc

    def _reset_cache(self) -> None:
        self._image_memo: dict[str, tuple[Any, Any]] = {}
        self._cache = None
        self._ids: list[int] = []
        self._spans: list[tuple[int, int, str]] = []
        self._delta = 0



# ----------------------------------------------------------------------------- module helpers


def _cache_capacity(cache: Any) -> int:
    """Positions a cache can hold: a static cache's length (sliding-window layers hold their window whatever the
    length), unbounded for a dynamic one."""
    lengths = [getattr(layer, "max_cache_len", None) for layer in getattr(cache, "layers", ())
               if not getattr(layer, "is_sliding", False)]
    return min((n for n in lengths if isinstance(n, int)), default=1 << 62)


def _pick_attention(torch: Any, requested: str, device: str, dtype: Any) -> str:
    """``attn_implementation`` for from_pretrained: 'auto' is flash_attention_2 where it runs (the flash-attn
    package, a CUDA device, a 16-bit dtype), else sdpa; anything else as given."""
    if requested != "auto":
        return requested
    import importlib.util

    if (device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16)
            and importlib.util.find_spec("flash_attn") is not None):
        return "flash_attention_2"
    return "sdpa"


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a cache (its layers' tensor attributes) or in a tuple of tensors."""
    if obj is None:
        return 0
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(x) for x in obj)
    if hasattr(obj, "nbytes") and hasattr(obj, "data_ptr"):  # a tensor
        return int(obj.nbytes)
    layers = getattr(obj, "layers", None)
    if layers is not None:
        return sum(_tensor_bytes(v) for layer in layers for v in vars(layer).values()
                   if hasattr(v, "nbytes") and hasattr(v, "data_ptr"))
    return 0
