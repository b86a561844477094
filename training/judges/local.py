"""Judges that run a model in this process: a GGUF through llama.cpp, or a Hugging Face model.

* :class:`LlamaCppJudge`: ``llama_cpp.Llama.create_chat_completion`` on a (text-only) GGUF chat model,
  one question after the other (a ``Llama`` is not thread-safe).
* :class:`TransformersJudge`: a causal LM, or a VLM used for text only, through ``model.generate`` on
  left-padded batches of ``batch_size`` questions.

Both sample with the paper's judge settings by default (temperature 0.7, top_p 0.8, top_k 20); with
temperature 0 they decode greedily.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk.errors import CovipError, InputError, JudgeError
from covip.sdk.support import ConfigMixin, pick_device, require
from covip.training.judges.base import Judge, check_sampling

__all__ = ["LlamaCppJudge", "LlamaCppJudgeConfig", "TransformersJudge", "TransformersJudgeConfig"]

logger = logging.getLogger(__name__)


def _random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


# ----------------------------------------------------------------------------- llama.cpp


@dataclass(frozen=True)
class LlamaCppJudgeConfig(ConfigMixin):
    """A local GGUF chat model as the judge (every field has a ``help`` text for CLIs)."""

    model_path: str = field(metadata={"help": "Path of the GGUF chat model (text-only is enough)."})
    n_ctx: int = field(default=4096, metadata={"help": "Context window in tokens (caption + question)."})
    n_threads: int | None = field(default=None, metadata={"help": "CPU threads (None = llama.cpp's choice)."})
    n_gpu_layers: int = field(default=0, metadata={"help": "Layers to offload to a GPU (-1 = all)."})
    chat_format: str | None = field(
        default=None, metadata={"help": "llama.cpp chat format; None uses the template inside the GGUF."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (paper: 0.7)."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling mass (paper: 0.8)."})
    top_k: int | None = field(default=20, metadata={"help": "Top-k (paper: 20); None or 0 = off."})
    max_tokens: int = field(default=128, metadata={"help": "Most tokens the judge may write per answer."})
    seed: int | None = field(
        default=None, metadata={"help": "Derive per-question seeds from this; None = a fresh random seed each."},
    )
    cache_path: str | None = field(
        default=None, metadata={"help": "SQLite answer cache (see HttpJudgeConfig.cache_path); None = off."},
    )

    def __post_init__(self) -> None:
        check_sampling("LlamaCppJudgeConfig", self.temperature, self.top_p, self.top_k, self.max_tokens)
        if self.n_ctx < 256:
            raise InputError(f"LlamaCppJudgeConfig.n_ctx must be at least 256, got {self.n_ctx}")


class LlamaCppJudge(Judge):
    """A GGUF chat model loaded with llama-cpp-python answers the questions, one at a time."""

    def __init__(self, config: LlamaCppJudgeConfig | str | os.PathLike[str], **overrides: Any) -> None:
        if not isinstance(config, LlamaCppJudgeConfig):
            config = LlamaCppJudgeConfig(model_path=str(config))
        self.config = config = config.with_overrides(**overrides)
        path = Path(config.model_path).expanduser()
        if not path.is_file():
            raise JudgeError(f"the judge GGUF {path} does not exist")
        llama_cpp = require("llama_cpp", feature="the llama.cpp judge", extra="train")
        kwargs: dict[str, Any] = dict(model_path=str(path), n_ctx=config.n_ctx, n_gpu_layers=config.n_gpu_layers,
                                      verbose=False)
        if config.n_threads:
            kwargs["n_threads"] = config.n_threads
        if config.chat_format:
            kwargs["chat_format"] = config.chat_format
        try:
            self._llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as exc:
            raise JudgeError(f"cannot load the judge GGUF {path} ({exc})") from exc
        super().__init__(cache_path=config.cache_path, seed=config.seed)
        self.model_id = f"gguf:{path.name}:{path.stat().st_size}"

    def __repr__(self) -> str:
        return f"LlamaCppJudge({self.config.model_path!r})"

    def sampling_params(self) -> dict[str, Any]:
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "max_tokens": c.max_tokens}

    def _generate(self, prompts: Sequence[list[dict[str, str]]], seeds: Sequence[int | None]) -> list[str]:
        if self._llm is None:
            raise JudgeError("this LlamaCppJudge is closed")
        c = self.config
        outputs = []
        for messages, seed in zip(prompts, seeds):
            self.stats.requests += 1
            try:
                out = self._llm.create_chat_completion(
                    messages=messages, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or 0, min_p=0.0,
                    max_tokens=c.max_tokens, seed=_random_seed() if seed is None else seed)
            except (ValueError, RuntimeError) as exc:
                raise JudgeError(f"the llama.cpp judge failed on a question ({exc}); a caption longer than "
                                 f"n_ctx={c.n_ctx} tokens needs a larger n_ctx") from exc
            outputs.append(out["choices"][0]["message"].get("content") or "")
        return outputs

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None and hasattr(llm, "close"):
            llm.close()
        super().close()


# ----------------------------------------------------------------------------- transformers


@dataclass(frozen=True)
class TransformersJudgeConfig(ConfigMixin):
    """A Hugging Face chat model as the judge (every field has a ``help`` text for CLIs)."""

    model: str = field(
        metadata={"help": "A hub id, a save_pretrained directory, or 'tiny' (the random-weight tiny VLM; "
                          "its answers are meaningless, for tests)."},
    )
    device: str = field(default="auto", metadata={"help": "'auto' (cuda, mps, cpu), 'cpu', 'cuda', 'cuda:N', 'mps'."})
    dtype: str = field(default="auto", metadata={"help": "'auto', 'float32', 'bfloat16' or 'float16'."})
    batch_size: int = field(default=16, metadata={"help": "Questions per generate() call."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (paper: 0.7); 0 = greedy."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling mass (paper: 0.8)."})
    top_k: int | None = field(default=20, metadata={"help": "Top-k (paper: 20); None or 0 = off."})
    max_tokens: int = field(default=128, metadata={"help": "Most new tokens per answer."})
    seed: int | None = field(default=None, metadata={"help": "Seed each batch from this; None = unseeded."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model repo's own Python code."})
    cache_path: str | None = field(
        default=None, metadata={"help": "SQLite answer cache (see HttpJudgeConfig.cache_path); None = off."},
    )

    def __post_init__(self) -> None:
        check_sampling("TransformersJudgeConfig", self.temperature, self.top_p, self.top_k, self.max_tokens)
        if self.batch_size < 1:
            raise InputError(f"TransformersJudgeConfig.batch_size must be at least 1, got {self.batch_size}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise InputError(f"TransformersJudgeConfig.dtype must be auto/float32/bfloat16/float16, got {self.dtype!r}")


class TransformersJudge(Judge):
    """A causal LM (or a VLM, text only) run with transformers; batched, left-padded generation."""

    def __init__(self, config: TransformersJudgeConfig | str, **overrides: Any) -> None:
        if not isinstance(config, TransformersJudgeConfig):
            config = TransformersJudgeConfig(model=str(config))
        self.config = config = config.with_overrides(**overrides)
        self._torch = require("torch", feature="the transformers judge", extra="train")
        self._tf = require("transformers", feature="the transformers judge", extra="train")
        source = self._resolve(config.model)
        self.device = pick_device(self._torch, config.device, JudgeError)
        self.tokenizer, self.model = self._load(source)
        super().__init__(cache_path=config.cache_path, seed=config.seed)
        self.model_id = f"hf:{config.model}"

    def __repr__(self) -> str:
        return f"TransformersJudge({self.config.model!r}, device={self.device!r})"

    def sampling_params(self) -> dict[str, Any]:
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "max_tokens": c.max_tokens}

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _resolve(model: str) -> str:
        from covip.sdk.models.tiny import build_tiny_vlm, resolve_tiny_name

        path = Path(model).expanduser()
        name = resolve_tiny_name(model)
        if name is not None and not path.is_dir():
            return str(build_tiny_vlm(name))
        return str(path) if path.is_dir() else model

    def _load(self, source: str) -> tuple[Any, Any]:
        tf, torch, c = self._tf, self._torch, self.config
        common: dict[str, Any] = {"trust_remote_code": c.trust_remote_code}
        if c.dtype == "auto":
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        else:
            dtype = getattr(torch, c.dtype)
        try:
            mcfg = tf.AutoConfig.from_pretrained(source, **common)
            if type(mcfg) in tf.AutoModelForCausalLM._model_mapping:
                model_cls, processor = tf.AutoModelForCausalLM, None
                tokenizer = tf.AutoTokenizer.from_pretrained(source, **common)
            elif type(mcfg) in tf.AutoModelForImageTextToText._model_mapping:
                model_cls = tf.AutoModelForImageTextToText
                processor = tf.AutoProcessor.from_pretrained(source, **common)
                tokenizer = getattr(processor, "tokenizer", processor)
            else:
                raise JudgeError(f"{source!r} ({mcfg.model_type}) is neither a causal LM nor an image-text model")
            model = model_cls.from_pretrained(source, dtype=dtype, **common).to(self.device).eval()
        except (OSError, ValueError, KeyError, ImportError) as exc:
            if isinstance(exc, CovipError):
                raise
            raise JudgeError(f"cannot load the judge model {c.model!r} ({type(exc).__name__}: {str(exc)[:300]})") from exc
        template = getattr(tokenizer, "chat_template", None) or getattr(processor, "chat_template", None)
        if not template:
            raise JudgeError(f"the judge model {c.model!r} has no chat template")
        self._template = template
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, model

    # ------------------------------------------------------------------ generation

    def _generate(self, prompts: Sequence[list[dict[str, str]]], seeds: Sequence[int | None]) -> list[str]:
        torch, c, tok = self._torch, self.config, self.tokenizer
        outputs: list[str] = []
        for start in range(0, len(prompts), c.batch_size):
            batch = prompts[start:start + c.batch_size]
            texts = [tok.apply_chat_template(m, chat_template=self._template, add_generation_prompt=True,
                                             tokenize=False) for m in batch]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            gen: dict[str, Any] = dict(max_new_tokens=c.max_tokens, pad_token_id=tok.pad_token_id)
            if c.temperature > 0:
                gen.update(do_sample=True, temperature=c.temperature, top_p=c.top_p, top_k=c.top_k or 0)
            else:
                gen.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            batch_seeds = [s for s in seeds[start:start + c.batch_size] if s is not None]
            if batch_seeds:
                torch.manual_seed(sum(batch_seeds) & 0x7FFFFFFF)
            self.stats.requests += 1
            try:
                with torch.inference_mode():
                    out = self.model.generate(**enc, **gen)
            except (RuntimeError, ValueError) as exc:
                raise JudgeError(f"the transformers judge failed ({type(exc).__name__}: {str(exc)[:300]})") from exc
            new = out[:, enc["input_ids"].shape[1]:]
            outputs.extend(tok.batch_decode(new, skip_special_tokens=True))
        return outputs

    def close(self) -> None:
        self.model = None
        super().close()
