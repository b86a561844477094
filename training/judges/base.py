"""The judge interface, its item types, the judge prompt, and the optional on-disk answer cache.

A judge answers one multiple-choice question about one caption, seeing ONLY the caption and the
question (never the images or the dialogues), and replies ``\\boxed{X}`` with X in A-D, D meaning
"cannot be determined from the description". :func:`covip.training.rewards.judge_letter` reads the
letter (unparsable = D).

Sampling and caching. The paper samples the judge (temperature 0.7, top_p 0.8, top_k 20), so the reward
is noisy on purpose, and asking the same question twice may give two answers. Every judge here keeps,
per prompt, a counter of how often it was asked (the *sample index*: 0 for the first ask, 1 for the
second, also within one batch). When a ``cache_path`` is configured (off by default) answers are stored
in SQLite under ``sha256(model, prompt, sampling params, sample index)``: a re-run of the same
experiment replays the same answers without querying again, while within one run a repeated question
still gets a fresh sample (a new index). A configured ``seed`` derives a per-request seed from the same
key, so back ends that honour seeds give reproducible samples even without the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from covip.sdk import prompts
from covip.sdk.errors import InputError, JudgeError
from covip.training.constants import OPTION_LETTERS, UNDETERMINED
from covip.training.data.schema import MCQA
from covip.training.rewards import judge_letter

__all__ = [
    "MCQA",
    "JudgeItem",
    "Judge",
    "JudgeStats",
    "AnswerCache",
    "CANNOT_DETERMINE_TEXT",
    "JUDGE_PROMPT_VERSION",
    "JUDGE_SYSTEM_PROMPT",
    "JUDGE_STYLES",
    "PAPER_JUDGE_MAX_TOKENS",
    "judge_messages",
    "check_sampling",
    "normalize_text",
]

logger = logging.getLogger(__name__)

CANNOT_DETERMINE_TEXT = UNDETERMINED
"""Option D's text (the one text covip uses, :data:`covip.training.constants.UNDETERMINED`)."""
JUDGE_PROMPT_VERSION = 1
JUDGE_SYSTEM_PROMPT = prompts.JUDGE_SYSTEM
"""The strict judge's system turn in covip's prompt pack (:data:`covip.sdk.prompts.DEFAULT_PACK`)."""
JUDGE_STYLES = ("strict", "paper")
"""``strict``: the judge replies with a lone boxed letter (training rewards, covip's evaluation protocol).
``paper``: as the authors' CapEval judge, it may reason briefly first and ends with its boxed letter."""
PAPER_JUDGE_MAX_TOKENS = 4096
"""Token budget of a ``paper``-style judge: the authors set no cap (their server's context was 8,192)."""


@dataclass(frozen=True)
class JudgeItem:
    """What the judge sees: one caption and one question about it."""

    caption: str
    question: MCQA

    def __post_init__(self) -> None:
        if not isinstance(self.caption, str):
            raise InputError(f"a judge item's caption must be a string, got {type(self.caption).__name__}")
        object.__setattr__(self, "question", MCQA.coerce(self.question))


def judge_messages(item: JudgeItem, style: str = "strict",
                   pack: prompts.PromptPack | None = None) -> list[dict[str, str]]:
    """The chat for one item in a judge style (:data:`JUDGE_STYLES`), from the prompt pack
    (:func:`covip.sdk.prompts.judge_messages`; covip's own wording by default)."""
    q = item.question
    return prompts.judge_messages(item.caption, q.question, {k: q.options[k] for k in OPTION_LETTERS}, style=style,
                                  pack=pack)


def check_sampling(owner: str, temperature: float, top_p: float, top_k: int | None, max_tokens: int) -> None:
    """Reject sampling settings every back end would refuse."""
    if temperature < 0 or not 0 < top_p <= 1 or (top_k is not None and top_k < 0) or max_tokens < 1:
        raise InputError(f"{owner}: need temperature >= 0, top_p in (0, 1], top_k >= 0 or None, "
                         f"max_tokens >= 1; got {temperature}, {top_p}, {top_k}, {max_tokens}")


@dataclass
class JudgeStats:
    """Counters of one judge: questions asked, answers from the cache, requests sent, retries."""

    questions: int = 0
    cache_hits: int = 0
    requests: int = 0
    retries: int = 0
    max_in_flight: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class AnswerCache:
    """Judge outputs in one SQLite table (via sqlite-utils), keyed by a hash of the request."""

    TABLE = "judge_answers"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import sqlite_utils

        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
            self.db = sqlite_utils.Database(conn)
            self.db.execute("PRAGMA journal_mode=WAL")
            if self.TABLE not in self.db.table_names():
                self.db[self.TABLE].create({"key": str, "model": str, "text": str, "created": float}, pk="key")
        except (OSError, sqlite3.Error) as exc:
            raise JudgeError(f"cannot open the judge answer cache {self.path} ({exc})") from exc
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start:start + 500])
                marks = ",".join("?" * len(chunk))
                rows = self.db.execute(f"SELECT key, text FROM {self.TABLE} WHERE key IN ({marks})", chunk)
                found.update({k: t for k, t in rows.fetchall()})
        return found

    def put_many(self, rows: Sequence[tuple[str, str, str]]) -> None:
        """Store (key, model, text) rows in one transaction."""
        if not rows:
            return
        now = time.time()
        with self._lock, self.db.conn:
            self.db[self.TABLE].upsert_all(
                [{"key": k, "model": m, "text": t, "created": now} for k, m, t in rows], pk="key")

    def __len__(self) -> int:
        with self._lock:
            return self.db[self.TABLE].count

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()


