"""The one typed, validated sample schema of covip training and evaluation data.

Two dataclasses, both frozen and validated when built (so a :class:`Sample` that exists is valid):

* :class:`MCQA`: one multiple-choice question about one context concept: ``id``, ``question``,
  ``options`` (exactly ``A``/``B``/``C``/``D``; ``D`` is always a "cannot be determined" option),
  ``correct`` (the letter a judge must answer *for this sample*), ``concept_index`` (the context
  position of the concept it asks about; None when the source does not say) and ``fact_answer``
  (the letter that the concept's own dialogue supports, A/B/C; None when unknown).
  For a *positive* question (its concept is in the query image) ``correct == fact_answer``; for a
  *negative* one (an absent distractor concept) ``correct`` is ``D`` and ``fact_answer`` keeps the
  letter the dialogue supports, which the authors' files store as ``correct_answer``.
* :class:`Sample`: one training or evaluation sample of one of :data:`SAMPLE_TYPES`:

  ========================  ============================================================================
  field                     meaning
  ========================  ============================================================================
  ``id``                    unique within a file
  ``sample_type``           ``caption`` (r_caps), ``recognition`` (r_vis) or ``verification`` (yes/no)
  ``images``                image paths, the query image LAST: ``n`` context images then the query
                            (verification: the reference image then the query, so exactly 2)
  ``dialogues``             one dialogue per context image (caption: required; others: optional)
  ``concept_names``         one name per context image, or empty when the source has none
  ``present``               sorted indices of context concepts visible in the query image; None when
                            the source does not record them (the authors' training JSON)
  ``pos_qas``               the present concepts' questions (3 per concept by construction)
  ``neg_qas``               the absent concepts' questions, every one with ``correct == 'D'``
  ``answer``                recognition: the present indices (a tuple, same as ``present``);
                            verification: ``'yes'`` or ``'no'``; caption: None
  ``split``                 ``train``, ``test`` or another short name
  ``meta``                  free JSON-able provenance (source file, original keys, world facts, ...)
  ========================  ============================================================================

Every validation failure raises :class:`~covip.sdk.errors.DataError` whose message names the sample
id and the field, e.g. ``sample 'train-3': field 'pos_qas[1].options': ...``.

Files: :func:`write_jsonl` writes one :meth:`Sample.to_dict` per line atomically (temporary file,
fsync, rename); :func:`read_jsonl` reads them back, naming the line of any bad record. Image paths
are stored as given (the synthetic generator stores them relative to the JSONL's folder);
:func:`resolve_images` turns them into checked paths under a root.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk import files
from covip.sdk.errors import DataError
from covip.training.constants import ANSWER_LETTERS, OPTION_LETTERS, SAMPLE_TYPES, UNDETERMINED

__all__ = [
    "SAMPLE_TYPES",
    "OPTION_LETTERS",
    "ANSWER_LETTERS",
    "UNDETERMINED",
    "QAS_PER_CONCEPT",
    "SCHEMA_VERSION",
    "MCQA",
    "Sample",
    "is_undetermined_text",
    "read_jsonl",
    "iter_jsonl",
    "write_jsonl",
    "atomic_write_text",
    "write_json",
    "atomic_write_bytes",
    "resolve_images",
    "resolve_image_path",
]

SCHEMA_VERSION = 1
"""Version written in every record's ``"schema"`` key; a newer one is refused on read."""
QAS_PER_CONCEPT = 3
"""Questions generated per concept (the authors' and the synthetic generator's number)."""

_UNDETERMINED_RE = re.compile(r"\b(can ?not|can't|cannot|could not|not) be (determined|answered|known|told)\b",
                              re.IGNORECASE)
_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def is_undetermined_text(text: str) -> bool:
    """True when an option text says the answer cannot be determined (option D's role)."""
    return bool(_UNDETERMINED_RE.search(text or ""))


def _where(sample_id: str | None, fld: str) -> str:
    return f"sample {sample_id!r}: field {fld!r}" if sample_id is not None else f"field {fld!r}"


def _fail(sample_id: str | None, fld: str, problem: str) -> DataError:
    err = DataError(f"{_where(sample_id, fld)}: {problem}", sample_id=sample_id, field=fld)
    err.problem = problem  # type: ignore[attr-defined]  # lets a caller re-place it under another path
    return err


