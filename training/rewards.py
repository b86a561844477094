"""CoViP's verifiable rewards (the paper, "Rewards"; oyt9306/CoViP gspo_pmllm.py), plus a trl reward-function adapter.

One reward per sample, picked by the sample's type:

* ``"recognition"``: r_vis, the set F1 between the concept indices in the first ``\\boxed{...}`` of the
  completion and the indices of the concepts present in the query image (:func:`recognition_reward`).
* ``"caption"``: r_caps, a frozen judge answers multiple-choice questions from the caption alone
  (:func:`caption_reward`); the reward is -1 instead when the caption is degenerate
  (:func:`is_degenerate`) or over length (:func:`is_over_length`), see :func:`caption_sample_reward`.
* ``"verification"``: the RePIC-style yes/no question, 1 when right (:func:`verification_reward`).

:class:`CoViPReward` is the callable handed to trl's ``GRPOTrainer(reward_funcs=[...])``: it takes the
batch's completions plus the dataset columns, sends every (caption, question) pair of the batch to the
judge in ONE call, and keeps each sample's reward components for logging.

Parsing decisions (all documented on the functions):

* :func:`parse_boxed` returns the content of the FIRST ``\\boxed{`` with balanced braces; later boxes
  are ignored even when the first one is unbalanced (then the answer is unparsable).
* :func:`judge_letter`: option letters are recognised as standalone tokens (``A``, ``(B)``, ``C.``,
  ``\\text{D}``), not as substrings of words (``Cannot`` holds no ``C``). Exactly one distinct letter
  -> that letter; none or several distinct letters (a hedging judge, ``"A or B"``) -> ``"D"``.
* :func:`verification_reward`: the boxed text when there is a box, else the whole completion; exactly
  one of the words yes/no must occur in it, otherwise the answer is unparsable (reward 0).
"""

from __future__ import annotations

import ast
import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from covip.sdk.errors import InputError
from covip.training.constants import CANNOT_DETERMINE, OPTION_LETTERS, SAMPLE_TYPES

if TYPE_CHECKING:  # the judges import this module; import them lazily at run time
    from covip.training.judges import MCQA, Judge

__all__ = [
    "SAMPLE_TYPES",
    "DEFAULT_MAX_COMPLETION_TOKENS",
    "POSITIVE_WEIGHT",
    "DEGENERATE_REWARD",
    "parse_boxed",
    "parse_index_set",
    "recognition_reward",
    "judge_letter",
    "caption_reward_parts",
    "caption_reward",
    "DegenerationReport",
    "degeneration_report",
    "is_degenerate",
    "is_over_length",
    "parse_yes_no",
    "verification_reward",
    "caption_sample_reward",
    "completion_text",
    "RewardComponents",
    "CoViPReward",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_COMPLETION_TOKENS = 512
POSITIVE_WEIGHT = Fraction(1, 3)  # per correctly answered positive question (3 questions per concept)
DEGENERATE_REWARD = -1.0

# Degeneration thresholds (the paper), compared exactly with fractions: a ratio equal to the
# threshold fires.
MIN_SENTENCES = 4
SENTENCE_DUP_THRESHOLD = Fraction(3, 10)
MIN_WORDS_NGRAM = 20
NGRAM = 5
NGRAM_DUP_THRESHOLD = Fraction(3, 10)
CHUNK_WINDOWS = (10, 20, 30)
CHUNK_REPEAT_THRESHOLD = Fraction(1, 5)

_MAX_LITERAL_CHARS = 10_000  # ast.literal_eval on a runaway completion is not worth the time
_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_SENTENCE_SPLIT = re.compile(r"[.!?]+")
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z0-9])([ABCD])(?![A-Za-z0-9])")
_YES_NO = re.compile(r"\b(yes|no)\b")


# ----------------------------------------------------------------------------- parsing


