"""Downstream diagnostic tasks (LSD, LAR, ITR): the sample type, the authors' field names, read and written.

The paper, "Downstream diagnostic tasks" (oyt9306/CoViP downstream/): each sample is a user context (past images, each with its
dialogue), a query image showing one of the context's concepts, a question and a reference answer:

=====  ======================================================================  ===============================
task   question (our wording; a record's own ``question`` wins)                reference ``answer``
=====  ======================================================================  ===============================
lsd    where did I last see the one in the new image? (answer in ``\\boxed{}``)  the place (token-set F1)
lar    what was I doing the last time I told you about it?                     the action (judged Correct/Wrong)
itr    what do you see in the new image? (the context planted an instruction:  the code word (must appear)
       say a code word when this concept appears)
=====  ======================================================================  ===============================

File layout (JSON list or JSONL, one record per sample), the authors' field names:

==========================  =========================================================================
field                       meaning
==========================  =========================================================================
``images_context``          the context image paths, in context order (relative to ``image_root``,
                            default the file's folder)
``dialogues_context``       one dialogue per context image: a list, or an ordered mapping whose values
                            are the dialogues (as the authors' test-set JSONL stores them)
``query_image``             the query image path
``answer``                  the reference answer: a string, or a list of accepted strings
``last_action``             (LAR, optional) the action the user last told about: the reference the
                            authors' judge compares with (default: ``answer``)
``question``                (optional) the question; default :data:`DEFAULT_QUESTIONS` of the task
``id``, ``task``, ``meta``  (optional) the sample id (default ``<file stem>-<index>``), the task name
                            (must match the task asked for when present), free provenance
==========================  =========================================================================

The authors' published sets (``Yeongtak/lsd``, ``Yeongtak/lar``, ``Yeongtak/itr`` on the Hugging Face hub,
images stored in the dataset) are read with ``datasets.load_dataset``: pass ``hf:Yeongtak/lsd`` (optionally
``hf:Yeongtak/lsd@test`` for a split; default: the only or first split), or the folder a
``huggingface-cli download --repo-type dataset`` made. Their ITR records call the concept ``SKS``, the
placeholder the authors' scorer looks for (recorded as ``meta["placeholder"]``).

The synthetic generator (:func:`covip.training.data.synth.synthesize` with ``n_downstream > 0``) writes
``downstream_lsd.jsonl``, ``downstream_lar.jsonl`` and ``downstream_itr.jsonl`` in this layout, built from
its world's facts (:func:`covip.training.data.world.planted_instruction` for ITR).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk import prompts
from covip.sdk.errors import DataError
from covip.training.data.schema import atomic_write_text, resolve_image_path

log = logging.getLogger(__name__)

__all__ = ["TASKS", "DEFAULT_QUESTIONS", "PAPER_QUESTIONS", "PAPER_ITR_PLACEHOLDER", "HUB_DATASETS", "DownstreamSample", "load_downstream",
           "load_downstream_hub", "write_downstream", "downstream_record"]

TASKS = ("lsd", "lar", "itr")
DEFAULT_QUESTIONS = prompts.DOWNSTREAM_QUESTIONS
"""covip's questions (from :mod:`covip.sdk.prompts`; a prompt pack can replace them)."""
PAPER_QUESTIONS = prompts.PAPER_DOWNSTREAM_QUESTIONS
"""The questions of ``--protocol paper`` (from :mod:`covip.sdk.prompts`)."""
PAPER_ITR_PLACEHOLDER = "SKS"
"""The placeholder name the authors' ITR data give the concept, and the string their scorer looks for."""
HUB_DATASETS = {"lsd": "Yeongtak/lsd", "lar": "Yeongtak/lar", "itr": "Yeongtak/itr"}
"""The authors' downstream sets on the Hugging Face hub."""


def _fail(sample_id: str, fld: str, problem: str) -> DataError:
    return DataError(f"sample {sample_id!r}: field {fld!r}: {problem}", sample_id=sample_id, field=fld)


