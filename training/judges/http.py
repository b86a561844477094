"""A judge behind an OpenAI-compatible chat endpoint (vLLM, llama.cpp's server, SGLang, ...).

Requests go out through the ``openai`` client library from a thread pool (``concurrency`` at once),
each with its own timeout; connection errors, timeouts, 408/409/429 and 5xx answers are retried with
exponential backoff (plus jitter), other HTTP errors (400, 401, 404 unknown model, ...) fail at once.
When a question still has no answer the whole call raises :class:`~covip.sdk.errors.JudgeError`: a
reward without its judge is meaningless, so nothing is silently scored as D.

Sampling follows the paper's judge: temperature 0.7, top_p 0.8, top_k 20. ``top_k`` (and ``min_p``) are
not OpenAI API fields; they go in the request body's extra fields, which vLLM and llama.cpp's server
read. Set ``top_k=None`` for a server that rejects unknown fields.

Caching is off unless ``cache_path`` is set; see :mod:`covip.training.judges.base` for what it means
for a sampled (noisy) judge.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from covip.sdk.errors import InputError, JudgeError
from covip.sdk.support import ConfigMixin, require
from covip.training.judges.base import Judge, check_sampling

__all__ = ["HttpJudge", "HttpJudgeConfig"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429}


@dataclass(frozen=True)
class HttpJudgeConfig(ConfigMixin):
    """Where the judge server is and how to ask it (every field has a ``help`` text for CLIs)."""

    base_url: str = field(metadata={"help": "The OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1."})
    model: str | None = field(
        default=None,
        metadata={"help": "The served model name; None asks the server (/v1/models) and takes the first."},
    )
    api_key: str | None = field(
        default=None,
        metadata={"help": "API key; None reads $COVIP_JUDGE_API_KEY, else sends 'EMPTY' (local servers)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (paper: 0.7)."})
    top_p: float = field(default=0.8, metadata={"help": "Nucleus sampling mass (paper: 0.8)."})
    top_k: int | None = field(
        default=20,
        metadata={"help": "Top-k (paper: 20), sent as an extra body field; None for servers that reject it."},
    )
    min_p: float | None = field(
        default=None, metadata={"help": "min_p as an extra body field (None = the server's default)."},
    )
    max_tokens: int = field(default=128, metadata={"help": "Most tokens the judge may write per answer."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    timeout_s: float = field(default=60.0, metadata={"help": "Per-request timeout in seconds."})
    max_retries: int = field(default=3, metadata={"help": "Retries per request after the first try."})
    backoff_s: float = field(default=0.5, metadata={"help": "First retry delay; doubles each retry."})
    backoff_max_s: float = field(default=20.0, metadata={"help": "Upper bound of one retry delay."})
    seed: int | None = field(
        default=None,
        metadata={"help": "Derive a per-request seed from this (reproducible samples where the server "
                          "honours seeds); None = unseeded."},
    )
    cache_path: str | None = field(
        default=None,
        metadata={"help": "SQLite file caching answers by (model, prompt, sampling, sample index); None = "
                          "no cache. A cache replays a run's judge samples instead of drawing new ones."},
    )

    def __post_init__(self) -> None:
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise InputError(f"HttpJudgeConfig.base_url must start with http:// or https://, got {self.base_url!r}")
        check_sampling("HttpJudgeConfig", self.temperature, self.top_p, self.top_k, self.max_tokens)
        if self.concurrency < 1 or self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            raise InputError("HttpJudgeConfig: need concurrency >= 1, timeout_s > 0, max_retries >= 0, "
                             "backoff_s >= 0")


class HttpJudge(Judge):
    """A judge model served behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    def __init__(self, config: HttpJudgeConfig | str, **overrides: Any) -> None:
        if isinstance(config, str):
            config = HttpJudgeConfig(base_url=config)
        self.config = config = config.with_overrides(**overrides)
        openai = require("openai", feature="the HTTP judge", extra="train")
        self._openai = openai
        api_key = config.api_key or os.environ.get("COVIP_JUDGE_API_KEY") or "EMPTY"
        self._client = openai.OpenAI(base_url=config.base_url.rstrip("/"), api_key=api_key,
                                     timeout=config.timeout_s, max_retries=0)
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._flight_lock = threading.Lock()
        self._model = config.model
        super().__init__(cache_path=config.cache_path, seed=config.seed)
        self.model_id = f"http:{self._model}" if self._model else f"http:{config.base_url}"

    def __repr__(self) -> str:
        return f"HttpJudge({self.config.base_url!r}, model={self._model!r})"

    @property
    def model(self) -> str:
        """The served model name (asked from the server on first use when not configured)."""
        if self._model is None:
            self._model = self._discover_model()
            self.model_id = f"http:{self._model}"
        return self._model

    def sampling_params(self) -> dict[str, Any]:
        c = self.config
        return {"temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "min_p": c.min_p,
                "max_tokens": c.max_tokens}

    def complete_messages(self, prompts: Sequence[Any]) -> list[str]:
        if prompts and self._model is None:
            _ = self.model  # resolve before the cache keys are computed (they name the model)
        return super().complete_messages(prompts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._client.close()
        super().close()

    # ------------------------------------------------------------------ requests

    def _generate(self, prompts: Sequence[list[dict[str, str]]], seeds: Sequence[int | None]) -> list[str]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="covip-judge")
        futures: list[Future[str]] = [self._pool.submit(self._request, p, s) for p, s in zip(prompts, seeds)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            wait(futures)  # let requests already running finish before raising
            raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def _request(self, messages: list[dict[str, str]], seed: int | None) -> str:
        c, openai = self.config, self._openai
        extra: dict[str, Any] = {}
        if c.top_k is not None:
            extra["top_k"] = c.top_k
        if c.min_p is not None:
            extra["min_p"] = c.min_p
        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, temperature=c.temperature,
                                      top_p=c.top_p, max_tokens=c.max_tokens, timeout=c.timeout_s)
        if seed is not None:
            kwargs["seed"] = seed
        if extra:
            kwargs["extra_body"] = extra
        last: Exception | None = None
        for attempt in range(c.max_retries + 1):
            if attempt:
                delay = min(c.backoff_max_s, c.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                with self._flight_lock:
                    self.stats.retries += 1
                logger.debug("judge request retry %d in %.2fs after %s", attempt, delay, last)
                time.sleep(delay)
            with self._flight_lock:
                self._in_flight += 1
                self.stats.requests += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
            try:
                response = self._client.chat.completions.create(**kwargs)
                return response.choices[0].message.content or ""
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                last = exc
            except openai.APIStatusError as exc:
                if exc.status_code in _RETRY_STATUS or exc.status_code >= 500:
                    last = exc
                else:
                    raise JudgeError(
                        f"the judge server at {c.base_url} refused the request for model {self.model!r}: "
                        f"HTTP {exc.status_code} {_short(exc)}; check the model name and the server's options"
                    ) from exc
            except (IndexError, AttributeError) as exc:
                raise JudgeError(f"the judge server at {c.base_url} sent a response without a message") from exc
            finally:
                with self._flight_lock:
                    self._in_flight -= 1
        raise JudgeError(
            f"the judge server at {c.base_url} (model {self.model!r}) did not answer after "
            f"{c.max_retries + 1} attempt(s) with a {c.timeout_s:g}s timeout each: "
            f"{type(last).__name__}: {_short(last)}. Is the server running and reachable?"
        ) from last

    def _discover_model(self) -> str:
        c, openai = self.config, self._openai
        last: Exception | None = None
        for attempt in range(c.max_retries + 1):
            if attempt:
                time.sleep(min(c.backoff_max_s, c.backoff_s * 2 ** (attempt - 1)))
            try:
                models = [m.id for m in self._client.models.list()]
            except (openai.APITimeoutError, openai.APIConnectionError, openai.APIStatusError) as exc:
                last = exc
                continue
            if not models:
                raise JudgeError(f"the judge server at {c.base_url} serves no model")
            return models[0]
        raise JudgeError(
            f"cannot list the models of the judge server at {c.base_url} after {c.max_retries + 1} "
            f"attempt(s): {type(last).__name__}: {_short(last)}. Is the server running? Or name the "
            "model (HttpJudgeConfig.model, or 'http://host:port/v1#model')."
        ) from last


def _short(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text if len(text) <= 300 else text[:300] + "..."