def _text(value: Any, sample_id: str | None, fld: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(sample_id, fld, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _fail(sample_id, fld, "must not be empty")
    return value


def _index(value: Any, sample_id: str | None, fld: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        raise _fail(sample_id, fld, f"must be an integer index, got {value!r}")
    if value < 0:
        raise _fail(sample_id, fld, f"must be >= 0, got {value}")
    return value


def _str_list(value: Any, sample_id: str | None, fld: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _fail(sample_id, fld, f"must be a list of strings, got {type(value).__name__}")
    return tuple(_text(v, sample_id, f"{fld}[{i}]") for i, v in enumerate(value))


@dataclass(frozen=True)
class MCQA:
    """One multiple-choice question about one concept; validated on creation (see the module doc)."""

    id: str
    question: str
    options: Mapping[str, str]
    correct: str
    concept_index: int | None = None
    fact_answer: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, sample_id: str | None = None, where: str = "qa") -> None:
        """Raise DataError naming ``sample_id`` and ``where.<field>`` when any field is bad."""
        _text(self.id, sample_id, f"{where}.id")
        _text(self.question, sample_id, f"{where}.question")
        if not isinstance(self.options, Mapping):
            raise _fail(sample_id, f"{where}.options", f"must be a mapping A-D, got {type(self.options).__name__}")
        keys = sorted(self.options)
        if keys != list(OPTION_LETTERS):
            raise _fail(sample_id, f"{where}.options", f"must have exactly the keys A, B, C, D, got {keys}")
        texts = {k: _text(self.options[k], sample_id, f"{where}.options.{k}") for k in OPTION_LETTERS}
        if not is_undetermined_text(texts["D"]):
            raise _fail(sample_id, f"{where}.options.D",
                        f"must say the answer cannot be determined (e.g. {UNDETERMINED!r}), got {texts['D']!r}")
        folded = [" ".join(texts[k].lower().split()) for k in ANSWER_LETTERS]
        if len(set(folded)) != len(folded):
            raise _fail(sample_id, f"{where}.options", f"A, B and C must differ, got {folded}")
        if self.correct not in OPTION_LETTERS:
            raise _fail(sample_id, f"{where}.correct", f"must be one of A, B, C, D, got {self.correct!r}")
        if self.fact_answer is not None and self.fact_answer not in ANSWER_LETTERS:
            raise _fail(sample_id, f"{where}.fact_answer", f"must be A, B, C or None, got {self.fact_answer!r}")
        if self.concept_index is not None:
            _index(self.concept_index, sample_id, f"{where}.concept_index")
        # freeze a plain dict in A-D order so equality and to_dict are stable
        object.__setattr__(self, "options", {k: texts[k] for k in OPTION_LETTERS})

    @property
    def answer(self) -> str:
        """The correct letter (the name judges and rewards use for :attr:`correct`)."""
        return self.correct

    @classmethod
    def coerce(cls, obj: Any, *, default: str | None = "D") -> MCQA:
        """An MCQA from an MCQA, a mapping or an object with ``question`` and ``options``: the covip field names,
        the authors' (``correct_answer``) or a judge caller's (``answer``); the first of ``correct``,
        ``correct_answer``, ``answer`` wins. Option letters may be lowercase; a missing D gets
        :data:`UNDETERMINED`; no correct letter means ``default`` (D: the answer expected about an absent
        concept; None refuses it, for a positive question); no id means ``"q"``."""
        if isinstance(obj, MCQA):
            return obj
        if isinstance(obj, Mapping):
            get = obj.get
        elif hasattr(obj, "question") and hasattr(obj, "options"):
            def get(key: str, default: Any = None) -> Any:
                return getattr(obj, key, default)
        else:
            raise DataError(f"cannot read a multiple-choice question from {type(obj).__name__}")
        options = get("options")
        if not isinstance(options, Mapping):
            raise _fail(None, "qa.options", f"must be a mapping of letters to texts, got {type(options).__name__}")
        opts = {str(k).strip().upper(): v for k, v in options.items() if v is not None}
        opts.setdefault("D", UNDETERMINED)
        correct = next((a for a in (get("correct"), get("correct_answer"), get("answer")) if a is not None), default)
        if correct is None:
            raise _fail(None, "qa.correct", f"question {get('question')!r} has no correct answer")
        concept = get("concept_index")
        return cls(id=str(get("id") or "q"), question=get("question"), options=opts,
                   correct=str(correct).strip().upper(), concept_index=concept, fact_answer=get("fact_answer"))

    @property
    def correct_text(self) -> str:
        """The text of the correct option."""
        return self.options[self.correct]

    @property
    def fact_text(self) -> str | None:
        """The text of the option the concept's dialogue supports (None when unknown)."""
        letter = self.fact_answer if self.fact_answer is not None else (
            self.correct if self.correct in ANSWER_LETTERS else None)
        return self.options[letter] if letter is not None else None

    def as_negative(self) -> MCQA:
        """This question asked about an absent concept: correct becomes D, the fact letter is kept."""
        fact = self.fact_answer if self.fact_answer is not None else (
            self.correct if self.correct in ANSWER_LETTERS else None)
        return MCQA(self.id, self.question, dict(self.options), "D", self.concept_index, fact)

    def as_positive(self) -> MCQA:
        """This question asked about a present concept: correct is the fact letter (must be known)."""
        fact = self.fact_answer if self.fact_answer is not None else self.correct
        if fact not in ANSWER_LETTERS:
            raise _fail(None, "qa.fact_answer", f"question {self.id!r} has no A/B/C fact answer to be positive")
        return MCQA(self.id, self.question, dict(self.options), fact, self.concept_index, fact)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the covip field names)."""
        out: dict[str, Any] = {"id": self.id, "question": self.question, "options": dict(self.options),
                               "correct": self.correct}
        if self.concept_index is not None:
            out["concept_index"] = self.concept_index
        if self.fact_answer is not None:
            out["fact_answer"] = self.fact_answer
        return out

    def to_official(self) -> dict[str, Any]:
        """The authors' QA dict: id, question, options, correct_answer (the dialogue-supported letter)."""
        letter = self.fact_answer if self.fact_answer is not None else self.correct
        return {"id": self.id, "question": self.question, "options": dict(self.options), "correct_answer": letter}

    @classmethod
    def from_dict(cls, data: Any, *, sample_id: str | None = None, where: str = "qa") -> MCQA:
        """Build from :meth:`to_dict` output; unknown or missing keys are errors naming the field."""
        if not isinstance(data, Mapping):
            raise _fail(sample_id, where, f"must be an object, got {type(data).__name__}")
        known = {"id", "question", "options", "correct", "concept_index", "fact_answer"}
        extra = sorted(set(data) - known)
        if extra:
            raise _fail(sample_id, f"{where}.{extra[0]}", f"unknown key (known: {sorted(known)})")
        for key in ("id", "question", "options", "correct"):
            if key not in data:
                raise _fail(sample_id, f"{where}.{key}", "is missing")
        try:
            return cls(data["id"], data["question"], data["options"], data["correct"],
                       data.get("concept_index"), data.get("fact_answer"))
        except DataError as exc:
            raise _rewhere(exc, sample_id, where) from None


def _rewhere(exc: DataError, sample_id: str | None, where: str) -> DataError:
    """Re-raise an MCQA error built without context under the sample id and field path."""
    fld = exc.field or where
    if fld.startswith("qa."):
        fld = where + fld[2:]
    elif fld == "qa":
        fld = where
    return _fail(sample_id, fld, getattr(exc, "problem", str(exc)))


def _index_tuple(value: Any, sample_id: str, fld: str, n: int | None) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _fail(sample_id, fld, f"must be a list of indices, got {value!r}")
    items = [_index(v, sample_id, f"{fld}[{i}]") for i, v in enumerate(value)]
    if len(set(items)) != len(items):
        raise _fail(sample_id, fld, f"has duplicate indices: {items}")
    if n is not None:
        bad = [i for i in items if i >= n]
        if bad:
            raise _fail(sample_id, fld, f"index {bad[0]} is out of range for {n} context concepts")
    return tuple(sorted(items))


def _yes_no(value: Any, sample_id: str) -> str:
    match = _YES_NO_RE.search(value) if isinstance(value, str) else None
    if match is None:
        raise _fail(sample_id, "answer", f"verification answer must be 'yes' or 'no', got {value!r}")
    return match.group(1).lower()


@dataclass(frozen=True)
class Sample:
    """One training/evaluation sample; validated on creation (field table in the module doc)."""

    id: str
    sample_type: str
    images: Sequence[str]
    dialogues: Sequence[str] = ()
    concept_names: Sequence[str] = ()
    present: Sequence[int] | None = ()
    pos_qas: Sequence[MCQA] = ()
    neg_qas: Sequence[MCQA] = ()
    answer: str | Sequence[int] | None = None
    split: str = "train"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._validate()

    # -- validation ---------------------------------------------------------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate(self) -> None:
        sid = self.id if isinstance(self.id, str) else repr(self.id)
        _text(self.id, sid, "id")
        if self.sample_type not in SAMPLE_TYPES:
            raise _fail(sid, "sample_type", f"must be one of {list(SAMPLE_TYPES)}, got {self.sample_type!r}")
        _text(self.split, sid, "split")
        images = _str_list(self.images, sid, "images")
        if self.sample_type == "verification" and len(images) != 2:
            raise _fail(sid, "images", f"verification needs exactly 2 images (reference, query), got {len(images)}")
        if len(images) < 2:
            raise _fail(sid, "images", f"needs at least one context image and the query image, got {len(images)}")
        n_ctx = len(images) - 1
        self._set("images", images)
        dialogues = _str_list(self.dialogues, sid, "dialogues")
        if self.sample_type == "caption" and len(dialogues) != n_ctx:
            raise _fail(sid, "dialogues", f"needs one dialogue per context image ({n_ctx}), got {len(dialogues)}")
        if dialogues and len(dialogues) != n_ctx:
            raise _fail(sid, "dialogues", f"must be empty or one per context image ({n_ctx}), got {len(dialogues)}")
        self._set("dialogues", dialogues)
        names = _str_list(self.concept_names, sid, "concept_names")
        if names and len(names) != n_ctx:
            raise _fail(sid, "concept_names", f"must be empty or one per context image ({n_ctx}), got {len(names)}")
        self._set("concept_names", names)
        if not isinstance(self.meta, Mapping):
            raise _fail(sid, "meta", f"must be an object, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as exc:
            raise _fail(sid, "meta", f"must be JSON-able: {exc}") from None
        self._set("meta", dict(self.meta))
        present = None if self.present is None else _index_tuple(self.present, sid, "present", n_ctx)
        answer = self.answer
        if self.sample_type == "recognition":
            if answer is None:
                raise _fail(sid, "answer", "recognition needs the present concept indices")
            answer = _index_tuple([answer] if isinstance(answer, int) else answer, sid, "answer", n_ctx)
            if not answer:
                raise _fail(sid, "answer", "recognition needs at least one present concept")
            if present and present != answer:
                raise _fail(sid, "present", f"{list(present)} disagrees with answer {list(answer)}")
            present = answer
        elif self.sample_type == "verification":
            answer = _yes_no(answer, sid)
            expected = (0,) if answer == "yes" else ()
            if present and present != expected:
                raise _fail(sid, "present", f"{list(present)} disagrees with answer {answer!r}")
            present = expected
        elif answer is not None:
            raise _fail(sid, "answer", f"caption samples carry no answer, got {answer!r}")
        self._set("answer", answer)
        self._set("present", present)
        self._validate_qas(sid, n_ctx, present)

    def _validate_qas(self, sid: str, n_ctx: int, present: tuple[int, ...] | None) -> None:
        groups = {}
        for name in ("pos_qas", "neg_qas"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
                raise _fail(sid, name, f"must be a list of MCQA, got {type(value).__name__}")
            qas = tuple(value)
            for i, qa in enumerate(qas):
                where = f"{name}[{i}]"
                if not isinstance(qa, MCQA):
                    raise _fail(sid, where, f"must be an MCQA, got {type(qa).__name__}")
                try:
                    qa.validate(sid, where)
                except DataError as exc:
                    raise _rewhere(exc, sid, where) from None
                if qa.concept_index is not None and qa.concept_index >= n_ctx:
                    raise _fail(sid, f"{where}.concept_index",
                                f"{qa.concept_index} is out of range for {n_ctx} context concepts")
                if name == "pos_qas" and qa.correct not in ANSWER_LETTERS:
                    raise _fail(sid, f"{where}.correct", f"a positive question's answer must be A, B or C, "
                                                         f"got {qa.correct!r}")
                if name == "neg_qas" and qa.correct != "D":
                    raise _fail(sid, f"{where}.correct", f"a negative question's answer must be D, got {qa.correct!r}")
                if present is not None and qa.concept_index is not None:
                    inside = qa.concept_index in present
                    if inside != (name == "pos_qas"):
                        state = "absent from" if name == "pos_qas" else "present in"
                        raise _fail(sid, f"{where}.concept_index",
                                    f"concept {qa.concept_index} is {state} the query image (present={list(present)})")
            groups[name] = qas
            self._set(name, qas)
        if self.sample_type == "caption" and present is not None and groups["pos_qas"]:
            asked = {qa.concept_index for qa in groups["pos_qas"]}
            if None not in asked:
                missing = [i for i in present if i not in asked]
                if missing:
                    raise _fail(sid, "pos_qas", f"present concept {missing[0]} has no question")
        if self.sample_type == "caption" and present is not None and not present and groups["pos_qas"]:
            raise _fail(sid, "present", "is empty but pos_qas has questions")

    # -- views --------------------------------------------------------------------------------------
    @property
    def query_image(self) -> str:
        """The query image path (always the last image)."""
        return self.images[-1]

    @property
    def context_images(self) -> tuple[str, ...]:
        """The context (concept) image paths, in context order."""
        return tuple(self.images[:-1])

    @property
    def n_context(self) -> int:
        """Number of context items (concepts)."""
        return len(self.images) - 1

    @property
    def is_labelled(self) -> bool:
        """True when the sample carries what its reward needs (caption: questions; others: answer)."""
        if self.sample_type == "caption":
            return bool(self.pos_qas)
        return self.answer is not None

    def pos_groups(self) -> list[list[MCQA]]:
        """Positive questions grouped by concept (by concept_index, else in runs of QAS_PER_CONCEPT)."""
        if all(qa.concept_index is not None for qa in self.pos_qas):
            order: dict[int, list[MCQA]] = {}
            for qa in self.pos_qas:
                order.setdefault(int(qa.concept_index), []).append(qa)  # type: ignore[arg-type]
            return [order[k] for k in sorted(order)]
        qas = list(self.pos_qas)
        return [qas[i:i + QAS_PER_CONCEPT] for i in range(0, len(qas), QAS_PER_CONCEPT)]

    # -- (de)serialization ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; :meth:`from_dict` inverts it exactly."""
        answer: Any = list(self.answer) if isinstance(self.answer, tuple) else self.answer
        return {
            "schema": SCHEMA_VERSION,
            "id": self.id,
            "sample_type": self.sample_type,
            "split": self.split,
            "images": list(self.images),
            "dialogues": list(self.dialogues),
            "concept_names": list(self.concept_names),
            "present": None if self.present is None else list(self.present),
            "pos_qas": [qa.to_dict() for qa in self.pos_qas],
            "neg_qas": [qa.to_dict() for qa in self.neg_qas],
            "answer": answer,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Sample:
        """Build from :meth:`to_dict` output; unknown keys and bad fields raise DataError naming them."""
        if not isinstance(data, Mapping):
            raise DataError(f"a sample must be a JSON object, got {type(data).__name__}")
        sid = data.get("id")
        sid_s = sid if isinstance(sid, str) else repr(sid)
        version = data.get("schema", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise _fail(sid_s, "schema", f"version {version!r} is not supported (this covip reads <= {SCHEMA_VERSION})")
        known = {"schema", "id", "sample_type", "split", "images", "dialogues", "concept_names", "present",
                 "pos_qas", "neg_qas", "answer", "meta"}
        extra = sorted(set(data) - known)
        if extra:
            raise _fail(sid_s, extra[0], f"unknown key (known: {sorted(known)})")
        for key in ("id", "sample_type", "images"):
            if key not in data:
                raise _fail(sid_s, key, "is missing")
        qas: dict[str, list[MCQA]] = {}
        for name in ("pos_qas", "neg_qas"):
            value = data.get(name, [])
            if not isinstance(value, list):
                raise _fail(sid_s, name, f"must be a list, got {type(value).__name__}")
            qas[name] = [MCQA.from_dict(q, sample_id=sid_s, where=f"{name}[{i}]") for i, q in enumerate(value)]
        return cls(
            id=sid, sample_type=data["sample_type"], images=data["images"],
            dialogues=data.get("dialogues", []), concept_names=data.get("concept_names", []),
            present=data.get("present", []), pos_qas=qas["pos_qas"], neg_qas=qas["neg_qas"],
            answer=data.get("answer"), split=data.get("split", "train"), meta=data.get("meta", {}),
        )

    def with_images(self, images: Sequence[str]) -> Sample:
        """A copy with other image paths (same count)."""
        data = self.to_dict()
        if len(images) != len(self.images):
            raise _fail(self.id, "images", f"replacement has {len(images)} paths, the sample has {len(self.images)}")
        data["images"] = [str(p) for p in images]
        return Sample.from_dict(data)


# -- paths ---------------------------------------------------------------------------------------------
def resolve_image_path(path: str, root: str | Path | None, *, sample_id: str, index: int, check: bool = True) -> Path:
    """One image path under ``root`` (absolute paths kept; a leading '/' retried under root when missing)."""
    p = Path(os.path.expanduser(path))
    candidates = [p] if p.is_absolute() or root is None else [Path(root) / p]
    if p.is_absolute() and root is not None:
        candidates.append(Path(root) / str(p).lstrip("/"))  # the authors join root + path as strings
    if not check:
        return candidates[0]
    for cand in candidates:
        if cand.is_file():
            return cand
    where = f" under {str(root)!r}" if root is not None else ""
    raise DataError(f"sample {sample_id!r}: field 'images[{index}]': image {path!r} not found{where}",
                    sample_id=sample_id, field=f"images[{index}]")


def resolve_images(sample: Sample, root: str | Path | None, *, check: bool = True) -> Sample:
    """A copy of ``sample`` with every image path resolved under ``root``; missing images raise DataError."""
    paths = [str(resolve_image_path(p, root, sample_id=sample.id, index=i, check=check))
             for i, p in enumerate(sample.images)]
    return sample.with_images(paths)


# -- files ---------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file beside it, fsync, rename) with the usual file mode:
    :func:`covip.sdk.files.atomic_write_bytes` with ``private=False``."""
    return files.atomic_write_bytes(Path(path), data, private=False)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, *, sort_keys: bool = True) -> Path:
    """Write ``data`` as indented UTF-8 JSON, atomically (a run's result.json, an evaluation's report); values
    JSON cannot hold (paths, dates) are written as their ``str``."""
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=sort_keys, ensure_ascii=False, default=str)
                             + "\n")


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename a finished temporary folder to ``target``, replacing an old one (moved aside first, then removed)."""
    import shutil

    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_jsonl(path: str | Path, samples: Iterable[Sample]) -> Path:
    """Write samples one JSON object per line (sorted keys, UTF-8), atomically; ids must be unique."""
    lines, seen = [], set()
    for s in samples:
        if not isinstance(s, Sample):
            raise DataError(f"write_jsonl() takes Sample objects, got {type(s).__name__}")
        if s.id in seen:
            raise _fail(s.id, "id", "is used by more than one sample")
        seen.add(s.id)
        lines.append(json.dumps(s.to_dict(), ensure_ascii=False, sort_keys=True))
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def iter_jsonl(path: str | Path) -> Iterator[Sample]:
    """Yield the samples of a covip JSONL file; a bad line raises DataError naming the line and sample."""
    path = Path(path)
    seen: set[str] = set()
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            try:
                sample = Sample.from_dict(record)
            except DataError as exc:
                raise DataError(f"{path}:{lineno}: {exc}", sample_id=exc.sample_id, field=exc.field) from None
            if sample.id in seen:
                raise DataError(f"{path}:{lineno}: {_where(sample.id, 'id')}: is used by more than one sample",
                                sample_id=sample.id, field="id")
            seen.add(sample.id)
            yield sample


def read_jsonl(path: str | Path, *, image_root: str | Path | None = None, check_images: bool = False) -> list[Sample]:
    """All samples of a covip JSONL file; with ``image_root`` their paths are resolved (and checked)."""
    samples = list(iter_jsonl(path))
    if image_root is not None or check_images:
        root = image_root if image_root is not None else Path(path).parent
        samples = [resolve_images(s, root, check=check_images) for s in samples]
    return samples