@dataclass(frozen=True)
class DownstreamSample:
    """One downstream sample (paths as stored, or resolved by :func:`load_downstream`)."""

    id: str
    task: str
    context_images: tuple[str, ...]
    dialogues: tuple[str, ...]
    query_image: str
    question: str
    answers: tuple[str, ...]
    """Accepted reference answers (usually one)."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    last_action: str | None = None
    """LAR: the reference the paper's judge compares with (the record's ``last_action``)."""

    @property
    def answer(self) -> str:
        """The first reference answer."""
        return self.answers[0]


def _strings(value: Any, sid: str, fld: str) -> list[str]:
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise _fail(sid, fld, f"must be a non-empty list of strings, got {value!r:.80}")
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise _fail(sid, f"{fld}[{i}]", f"must be a non-empty string, got {v!r:.80}")
    return list(value)


def record_to_downstream(record: Any, *, task: str, default_id: str) -> DownstreamSample:
    """One record in the authors' field names -> :class:`DownstreamSample` (paths as written)."""
    if task not in TASKS:
        raise DataError(f"downstream task must be one of {list(TASKS)}, got {task!r}")
    if not isinstance(record, Mapping):
        raise DataError(f"sample {default_id!r}: a record must be a JSON object, got {type(record).__name__}",
                        sample_id=default_id)
    rid = record.get("id")
    sid = rid if isinstance(rid, str) and rid.strip() else default_id
    rtask = record.get("task")
    if rtask is not None and str(rtask).lower() != task:
        raise _fail(sid, "task", f"is {rtask!r} but the file is read as {task!r}")
    for key in ("images_context", "dialogues_context", "query_image", "answer"):
        if key not in record:
            raise _fail(sid, key, "is missing")
    images = _strings(record["images_context"], sid, "images_context")
    dialogues = _strings(record["dialogues_context"], sid, "dialogues_context")
    if len(dialogues) != len(images):
        raise _fail(sid, "dialogues_context", f"has {len(dialogues)} dialogues for {len(images)} context images")
    query = record["query_image"]
    if not isinstance(query, str) or not query.strip():
        raise _fail(sid, "query_image", f"must be an image path, got {query!r:.80}")
    answer = record["answer"]
    answers = [answer] if isinstance(answer, str) else answer
    answers = _strings(answers, sid, "answer")
    question = record.get("question") or DEFAULT_QUESTIONS[task]
    if not isinstance(question, str):
        raise _fail(sid, "question", f"must be a string, got {question!r:.80}")
    meta = record.get("meta") or {}
    if not isinstance(meta, Mapping):
        raise _fail(sid, "meta", f"must be an object, got {type(meta).__name__}")
    last_action = record.get("last_action")
    if last_action is not None and (not isinstance(last_action, str) or not last_action.strip()):
        raise _fail(sid, "last_action", f"must be a non-empty string, got {last_action!r:.80}")
    return DownstreamSample(sid, task, tuple(images), tuple(dialogues), query, question.strip(),
                            tuple(a.strip() for a in answers), dict(meta),
                            None if last_action is None else last_action.strip())