def parse_boxed(text: str | None) -> str | None:
    """The content of the FIRST ``\\boxed{...}`` in ``text`` (nested braces kept), or None.

    ``\\boxed{{0, 2}}`` gives ``"{0, 2}"``. Only the first box counts: when its braces never balance the
    result is None, even if a later box is well formed.
    """
    if not isinstance(text, str):
        return None
    match = _BOX_OPEN.search(text)
    if match is None:
        return None
    depth, start = 1, match.end()
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def parse_index_set(text: str | None, *, boxed: bool = True) -> set[int] | None:
    """The predicted concept indices: the first box's content read as a Python literal.

    A list, tuple or set of integers gives its set (duplicates collapse; ``[]`` gives the empty set);
    a bare integer counts as a one-element set. Anything else (no box, unbalanced braces, not a
    literal, non-integer elements such as ``1.0``, ``"1"`` or ``True``) is unparsable: None.
    ``boxed=False`` reads ``text`` itself as the literal.
    """
    content = parse_boxed(text) if boxed else text
    if not isinstance(content, str):
        return None
    content = content.strip()
    if not content or len(content) > _MAX_LITERAL_CHARS:
        return None
    try:
        value = ast.literal_eval(content)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if _is_int(value):
        return {value}
    if isinstance(value, (list, tuple, set, frozenset)) and all(_is_int(v) for v in value):
        return set(value)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def recognition_reward(completion: str, present: Iterable[int]) -> float:
    """r_vis: set F1 = 2|P∩G| / (|P|+|G|) between predicted (P) and present (G) indices.

    0 when P∩G is empty (this includes an empty prediction ``\\boxed{[]}`` and an empty G) and when the
    prediction is unparsable.
    """
    predicted = parse_index_set(completion)
    if predicted is None:
        return 0.0
    gold = {int(i) for i in present}
    hits = len(predicted & gold)
    if hits == 0:
        return 0.0
    return 2.0 * hits / (len(predicted) + len(gold))


def judge_letter(text: str | None) -> str:
    """The option letter ('A'..'D') a judge chose, read from the first ``\\boxed{...}`` of its output.

    * No box, or an unbalanced one: ``"D"`` (unparsable counts as "cannot be determined").
    * A box holding only a letter, any case, optionally wrapped in brackets/punctuation
      (``a``, ``(B)``, ``C.``): that letter.
    * Otherwise the letters A-D that occur as standalone tokens (not inside a word, so
      ``"Cannot be determined"`` holds no ``C``; ``"B. Blue"``, ``"\\text{A}"`` work). Exactly one
      distinct letter -> that letter (repeating it, ``"A (A)"``, is fine); none -> ``"D"``; several
      distinct letters (the judge hedged, ``"A or D"``) -> ``"D"``: a hedge never earns a positive
      question's credit and is treated as "cannot be determined" on a negative question.
    """
    content = parse_boxed(text)
    if content is None:
        return CANNOT_DETERMINE
    bare = content.strip().strip("()[]{}.:*`'\" \t\n")
    if bare.upper() in OPTION_LETTERS:
        return bare.upper()
    letters = set(_LETTER_TOKEN.findall(content))
    return letters.pop() if len(letters) == 1 else CANNOT_DETERMINE


def _norm_letter(letter: Any, what: str) -> str:
    if not isinstance(letter, str) or letter.strip().upper() not in OPTION_LETTERS:
        raise InputError(f"{what} must be one of A, B, C, D; got {letter!r}")
    return letter.strip().upper()


