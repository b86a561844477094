"""Loaders (and writers) for the CoViP authors' public data formats, mapped onto :mod:`.schema`.

Three formats, read field by field from the authors' public code (our own implementation):

1. **Training JSON** (``CoViP_PIC_training.json``; a JSON list, or JSONL, of records), one record per
   sample, the type chosen by ``accu_reward_method``:

   ===========================  ===============================================================================
   authors' field               covip :class:`~.schema.Sample` field
   ===========================  ===============================================================================
   ``accu_reward_method``       ``sample_type``: ``'caption'`` -> caption, ``'multi_vision'`` -> recognition,
                                ``'vision'`` -> verification (:data:`AUTHOR_METHOD_TO_TYPE`)
   ``images``                   ``images`` (context images then the query, the query LAST; verification:
                                reference then query), resolved under ``image_root``
   ``c_num``                    checked: ``len(images) == c_num + 1`` (caption / recognition); inferred when
                                absent; ignored for verification (always 2 images)
   ``dialogues``                ``dialogues`` (first ``c_num``; required for caption)
   ``pos_qas``                  ``pos_qas``: a list with one list of QA dicts per present concept, flattened;
                                QA ``correct_answer`` -> ``correct`` and ``fact_answer``
   ``neg_qas``                  ``neg_qas``: a flat list of QA dicts of absent concepts; their stored
                                ``correct_answer`` (the letter the concept's dialogue supports) becomes
                                ``fact_answer``, and ``correct`` is ``'D'`` (what their reward expects)
   ``answer``                   recognition: the present indices (a list, a bare int, or their string form
                                such as ``"[0, 2]"``) -> ``answer`` and ``present``; verification: a text
                                holding yes/no -> ``'yes'``/``'no'``; caption: ignored
   ``gts`` / ``present``        (optional, not in the authors' training file) present indices; group ``g`` of
                                ``pos_qas`` is concept ``gts[g]``, and when ``neg_qas`` splits evenly over the
                                absent concepts its runs go to them in context order (as CapEval flattens them).
                                Without them a caption sample's ``present`` is None (unknown) and
                                ``concept_index`` is None on its questions
   ``id``                       (optional) ``id``; else ``<file stem>-<record index>``
   ===========================  ===============================================================================

   A QA dict is ``{"id", "question", "options": {"A","B","C","D"}, "correct_answer"}``; a missing ``D``
   is filled with :data:`~.schema.UNDETERMINED` (their generator adds D after the LLM writes A-C), a
   missing ``id`` becomes ``Q<n>``. :func:`sample_to_training_record` writes the same layout back.

2. **CapEval test file** (``QAS_GT_test.json``): ``{sample_key: {"qas": {"concept_<j>": {"qa": [QA dicts]}},
   "gts": [j, ...]}}``. Every concept of the context has its questions under ``concept_<j>`` (``j`` is the
   context position, 0-based, contiguous); ``gts`` lists the concepts present in the query image. The
   stored ``correct_answer`` is the dialogue-supported letter for every concept; evaluation expects it for
   the present concepts and ``D`` for the others. Read into :class:`CapEvalEntry` (questions per concept,
   ``correct`` = the stored letter, ``concept_index`` = ``j``); :meth:`CapEvalEntry.pos_qas` /
   :meth:`CapEvalEntry.neg_qas` give the per-sample view. :func:`write_capeval` writes the same layout.

3. **Test-set JSONL** (``meta_CoViP_testset_cleaned.jsonl``), one line per test sample: ``imgs`` (the query
   image path), ``concepts`` (the context image paths), ``dialogues`` (an ordered mapping whose values are the
   dialogues in context order, or a list). Line ``i`` (0-based, blank lines skipped) is CapEval key
   ``sample_<i>``, so the id is ``sample_<i>`` (or the line's own ``id`` when it has one). Mapped to caption
   samples with ``images = concepts + [imgs]``; with ``capeval=`` the questions and ``present = gts`` are
   merged in, else ``present`` is None and the sample is unlabelled. The mapping's keys are kept in
   ``meta['dialogue_keys']``. Dialogues pair with concepts by position, as in the authors' caption script:
   extra dialogues are left out (counted in ``meta['extra_dialogues']``); fewer than the concepts is an error.

Image paths: relative paths resolve under ``image_root`` (default: the data file's folder); absolute paths
stay, except that a missing absolute path is retried under the root (the authors build paths by string
concatenation ``prefix + path``). With ``check_images=True`` (default) a missing image raises
:class:`~covip.sdk.errors.DataError` naming the sample and ``images[i]``. Every bad field raises DataError
naming the sample id and the field (authors' names for loader checks, covip names for schema checks);
``on_error='skip'`` logs a warning per bad sample and keeps the rest instead.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from covip.sdk.errors import DataError
from covip.training.data.schema import (
    ANSWER_LETTERS,
    MCQA,
    UNDETERMINED,
    Sample,
    atomic_write_text,
    resolve_images,
)

log = logging.getLogger(__name__)

__all__ = [
    "AUTHOR_METHOD_TO_TYPE",
    "TYPE_TO_AUTHOR_METHOD",
    "CapEvalEntry",
    "parse_official_qa",
    "training_record_to_sample",
    "load_training_json",
    "sample_to_training_record",
    "write_training_json",
    "load_capeval",
    "write_capeval",
    "capeval_entry_from_sample",
    "testset_record_to_sample",
    "load_testset_jsonl",
    "sample_to_testset_record",
    "write_testset_jsonl",
]

AUTHOR_METHOD_TO_TYPE = {"caption": "caption", "multi_vision": "recognition", "vision": "verification"}
TYPE_TO_AUTHOR_METHOD = {v: k for k, v in AUTHOR_METHOD_TO_TYPE.items()}
_CONCEPT_KEY = re.compile(r"^concept_(\d+)$")
_ON_ERROR = ("raise", "skip")


def _fail(sample_id: str, fld: str, problem: str) -> DataError:
    return DataError(f"sample {sample_id!r}: field {fld!r}: {problem}", sample_id=sample_id, field=fld)


def _check_on_error(on_error: str) -> None:
    if on_error not in _ON_ERROR:
        raise DataError(f"on_error must be one of {list(_ON_ERROR)}, got {on_error!r}")


def _read_records(path: Path) -> list[Any]:
    """A JSON list, or JSONL (one object per line), chosen by content."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return list(data)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return records