def _records(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    return out


def load_downstream(path: str | Path, task: str, *, image_root: str | Path | None = None,
                    check_images: bool = True, on_error: str = "raise") -> list[DownstreamSample]:
    """A downstream file (JSON list or JSONL, the authors' field names) with image paths resolved."""
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if str(path).startswith("hf:") or Path(path).is_dir():
        return load_downstream_hub(path, task)
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    out: list[DownstreamSample] = []
    seen: set[str] = set()
    for index, record in enumerate(_records(path)):
        try:
            s = record_to_downstream(record, task=task, default_id=f"{path.stem}-{index}")
            if s.id in seen:
                raise _fail(s.id, "id", "is used by more than one sample")
            paths = [str(resolve_image_path(p, root, sample_id=s.id, index=i, check=check_images))
                     for i, p in enumerate((*s.context_images, s.query_image))]
        except DataError as exc:
            if on_error == "raise":
                raise
            log.warning("skipping record %d: %s", index, exc)
            continue
        seen.add(s.id)
        out.append(DownstreamSample(s.id, s.task, tuple(paths[:-1]), s.dialogues, paths[-1], s.question,
                                    s.answers, s.meta, s.last_action))
    return out


def _hub_hint(repo: str) -> str:
    folder = f"data/{repo.rsplit('/', 1)[-1]}"
    return (f"download it on a machine with a network: huggingface-cli download --repo-type dataset {repo} "
            f"--local-dir {folder}, copy the folder here, then pass --data {folder}")


def load_downstream_hub(spec: str | Path, task: str) -> list[DownstreamSample]:
    """A downstream set through ``datasets.load_dataset``: ``hf:REPO[@SPLIT]`` or a downloaded dataset folder.

    Images stay in memory (PIL images from the dataset); sample ids are ``<name>-<row>``. Offline or
    missing, the error says how to download the set.
    """
    from covip.sdk.support import require

    if task not in TASKS:
        raise DataError(f"downstream task must be one of {list(TASKS)}, got {task!r}")
    datasets = require("datasets", feature="reading the authors' downstream sets", extra="train")
    text = str(spec)
    repo, _, split = text[3:].partition("@") if text.startswith("hf:") else (text, "", "")
    if not repo.strip():
        raise DataError(f"{text!r}: name a dataset after 'hf:', e.g. hf:{HUB_DATASETS[task]}")
    name = Path(repo.rstrip("/")).name or repo
    try:
        loaded = datasets.load_dataset(repo, split=split or None)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, bad folder: one actionable message
        hint = _hub_hint(repo if text.startswith("hf:") else HUB_DATASETS[task])
        raise DataError(f"cannot load the dataset {repo!r} ({type(exc).__name__}: {str(exc)[:200]}); {hint}") from None
    if isinstance(loaded, Mapping):  # a DatasetDict: one split, or the first
        if not loaded:
            raise DataError(f"the dataset {repo!r} has no splits")
        loaded = loaded[next(iter(loaded))]
    placeholder = {"placeholder": PAPER_ITR_PLACEHOLDER} if task == "itr" else {}
    out = []
    for index, record in enumerate(loaded):
        sid = f"{name}-{index}"
        rec = {k: v for k, v in dict(record).items() if k not in ("images_context", "query_image")}
        for key in ("images_context", "query_image"):
            if record.get(key) is None:
                raise _fail(sid, key, "is missing")
        images = list(record["images_context"])
        # check everything but the images with the file-format rules (the images are PIL objects here)
        s = record_to_downstream({**rec, "images_context": [f"image-{i}" for i in range(len(images))],
                                  "query_image": "query", "id": sid}, task=task, default_id=sid)
        out.append(DownstreamSample(sid, task, tuple(images), s.dialogues, record["query_image"], s.question,
                                    s.answers, {**placeholder, **s.meta, "source": repo}, s.last_action))
    return out


def downstream_record(sample: DownstreamSample) -> dict[str, Any]:
    """A sample in the authors' field names (plus id, task, question, meta)."""
    return {"id": sample.id, "task": sample.task, "images_context": list(sample.context_images),
            "dialogues_context": list(sample.dialogues), "query_image": sample.query_image,
            "question": sample.question,
            "answer": sample.answers[0] if len(sample.answers) == 1 else list(sample.answers),
            "meta": dict(sample.meta), **({"last_action": sample.last_action} if sample.last_action else {})}


def write_downstream(path: str | Path, samples: Sequence[DownstreamSample]) -> Path:
    """Write samples as JSONL in the authors' field names (atomically)."""
    lines = [json.dumps(downstream_record(s), ensure_ascii=False, sort_keys=True) for s in samples]
    return atomic_write_text(path, "".join(line + "\n" for line in lines))