def caption_reward_parts(pos_answers: Sequence[str], pos_correct: Sequence[str],
                         neg_answers: Sequence[str]) -> tuple[float, float]:
    """(positive part, negative part) of r_caps from the judge's letters.

    Positive: +1/3 for each positive answer equal to its correct letter (3 questions per present concept,
    so the maximum is the number of present concepts). Negative: -1/N_neg for each negative question NOT
    answered D (range -1..0; 0 when there are no negative questions).
    """
    if len(pos_answers) != len(pos_correct):
        raise InputError(f"{len(pos_answers)} positive answers but {len(pos_correct)} correct letters")
    right = sum(_norm_letter(a, "a judge answer") == _norm_letter(c, "a correct answer")
                for a, c in zip(pos_answers, pos_correct))
    pos = float(POSITIVE_WEIGHT * right)
    if not neg_answers:
        return pos, 0.0
    wrong = sum(_norm_letter(a, "a judge answer") != CANNOT_DETERMINE for a in neg_answers)
    return pos, -wrong / len(neg_answers)


def caption_reward(pos_answers: Sequence[str], pos_correct: Sequence[str], neg_answers: Sequence[str]) -> float:
    """r_caps = positive part + negative part (see :func:`caption_reward_parts`)."""
    pos, neg = caption_reward_parts(pos_answers, pos_correct, neg_answers)
    return pos + neg


# ----------------------------------------------------------------------------- degeneration


@dataclass(frozen=True)
class DegenerationReport:
    """Which degeneration rules fired for one text, with the measured ratios (None = rule not applicable).

    Rules (on the lowercased, whitespace-collapsed text; words = whitespace-separated tokens):

    * ``"sentences"``: >= 4 non-empty sentences (split on ``[.!?]+``) and
      (total - distinct) / total >= 0.3;
    * ``"ngrams"``: >= 20 words and (total 5-grams - distinct 5-grams) / total 5-grams >= 0.3;
    * ``"chunks"``: for a window w in (10, 20, 30) with >= 2w words: over all sliding w-word chunks,
      (sum of the occurrence counts of chunks occurring more than once) / (number of chunks) >= 0.2.
    """

    fired: tuple[str, ...]
    n_words: int
    n_sentences: int
    sentence_ratio: float | None
    ngram_ratio: float | None
    chunk_ratios: dict[int, float] = field(default_factory=dict)
    chunk_windows_fired: tuple[int, ...] = ()

    @property
    def degenerate(self) -> bool:
        return bool(self.fired)

    @property
    def rule(self) -> str | None:
        """The first rule that fired (in the order sentences, ngrams, chunks), or None."""
        return self.fired[0] if self.fired else None


def degeneration_report(text: str) -> DegenerationReport:
    """Evaluate every degeneration rule on ``text`` (see :class:`DegenerationReport`)."""
    norm = " ".join(str(text).lower().split())
    words = norm.split()
    fired: list[str] = []

    sentences = [s.strip() for s in _SENTENCE_SPLIT.split(norm) if s.strip()]
    sentence_ratio = None
    if len(sentences) >= MIN_SENTENCES:
        dup = Fraction(len(sentences) - len(set(sentences)), len(sentences))
        sentence_ratio = float(dup)
        if dup >= SENTENCE_DUP_THRESHOLD:
            fired.append("sentences")

    ngram_ratio = None
    if len(words) >= MIN_WORDS_NGRAM:
        grams = [tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)]
        dup = Fraction(len(grams) - len(set(grams)), len(grams))
        ngram_ratio = float(dup)
        if dup >= NGRAM_DUP_THRESHOLD:
            fired.append("ngrams")

    chunk_ratios: dict[int, float] = {}
    windows_fired: list[int] = []
    for w in CHUNK_WINDOWS:
        if len(words) < 2 * w:
            continue
        counts = Counter(tuple(words[i:i + w]) for i in range(len(words) - w + 1))
        repeated = sum(c for c in counts.values() if c > 1)
        ratio = Fraction(repeated, len(words) - w + 1)
        chunk_ratios[w] = float(ratio)
        if ratio >= CHUNK_REPEAT_THRESHOLD:
            windows_fired.append(w)
    if windows_fired:
        fired.append("chunks")

    return DegenerationReport(tuple(fired), len(words), len(sentences), sentence_ratio, ngram_ratio,
                              chunk_ratios, tuple(windows_fired))