def _record_id(record: Mapping[str, Any], default: str) -> str:
    rid = record.get("id")
    return rid if isinstance(rid, str) and rid.strip() else default


def parse_official_qa(qa: Any, *, sample_id: str, where: str, concept_index: int | None = None,
                      negative: bool = False, position: int = 0) -> MCQA:
    """One authors' QA dict -> :class:`MCQA` (negative: correct D, their letter kept as fact_answer)."""
    if not isinstance(qa, Mapping):
        raise _fail(sample_id, where, f"must be a QA object, got {type(qa).__name__}")
    for key in ("question", "options", "correct_answer"):
        if key not in qa:
            raise _fail(sample_id, f"{where}.{key}", "is missing")
    options = qa["options"]
    if not isinstance(options, Mapping):
        raise _fail(sample_id, f"{where}.options", f"must be an object A-D, got {type(options).__name__}")
    options = dict(options)
    options.setdefault("D", UNDETERMINED)
    letter = qa["correct_answer"]
    if not isinstance(letter, str) or letter.strip().upper() not in ANSWER_LETTERS:
        raise _fail(sample_id, f"{where}.correct_answer", f"must be A, B or C, got {letter!r}")
    letter = letter.strip().upper()
    qid = qa.get("id") if isinstance(qa.get("id"), str) and qa.get("id").strip() else f"Q{position + 1}"
    try:
        return MCQA(qid, qa["question"], options, "D" if negative else letter, concept_index, letter)
    except DataError as exc:
        fld = (exc.field or "qa").replace("qa", where, 1)
        raise _fail(sample_id, fld, getattr(exc, "problem", str(exc))) from None