class Judge(ABC):
    """Answers multiple-choice questions about captions: ``answer(items) -> ["A" | "B" | "C" | "D", ...]``.

    Subclasses implement :meth:`_generate` (raw judge outputs for chat prompts); this base class adds the
    prompt, the sample-index bookkeeping, the optional cache and letter parsing. Judges are context
    managers; :meth:`close` frees their model, connection pool or cache.
    """

    #: identifies the model behind the judge in cache keys (set by subclasses)
    model_id: str = "judge"

    def __init__(self, *, cache_path: str | os.PathLike[str] | None = None, seed: int | None = None) -> None:
        self.cache = AnswerCache(cache_path) if cache_path else None
        self.seed = seed
        self.stats = JudgeStats()
        self._asked: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.last_outputs: list[str] = []

    # ------------------------------------------------------------------ public API

    def answer(self, items: Sequence[JudgeItem]) -> list[str]:
        """One letter A-D per item (unparsable judge output = D), in the order of ``items``."""
        outputs = self.complete(items)
        return [judge_letter(t) for t in outputs]

    def complete(self, items: Sequence[JudgeItem], style: str = "strict",
                 pack: prompts.PromptPack | None = None) -> list[str]:
        """The judge's raw output text for each item (cached ones come from the cache); ``style`` picks the
        judge prompt (:data:`JUDGE_STYLES`), ``pack`` its wording."""
        items = [it if isinstance(it, JudgeItem) else _coerce_item(it) for it in items]
        return self.complete_messages([judge_messages(it, style, pack) for it in items])

    def complete_messages(self, prompts: Sequence[list[dict[str, str]]]) -> list[str]:
        """Raw outputs for ready-made chat prompts (other grading tasks, e.g. a Correct/Wrong check), with the
        same sample-index bookkeeping, cache and stats as :meth:`complete`."""
        prompts = list(prompts)
        if not prompts:
            return []
        started = time.perf_counter()
        keys, hashes = self._keys(prompts)
        try:
            cached = self.cache.get_many(keys) if self.cache is not None else {}
            todo = [i for i, k in enumerate(keys) if k not in cached]
            outputs: list[str | None] = [cached.get(k) for k in keys]
            fresh = self._generate([prompts[i] for i in todo], [self._request_seed(keys[i]) for i in todo]) \
                if todo else []
            if len(fresh) != len(todo):
                raise JudgeError(f"{type(self).__name__} returned {len(fresh)} outputs for {len(todo)} prompts")
        except BaseException:
            with self._lock:  # a failed call asked nothing: the same batch retried reuses the sample indices
                self._asked.subtract(hashes)
            raise
        if todo:
            for i, text in zip(todo, fresh):
                outputs[i] = text if isinstance(text, str) else ""
            if self.cache is not None:
                self.cache.put_many([(keys[i], self.model_id, outputs[i] or "") for i in todo])
        self.stats.questions += len(prompts)
        self.stats.cache_hits += len(prompts) - len(todo)
        self.stats.seconds += time.perf_counter() - started
        self.last_outputs = [o or "" for o in outputs]
        return list(self.last_outputs)

    def sampling_params(self) -> dict[str, Any]:
        """The sampling settings that change answers (part of the cache key)."""
        return {}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _generate(self, prompts: Sequence[list[dict[str, str]]], seeds: Sequence[int | None]) -> list[str]:
        """Raw outputs for chat prompts (``seeds[i]`` is None unless a seed is configured)."""

    # ------------------------------------------------------------------ internals

    def _keys(self, prompts: Sequence[list[dict[str, str]]]) -> tuple[list[str], list[str]]:
        """(cache key, prompt hash) per prompt; advances each prompt's sample index."""
        params = json.dumps(self.sampling_params(), sort_keys=True)
        keys, hashes = [], []
        with self._lock:
            for messages in prompts:
                body = json.dumps({"model": self.model_id, "messages": messages, "sampling": params,
                                   "prompt_version": JUDGE_PROMPT_VERSION}, sort_keys=True)
                prompt_hash = hashlib.sha256(body.encode()).hexdigest()
                index = self._asked[prompt_hash]
                self._asked[prompt_hash] += 1
                keys.append(hashlib.sha256(f"{prompt_hash}:{index}".encode()).hexdigest())
                hashes.append(prompt_hash)
        return keys, hashes

    def _request_seed(self, key: str) -> int | None:
        if self.seed is None:
            return None
        return int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def _coerce_item(obj: Any) -> JudgeItem:
    if isinstance(obj, Mapping) and "caption" in obj and "question" in obj:
        return JudgeItem(obj["caption"], MCQA.coerce(obj["question"]))
    if isinstance(obj, tuple) and len(obj) == 2:
        return JudgeItem(obj[0], MCQA.coerce(obj[1]))
    raise InputError(f"a judge item must be a JudgeItem, a (caption, question) pair or a mapping; "
                     f"got {type(obj).__name__}")


_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lowercase, every non-alphanumeric character a space, whitespace collapsed (for lexical matching)."""
    return _WS.sub(" ", re.sub(r"[^0-9a-z]+", " ", str(text).lower())).strip()