def is_degenerate(text: str) -> bool:
    """True when any degeneration rule fires (R(s) > 0); see :class:`DegenerationReport`."""
    return degeneration_report(text).degenerate


def is_over_length(n_tokens: int | None, max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS) -> bool:
    """True when a completion used the whole budget: ``n_tokens >= max_completion_tokens - 1``.

    With the paper's 512-token limit, 511 and 512 tokens are over length, 510 is not. ``None`` (count
    unknown) is never over length.
    """
    return n_tokens is not None and n_tokens >= max_completion_tokens - 1


# ----------------------------------------------------------------------------- verification


def parse_yes_no(text: str | None) -> str | None:
    """'yes' or 'no' from a completion: the first box's content when there is a box, else the whole
    text; exactly one of the words yes/no must occur (case-insensitive), else None (unparsable)."""
    if not isinstance(text, str):
        return None
    content = parse_boxed(text)
    found = set(_YES_NO.findall((text if content is None else content).lower()))
    return found.pop() if len(found) == 1 else None


def verification_reward(completion: str, answer: str | bool) -> float:
    """1.0 when the yes/no answer in ``completion`` equals ``answer`` ('yes'/'no' or a bool), else 0.0."""
    if isinstance(answer, bool):
        gold = "yes" if answer else "no"
    elif isinstance(answer, str) and answer.strip().lower() in ("yes", "no"):
        gold = answer.strip().lower()
    else:
        raise InputError(f"a verification answer must be 'yes', 'no' or a bool; got {answer!r}")
    return 1.0 if parse_yes_no(completion) == gold else 0.0


# ----------------------------------------------------------------------------- caption samples


def caption_sample_reward(caption: str, pos_answers: Sequence[str] = (), pos_correct: Sequence[str] = (),
                          neg_answers: Sequence[str] = (), *, n_tokens: int | None = None,
                          max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS) -> float:
    """The reward of one caption sample: -1 when degenerate or over length, else r_caps.

    ``n_tokens`` is the completion's token count (None skips the over-length rule).
    """
    if is_over_length(n_tokens, max_completion_tokens) or is_degenerate(caption):
        return DEGENERATE_REWARD
    return caption_reward(pos_answers, pos_correct, neg_answers)


# ----------------------------------------------------------------------------- trl adapter