def _literal_indices(value: Any, sample_id: str, fld: str) -> list[int]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise _fail(sample_id, fld, f"cannot read indices from {value!r}") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple, set)):
        raise _fail(sample_id, fld, f"must be a list of concept indices, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise _fail(sample_id, fld, f"must hold integer indices, got {v!r}")
        out.append(int(v))
    return out


def _images(record: Mapping[str, Any], sid: str) -> list[str]:
    images = record.get("images")
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, list) or not all(isinstance(p, str) and p for p in images):
        raise _fail(sid, "images", f"must be a list of image paths, got {images!r}")
    return images


def _c_num(record: Mapping[str, Any], images: list[str], sid: str) -> int:
    c_num = record.get("c_num")
    if c_num is None:
        return len(images) - 1
    if isinstance(c_num, bool) or not isinstance(c_num, int) or c_num < 1:
        raise _fail(sid, "c_num", f"must be a positive integer, got {c_num!r}")
    if len(images) != c_num + 1:
        raise _fail(sid, "images", f"has {len(images)} paths but c_num={c_num} needs {c_num + 1} "
                                   "(the context images, then the query image last)")
    return c_num


def training_record_to_sample(record: Any, *, default_id: str, split: str = "train",
                              meta: Mapping[str, Any] | None = None) -> Sample:
    """One record of the authors' training JSON -> :class:`Sample` (paths as written)."""
    if not isinstance(record, Mapping):
        raise DataError(f"sample {default_id!r}: a record must be a JSON object, got {type(record).__name__}",
                        sample_id=default_id)
    sid = _record_id(record, default_id)
    method = record.get("accu_reward_method")
    if method not in AUTHOR_METHOD_TO_TYPE:
        raise _fail(sid, "accu_reward_method", f"must be one of {sorted(AUTHOR_METHOD_TO_TYPE)}, got {method!r}")
    stype = AUTHOR_METHOD_TO_TYPE[method]
    images = _images(record, sid)
    info = {"source": "authors-training", "accu_reward_method": method, **(meta or {})}
    if stype == "verification":
        if "answer" not in record:
            raise _fail(sid, "answer", "is missing (a 'vision' record needs yes/no)")
        return Sample(id=sid, sample_type=stype, images=images, answer=record["answer"], split=split, meta=info)
    c_num = _c_num(record, images, sid)
    dialogues = record.get("dialogues", [])
    if not isinstance(dialogues, list):
        raise _fail(sid, "dialogues", f"must be a list of dialogue texts, got {type(dialogues).__name__}")
    if stype == "caption" and len(dialogues) < c_num:
        raise _fail(sid, "dialogues", f"has {len(dialogues)} dialogues but c_num={c_num}")
    dialogues = dialogues[:c_num]
    names = record.get("concept_names", [])
    if stype == "recognition":
        if "answer" not in record:
            raise _fail(sid, "answer", "is missing (a 'multi_vision' record needs the present indices)")
        answer = _literal_indices(record["answer"], sid, "answer")
        return Sample(id=sid, sample_type=stype, images=images, dialogues=dialogues, concept_names=names,
                      answer=answer, split=split, meta=info)
    gts_key = "gts" if "gts" in record else ("present" if "present" in record else None)
    gts = _literal_indices(record[gts_key], sid, gts_key) if gts_key else None
    pos_groups = record.get("pos_qas")
    if not isinstance(pos_groups, list) or not all(isinstance(g, list) for g in pos_groups):
        raise _fail(sid, "pos_qas", "must be a list with one list of QA objects per present concept")
    if gts is not None and len(gts) != len(pos_groups):
        raise _fail(sid, "pos_qas", f"has {len(pos_groups)} concept groups but {gts_key} lists {len(gts)} concepts")
    pos = [parse_official_qa(qa, sample_id=sid, where=f"pos_qas[{g}][{k}]", position=k,
                             concept_index=None if gts is None else gts[g])
           for g, group in enumerate(pos_groups) for k, qa in enumerate(group)]
    neg_list = record.get("neg_qas", [])
    if not isinstance(neg_list, list):
        raise _fail(sid, "neg_qas", "must be a flat list of QA objects")
    absent = [j for j in range(c_num) if gts is not None and j not in gts]
    per = len(neg_list) // len(absent) if absent and len(neg_list) % len(absent) == 0 else 0
    neg = [parse_official_qa(qa, sample_id=sid, where=f"neg_qas[{k}]", negative=True, position=k % (per or 3),
                             concept_index=absent[k // per] if per else None)
           for k, qa in enumerate(neg_list)]
    return Sample(id=sid, sample_type="caption", images=images, dialogues=dialogues, concept_names=names,
                  present=gts, pos_qas=pos, neg_qas=neg, split=split, meta=info)


def _load_many(records: list[Any], build: Any, root: Path, check_images: bool, on_error: str) -> list[Sample]:
    out: list[Sample] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        try:
            sample = build(index, record)
            if sample.id in seen:
                raise _fail(sample.id, "id", "is used by more than one sample")
            sample = resolve_images(sample, root, check=check_images)
        except DataError as exc:
            if on_error == "raise":
                raise
            log.warning("skipping record %d: %s", index, exc)
            continue
        seen.add(sample.id)
        out.append(sample)
    return out


def load_training_json(path: str | Path, *, image_root: str | Path | None = None, check_images: bool = True,
                       on_error: str = "raise", split: str = "train") -> list[Sample]:
    """The authors' training JSON (or JSONL) as Samples, image paths resolved under ``image_root``."""
    _check_on_error(on_error)
    path = Path(path)
    records = _read_records(path)
    root = Path(image_root) if image_root is not None else path.parent

    def build(index: int, record: Any) -> Sample:
        return training_record_to_sample(record, default_id=f"{path.stem}-{index}", split=split,
                                         meta={"file": path.name, "index": index})

    return _load_many(records, build, root, check_images, on_error)


def sample_to_training_record(sample: Sample) -> dict[str, Any]:
    """A :class:`Sample` in the authors' training-record layout (``id`` and ``gts`` added)."""
    record: dict[str, Any] = {"id": sample.id, "images": list(sample.images),
                              "accu_reward_method": TYPE_TO_AUTHOR_METHOD[sample.sample_type]}
    if sample.sample_type == "verification":
        record.update(c_num=2, answer=str(sample.answer))
        return record
    record.update(c_num=sample.n_context, dialogues=list(sample.dialogues))
    if sample.concept_names:
        record["concept_names"] = list(sample.concept_names)
    if sample.sample_type == "recognition":
        record["answer"] = list(sample.answer or ())
        return record
    groups = sample.pos_groups()
    record["pos_qas"] = [[qa.to_official() for qa in group] for group in groups]
    record["neg_qas"] = [qa.to_official() for qa in sample.neg_qas]
    if sample.present is not None:
        record["gts"] = [g[0].concept_index for g in groups] if all(
            g[0].concept_index is not None for g in groups) else list(sample.present)
    return record


def write_training_json(path: str | Path, samples: Sequence[Sample]) -> Path:
    """Write samples as the authors' training JSON list (atomically)."""
    return atomic_write_text(path, json.dumps([sample_to_training_record(s) for s in samples], indent=1,
                                              ensure_ascii=False) + "\n")


# -- CapEval ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CapEvalEntry:
    """One CapEval test sample: every context concept's questions and the present concepts (gts)."""

    id: str
    qas: tuple[tuple[MCQA, ...], ...]
    """``qas[j]``: concept j's questions, ``correct`` = the dialogue-supported letter."""
    gts: tuple[int, ...]

    def pos_qas(self) -> list[MCQA]:
        """Questions of present concepts (in gts order), answer = the stored letter."""
        return [qa for j in self.gts for qa in self.qas[j]]

    def neg_qas(self) -> list[MCQA]:
        """Questions of absent concepts (context order), answer D."""
        return [qa.as_negative() for j, group in enumerate(self.qas) if j not in self.gts for qa in group]

    def to_official(self) -> dict[str, Any]:
        """The authors' JSON value for this entry."""
        return {"qas": {f"concept_{j}": {"qa": [qa.to_official() for qa in group]}
                        for j, group in enumerate(self.qas)},
                "gts": list(self.gts)}


def _capeval_entry(key: str, value: Any) -> CapEvalEntry:
    if not isinstance(value, Mapping):
        raise _fail(key, key, f"must be an object with 'qas' and 'gts', got {type(value).__name__}")
    qas = value.get("qas")
    if not isinstance(qas, Mapping) or not qas:
        raise _fail(key, "qas", "must be a non-empty object of concept_<j> entries")
    by_index: dict[int, tuple[MCQA, ...]] = {}
    for ckey, cval in qas.items():
        match = _CONCEPT_KEY.match(str(ckey))
        if match is None:
            raise _fail(key, f"qas.{ckey}", "keys must look like 'concept_<j>'")
        j = int(match.group(1))
        items = cval.get("qa") if isinstance(cval, Mapping) else None
        if not isinstance(items, list) or not items:
            raise _fail(key, f"qas.{ckey}.qa", "must be a non-empty list of QA objects")
        by_index[j] = tuple(parse_official_qa(qa, sample_id=key, where=f"qas.{ckey}.qa[{k}]", concept_index=j,
                                              position=k) for k, qa in enumerate(items))
    if sorted(by_index) != list(range(len(by_index))):
        raise _fail(key, "qas", f"concept keys must be concept_0..concept_{len(by_index) - 1}, got "
                                f"{sorted(by_index)}")
    gts = _literal_indices(value.get("gts"), key, "gts") if "gts" in value else None
    if gts is None:
        raise _fail(key, "gts", "is missing")
    bad = [g for g in gts if g not in by_index]
    if bad:
        raise _fail(key, "gts", f"index {bad[0]} has no concept_{bad[0]} in qas")
    if len(set(gts)) != len(gts):
        raise _fail(key, "gts", f"has duplicates: {gts}")
    return CapEvalEntry(id=key, qas=tuple(by_index[j] for j in range(len(by_index))), gts=tuple(gts))


def load_capeval(path: str | Path, *, on_error: str = "raise",
                 skipped: list[tuple[str, str]] | None = None) -> dict[str, CapEvalEntry]:
    """The CapEval test file as ``{sample key: CapEvalEntry}`` in file order.

    ``on_error="skip"`` leaves out entries that break the schema (each one logged and, when ``skipped`` is a
    list, appended to it as ``(key, reason)``) instead of stopping at the first.
    """
    _check_on_error(on_error)
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, Mapping):
        raise DataError(f"{path}: a CapEval file is a JSON object of samples, got {type(data).__name__}")
    out: dict[str, CapEvalEntry] = {}
    for key, value in data.items():
        try:
            out[key] = _capeval_entry(key, value)
        except DataError as exc:
            if on_error == "raise":
                raise
            log.warning("skipping CapEval entry %r: %s", key, exc)
            if skipped is not None:
                skipped.append((str(key), str(exc)))
    return out


def capeval_entry_from_sample(sample: Sample) -> CapEvalEntry:
    """The CapEval entry of a caption sample whose questions name their concepts (covip-made data)."""
    if sample.sample_type != "caption" or sample.present is None:
        raise _fail(sample.id, "present", "a CapEval entry needs a caption sample with known present concepts")
    groups: dict[int, list[MCQA]] = {}
    for qa in (*sample.pos_qas, *sample.neg_qas):
        if qa.concept_index is None:
            raise _fail(sample.id, "pos_qas", "every question needs a concept_index for CapEval")
        groups.setdefault(qa.concept_index, []).append(qa.as_positive())
    missing = [j for j in range(sample.n_context) if j not in groups]
    if missing:
        raise _fail(sample.id, "neg_qas", f"context concept {missing[0]} has no question")
    return CapEvalEntry(sample.id, tuple(tuple(groups[j]) for j in range(sample.n_context)), tuple(sample.present))


def write_capeval(path: str | Path, entries: Sequence[CapEvalEntry] | Mapping[str, CapEvalEntry]) -> Path:
    """Write entries in the CapEval layout (atomically)."""
    items = list(entries.values()) if isinstance(entries, Mapping) else list(entries)
    data = {e.id: e.to_official() for e in items}
    if len(data) != len(items):
        raise DataError("write_capeval(): entry ids must be unique")
    return atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


# -- test-set JSONL ----------------------------------------------------------------------------------------
def testset_record_to_sample(record: Any, *, default_id: str, capeval: CapEvalEntry | None = None,
                             split: str = "test", meta: Mapping[str, Any] | None = None) -> Sample:
    """One test-set JSONL record (imgs, concepts, dialogues) -> caption :class:`Sample`."""
    if not isinstance(record, Mapping):
        raise DataError(f"sample {default_id!r}: a record must be a JSON object, got {type(record).__name__}",
                        sample_id=default_id)
    sid = _record_id(record, default_id)
    query = record.get("imgs")
    if not isinstance(query, str) or not query:
        raise _fail(sid, "imgs", f"must be the query image path, got {query!r}")
    concepts = record.get("concepts")
    if not isinstance(concepts, list) or not concepts or not all(isinstance(c, str) and c for c in concepts):
        raise _fail(sid, "concepts", f"must be a non-empty list of context image paths, got {concepts!r}")
    dialogues = record.get("dialogues")
    keys: list[str] = []
    if isinstance(dialogues, Mapping):
        keys = [str(k) for k in dialogues]
        dialogues = list(dialogues.values())
    if not isinstance(dialogues, list):
        raise _fail(sid, "dialogues", "must be a mapping (or list) of dialogue texts in context order")
    if len(dialogues) < len(concepts):
        raise _fail(sid, "dialogues", f"has {len(dialogues)} dialogues for {len(concepts)} concepts")
    info = {"source": "authors-testset", **(meta or {})}
    if len(dialogues) > len(concepts):  # the authors pair dialogues with concepts by position: extras unused
        info["extra_dialogues"] = len(dialogues) - len(concepts)
        dialogues, keys = dialogues[:len(concepts)], keys[:len(concepts)]
    if keys:
        info["dialogue_keys"] = keys
    present, pos, neg = None, [], []
    if capeval is not None:
        if len(capeval.qas) != len(concepts):
            raise _fail(sid, "concepts", f"has {len(concepts)} concepts but the CapEval entry has {len(capeval.qas)}")
        present, pos, neg = list(capeval.gts), capeval.pos_qas(), capeval.neg_qas()
    return Sample(id=sid, sample_type="caption", images=[*concepts, query], dialogues=dialogues,
                  concept_names=record.get("concept_names", []), present=present, pos_qas=pos, neg_qas=neg,
                  split=split, meta=info)


def load_testset_jsonl(path: str | Path, *, image_root: str | Path | None = None,
                       capeval: str | Path | Mapping[str, CapEvalEntry] | None = None, check_images: bool = True,
                       on_error: str = "raise", split: str = "test") -> list[Sample]:
    """The authors' test-set JSONL as caption Samples, merged with a CapEval file when given."""
    _check_on_error(on_error)
    path = Path(path)
    records = _read_records(path)
    entries = load_capeval(capeval) if isinstance(capeval, (str, Path)) else capeval
    root = Path(image_root) if image_root is not None else path.parent

    def build(index: int, record: Any) -> Sample:
        sid = _record_id(record, f"sample_{index}") if isinstance(record, Mapping) else f"sample_{index}"
        entry = None
        if entries is not None:
            entry = entries.get(sid)
            if entry is None:
                raise DataError(f"sample {sid!r}: has no entry in the CapEval file", sample_id=sid, field="id")
        return testset_record_to_sample(record, default_id=f"sample_{index}", capeval=entry, split=split,
                                        meta={"file": path.name, "index": index})

    return _load_many(records, build, root, check_images, on_error)


def sample_to_testset_record(sample: Sample) -> dict[str, Any]:
    """A caption :class:`Sample` as one test-set JSONL record (``id`` added)."""
    if sample.sample_type != "caption":
        raise _fail(sample.id, "sample_type", "the test-set layout holds caption samples only")
    keys = sample.meta.get("dialogue_keys") or [f"dialogue_{i}" for i in range(sample.n_context)]
    return {"id": sample.id, "imgs": sample.query_image, "concepts": list(sample.context_images),
            "dialogues": dict(zip(keys, sample.dialogues))}


def write_testset_jsonl(path: str | Path, samples: Sequence[Sample]) -> Path:
    """Write caption samples as the authors' test-set JSONL (atomically)."""
    lines = [json.dumps(sample_to_testset_record(s), ensure_ascii=False) for s in samples]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