def completion_text(completion: Any) -> str:
    """The text of one trl completion: a string, or a conversational list of messages (the assistant
    message's content, itself a string or a list of ``{"type": "text", "text": ...}`` parts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence):
        msgs = [m for m in completion if isinstance(m, Mapping)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "".join(_content_text(m.get("content")) for m in assistant)
    raise InputError(f"a completion must be a string or a list of chat messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(p.get("text") or "" for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


@dataclass
class RewardComponents:
    """One sample's reward and its parts (None where a part does not apply to the sample's type)."""

    index: int
    sample_type: str
    reward: float
    r_vis: float | None = None
    r_caps_pos: float | None = None
    r_caps_neg: float | None = None
    r_verify: float | None = None
    degenerate: bool | None = None
    degeneration_rule: str | None = None
    over_length: bool | None = None
    n_tokens: int | None = None
    judge_answers: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_METRICS = ("r_vis", "r_caps_pos", "r_caps_neg", "r_verify", "degenerate", "over_length")


class CoViPReward:
    """trl reward function for a mixed CoViP batch: ``reward(prompts=None, completions=None, **columns)``.

    Columns (one list entry per completion, as trl passes every dataset column):

    * ``sample_type``: ``"caption"``, ``"recognition"`` or ``"verification"`` (required);
    * recognition: ``present`` (the present concept indices; else ``gts``, else ``answer``);
    * caption: ``pos_qas`` (the present concepts' MCQAs, each with its correct letter) and ``neg_qas``
      (the absent distractors' MCQAs; their correct answer is D), as :class:`~covip.training.judges.MCQA`
      or dicts (``question``, ``options`` {A, B, C[, D]}, ``correct_answer``/``answer``);
    * verification: ``answer`` ('yes'/'no' or a bool);
    * ``completion_ids`` (trl passes it): token ids of each completion (trl's include the end-of-sequence
      token), counted for the over-length rule; without them ``tokenizer`` counts the text's tokens, and
      with neither the over-length rule is skipped (a warning is logged once).

    The -1 penalties (degenerate, over length) apply to caption samples only; recognition and
    verification completions are scored from their answer alone.

    All caption questions of a batch go to ``judge.answer`` in ONE call. Degenerate or over-length
    captions get -1 without asking the judge; an empty caption is not sent either (every answer is D:
    the reward is then 0 minus nothing). After each call :attr:`last_components` holds one
    :class:`RewardComponents` per completion and :attr:`component_log` the same as dicts; means are
    logged (``logging`` at INFO) and, when trl passes ``log_metric``, reported as ``covip/<name>``.
    """

    def __init__(self, judge: Judge | None, max_completion_tokens: int = DEFAULT_MAX_COMPLETION_TOKENS,
                 tokenizer: Any = None, *, name: str = "covip_reward") -> None:
        if max_completion_tokens < 2:
            raise InputError(f"max_completion_tokens must be at least 2, got {max_completion_tokens}")
        self.judge = judge
        self.max_completion_tokens = int(max_completion_tokens)
        self.tokenizer = tokenizer
        self.__name__ = name
        self.last_components: list[RewardComponents] = []
        self.component_log: list[dict[str, Any]] = []
        self.n_calls = 0
        self._warned_no_count = False

    def __repr__(self) -> str:
        return (f"CoViPReward(judge={type(self.judge).__name__ if self.judge else None}, "
                f"max_completion_tokens={self.max_completion_tokens})")

    def __call__(self, prompts: Sequence[Any] | None = None, completions: Sequence[Any] | None = None,
                 **columns: Any) -> list[float]:
        comps = self.score(completions, **columns)
        return [c.reward for c in comps]

    # ------------------------------------------------------------------ scoring

    def score(self, completions: Sequence[Any] | None, **columns: Any) -> list[RewardComponents]:
        """Score a batch and return every sample's components (``__call__`` returns just the rewards)."""
        from covip.training.judges import MCQA, JudgeItem

        if completions is None:
            raise InputError("CoViPReward needs the batch's completions")
        texts = [completion_text(c) for c in completions]
        n = len(texts)
        types = self._column(columns, "sample_type", n, required=True)
        ids = columns.get("completion_ids")
        log_metric = columns.get("log_metric")

        results: list[RewardComponents | None] = [None] * n
        pending: list[tuple[int, list[MCQA], list[MCQA], int | None]] = []
        items: list[JudgeItem] = []
        for i, (text, kind) in enumerate(zip(texts, types)):
            kind = str(kind).strip().lower() if kind is not None else kind
            if kind == "recognition":
                present = self._row(columns, ("present", "gts", "answer"), i, n)
                r = recognition_reward(text, present)
                results[i] = RewardComponents(i, kind, r, r_vis=r)
            elif kind == "verification":
                r = verification_reward(text, self._row(columns, ("answer",), i, n))
                results[i] = RewardComponents(i, kind, r, r_verify=r)
            elif kind == "caption":
                n_tokens = self._count_tokens(text, ids[i] if ids is not None else None)
                over = is_over_length(n_tokens, self.max_completion_tokens)
                report = degeneration_report(text)
                if over or report.degenerate:
                    results[i] = RewardComponents(i, kind, DEGENERATE_REWARD, degenerate=report.degenerate,
                                                  degeneration_rule=report.rule, over_length=over,
                                                  n_tokens=n_tokens)
                    continue
                try:
                    pos = [MCQA.coerce(q, default=None) for q in self._row(columns, ("pos_qas",), i, n) or ()]
                except InputError as exc:
                    raise InputError(f"sample {i}: a positive question: {exc}") from None
                neg = [MCQA.coerce(q) for q in self._row(columns, ("neg_qas",), i, n) or ()]
                pending.append((i, pos, neg, n_tokens))
                if text.strip():
                    items.extend(JudgeItem(text, q) for q in pos + neg)
            else:
                raise InputError(f"sample {i}: unknown sample_type {kind!r}; expected one of {SAMPLE_TYPES}")

        letters: list[str] = []
        if items:
            if self.judge is None:
                raise InputError("this batch has caption samples but CoViPReward was built without a judge")
            letters = list(self.judge.answer(items))
            if len(letters) != len(items):
                raise InputError(f"the judge returned {len(letters)} answers for {len(items)} questions")
        cursor = 0
        for i, pos, neg, n_tokens in pending:
            k = len(pos) + len(neg)
            if texts[i].strip():
                answers, cursor = letters[cursor:cursor + k], cursor + k
            else:
                answers = [CANNOT_DETERMINE] * k
            p, q = caption_reward_parts(answers[:len(pos)], [x.answer for x in pos], answers[len(pos):])
            results[i] = RewardComponents(i, "caption", p + q, r_caps_pos=p, r_caps_neg=q, degenerate=False,
                                          over_length=False, n_tokens=n_tokens, judge_answers=list(answers))

        comps = [c for c in results if c is not None]
        self.n_calls += 1
        self.last_components = comps
        self.component_log = [c.as_dict() for c in comps]
        self._log(comps, log_metric)
        return comps

    def _count_tokens(self, text: str, ids: Any) -> int | None:
        if ids is not None:
            return len(ids)
        if self.tokenizer is not None:
            enc = getattr(self.tokenizer, "encode", None)
            if enc is not None:
                try:
                    return len(enc(text, add_special_tokens=False))
                except TypeError:
                    return len(enc(text))
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not self._warned_no_count:
            logger.warning("CoViPReward: no completion_ids and no tokenizer: the over-length rule is skipped")
            self._warned_no_count = True
        return None

    @staticmethod
    def _column(columns: Mapping[str, Any], name: str, n: int, *, required: bool = False) -> list[Any]:
        values = columns.get(name)
        if values is None:
            if required:
                raise InputError(f"CoViPReward needs the dataset column {name!r} (one value per completion)")
            return [None] * n
        if len(values) != n:
            raise InputError(f"column {name!r} has {len(values)} values for {n} completions")
        return list(values)

    @classmethod
    def _row(cls, columns: Mapping[str, Any], names: tuple[str, ...], i: int, n: int) -> Any:
        for name in names:
            if columns.get(name) is not None:
                value = cls._column(columns, name, n)[i]
                if value is not None:
                    return value
        if names == ("pos_qas",) or names == ("neg_qas",):
            return None
        raise InputError(f"sample {i} needs the column {' or '.join(map(repr, names))}")

    def _log(self, comps: list[RewardComponents], log_metric: Any) -> None:
        means: dict[str, float] = {}
        for name in _METRICS:
            values = [float(getattr(c, name)) for c in comps if getattr(c, name) is not None]
            if values:
                means[name] = sum(values) / len(values)
                if callable(log_metric):
                    for v in values:  # trl averages every value it gets over the logging step
                        log_metric(f"covip/{name}", v)
        rewards = [c.reward for c in comps]
        if rewards:
            means["reward"] = sum(rewards) / len(rewards)
        logger.info("CoViPReward batch %d (%d samples): %s", self.n_calls, len(comps),
                    ", ".join(f"{k}={v:.4f}" for k, v in means.items()))
        for c in comps:
            logger.debug("CoViPReward sample %s", c.as_dict())
