"""CapEval-QAs: caption a test set in each sample's own context, judge every question, score Acc+ / Acc−.

The paper, "CapEval-QAs evaluation" (oyt9306/CoViP evaluation/). :func:`run_capeval` does the whole evaluation:

1. **Test set** (:func:`load_items`): covip samples JSONL (``test.jsonl`` of ``covip data synth``; caption
   samples with known present concepts are used, other types skipped), the authors' test-set JSONL merged
   with their CapEval file (``capeval=``), or the CapEval file alone (enough to score given captions; it
   holds no images, so it cannot be captioned).
2. **Captions**: given (``captions=``, a JSONL of ``{"id", "caption"}`` lines or one JSON object
   ``{id: caption}``), or generated with an engine: greedy, up to ``max_new_tokens`` (1,024 as the paper),
   prompt :func:`covip.sdk.prompts.caption_messages` with the sample's context images and dialogues and its
   query image. No memory search: the test sample IS the context. Captions go to ``captions.jsonl`` in
   the output folder as they are made (resumable: a re-run skips the ids already there; a file made by
   another model, prompt version or token budget is refused).
3. **Judge** (:mod:`covip.training.judges`): one call per question with the caption alone, in batches of
   ``judge_batch`` (HTTP judges send a batch's requests in parallel, ``concurrency`` at a time), with a
   progress bar. Model judges get ``cache_path=<out>/judge_cache.sqlite`` unless told otherwise, so a
   re-run replays the cached answers instead of asking again.
4. **Score** (:mod:`.scoring`): Acc+ / Acc− per bucket of 1/2/3/4 present concepts and overall, with counts.

``protocol`` (:mod:`.protocols`): ``paper`` (default) asks the judge as the authors do (brief reasoning,
then a boxed letter; up to :data:`~covip.training.judges.base.PAPER_JUDGE_MAX_TOKENS` tokens unless
``judge_options`` say otherwise) and scores with their parser; ``strict`` asks for a lone boxed letter
(128 tokens) and scores with covip's. The report records the protocol, the judge's prompt style and
sampling settings, and how often the two parsers disagree on the run's judge outputs.

Captions files: JSONL of ``{"id", "caption"}``, a JSON object ``{id: caption}`` (the authors' Qwen
format), or ``{id: {"caption": caption}}`` (their Gemini format; a failed sample's ``[]`` reads as an
empty caption).

Outputs in ``out``: ``captions.jsonl``, ``judgments.jsonl`` (every question: polarity, correct letter, the
judge's raw output and letter, right or wrong: the audit trail), ``capeval.json`` (everything, for
scripts), ``capeval.png`` (bar chart), and with ``no_vision=True`` the same ``*_no_vision`` files.

The ``no_vision`` shortcut check captions every sample a second time with the query image removed from the
prompt (context, query header and instruction unchanged). A test set that measures personalization must
not be passable from the text alone: Acc+ without the image must be low. Verdict: ``pass`` when Acc+
without vision is at most half of Acc+ with vision, ``fail`` otherwise, ``inconclusive`` when Acc+ with
vision is below 5% (nothing to compare, e.g. a random-weight model).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.sdk import prompts
from covip.sdk.errors import DataError, InputError
from covip.training.data.loaders import load_capeval, load_testset_jsonl
from covip.training.data.schema import MCQA, Sample, read_jsonl
from covip.training.eval.common import JsonlStore, read_jsonl_records, run_meta, write_json, write_jsonl
from covip.training.eval.protocols import DEFAULT_PROTOCOL, check_protocol
from covip.training.eval.scoring import (
    BucketScore,
    QuestionRecord,
    format_table,
    parser_disagreement,
    plot_scores,
    question_record,
    score_records,
    scores_to_dict,
)

log = logging.getLogger(__name__)

__all__ = ["CapEvalItem", "CapEvalResult", "detect_format", "load_items", "read_captions", "caption_messages_for",
           "generate_captions", "judge_captions", "run_capeval", "no_vision_verdict", "DEFAULT_MAX_NEW_TOKENS"]

DEFAULT_MAX_NEW_TOKENS = 1024
NO_VISION_MIN_ACC = 0.05
NO_VISION_MAX_SHARE = 0.5
_CAPTION_ID_KEYS = ("id", "sample_id", "key")
_CAPTION_TEXT_KEYS = ("caption", "text", "output", "response", "prediction")


@dataclass(frozen=True)
class CapEvalItem:
    """One test sample as CapEval sees it: its questions, present concepts and (when known) its images."""

    id: str
    present: tuple[int, ...]
    pos_qas: tuple[MCQA, ...]
    neg_qas: tuple[MCQA, ...]
    sample: Sample | None = None
    """The caption sample (context images, dialogues, query image); None for a CapEval file alone."""

    @property
    def n_present(self) -> int:
        return len(self.present)


def detect_format(path: str | Path) -> str:
    """``"samples"`` (covip JSONL), ``"testset"`` (the authors' test-set JSONL) or ``"capeval"`` (their QA file)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8").lstrip()
    if text.startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and whole and all(isinstance(v, dict) and "qas" in v for v in whole.values()):
            return "capeval"
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        raise DataError(f"{path}: neither a JSONL test set nor a CapEval JSON file") from None
    if isinstance(record, dict) and "sample_type" in record:
        return "samples"
    if isinstance(record, dict) and "imgs" in record:
        return "testset"
    raise DataError(f"{path}: cannot tell its layout (expected covip samples with 'sample_type', the authors' "
                    "test-set JSONL with 'imgs', or a CapEval file of {key: {'qas', 'gts'}})")


def _item(sample: Sample) -> CapEvalItem:
    return CapEvalItem(sample.id, tuple(sample.present or ()), tuple(sample.pos_qas), tuple(sample.neg_qas), sample)


def load_items(test: str | Path, *, capeval: str | Path | None = None, image_root: str | Path | None = None,
               check_images: bool = True, limit: int | None = None,
               skipped: list[tuple[str, str]] | None = None) -> list[CapEvalItem]:
    """The scorable samples of a test file (see the module doc for the layouts), the first ``limit`` of them.

    CapEval entries that break the schema are left out, logged and, when ``skipped`` is a list, appended to
    it as ``(key, reason)``; the rest are scored (one bad record does not stop an evaluation).
    """
    test = Path(test)
    fmt = detect_format(test)
    if fmt == "capeval":
        if capeval is not None:
            raise InputError("--capeval goes with a test-set JSONL; the --test file is already a CapEval file")
        entries = load_capeval(test, on_error="skip", skipped=skipped)
        items = [CapEvalItem(e.id, e.gts, tuple(e.pos_qas()), tuple(e.neg_qas())) for e in entries.values()]
    elif fmt == "testset":
        if capeval is None:
            raise InputError(f"{test} is the authors' test-set JSONL: pass its questions with --capeval FILE")
        bad: list[tuple[str, str]] = []
        entries = load_capeval(capeval, on_error="skip", skipped=bad)
        if skipped is not None:
            skipped += bad
        broken = {key for key, _ in bad}
        samples = load_testset_jsonl(test, capeval=entries, image_root=image_root, check_images=check_images,
                                     on_error="skip")
        n_records = sum(1 for line in test.read_text(encoding="utf-8").splitlines() if line.strip())
        if skipped is not None and len(samples) < n_records - len(broken):
            skipped.append(("test-set", f"{n_records - len(broken) - len(samples)} record(s) of {test.name} "
                                        "could not be read (see the log)"))
        items = [_item(s) for s in samples]
    else:
        if capeval is not None:
            raise InputError("--capeval goes with the authors' test-set JSONL, not a covip samples file")
        samples = read_jsonl(test, image_root=image_root or test.parent, check_images=check_images)
        usable = [s for s in samples if s.sample_type == "caption" and s.present is not None and s.is_labelled]
        if len(usable) < len(samples):
            log.info("%s: scoring %d caption samples, skipping %d others (other types or no questions)",
                     test, len(usable), len(samples) - len(usable))
        items = [_item(s) for s in usable]
    if not items:
        why = f" ({len(skipped)} record(s) break the schema, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DataError(f"{test}: no caption samples with questions to evaluate{why}")
    return items[:limit] if limit is not None else items


def read_captions(path: str | Path) -> dict[str, str]:
    """Captions by sample id from a JSONL (``{"id", "caption"}`` per line) or a JSON object ``{id: caption}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None
        if isinstance(whole, dict) and whole and not set(whole) & set(_CAPTION_ID_KEYS):  # not one JSONL record
            if all(isinstance(v, str) for v in whole.values()):  # the authors' Qwen format
                return {str(k): v for k, v in whole.items()}
            if all(isinstance(v, dict) and "caption" in v for v in whole.values()):  # their Gemini format
                bad_keys = [k for k, v in whole.items() if not isinstance(v["caption"], (str, list))]
                if bad_keys:
                    raise DataError(f"{path}: the caption of {bad_keys[:3]} is neither text nor [] (a failed sample)")
                return {str(k): v["caption"] if isinstance(v["caption"], str) else "" for k, v in whole.items()}
    records, bad = read_jsonl_records(path)
    out: dict[str, str] = {}
    for rec in records:
        key = next((rec[k] for k in _CAPTION_ID_KEYS if k in rec), None)
        caption = next((rec[k] for k in _CAPTION_TEXT_KEYS if isinstance(rec.get(k), str)), None)
        if key is None or caption is None:
            bad += 1
            continue
        out[str(key)] = caption
    if bad:
        raise DataError(f"{path}: {bad} line(s) are not {{\"id\": ..., \"caption\": ...}} records")
    return out


def caption_messages_for(sample: Sample, *, vision: bool = True, pack: prompts.PromptPack | None = None) -> list[dict]:
    """The captioning chat of a test sample (its own context); ``vision=False`` drops the query image only
    (and its vision id, when the prompt pack numbers images)."""
    entries = [prompts.ContextEntry(dialogue=d, image=img) for d, img in zip(sample.dialogues, sample.context_images)]
    if vision:
        return prompts.caption_messages(entries, sample.query_image, pack=pack)
    marker = object()
    messages = prompts.caption_messages(entries, marker, pack=pack)
    for msg in messages:
        if isinstance(msg["content"], list):
            parts = msg["content"]
            at = next(i for i, p in enumerate(parts) if p.get("type") == "image" and p.get("image") is marker)
            drop = {at, at - 1} if prompts.load_pack(pack).vision_id else {at}
            msg["content"] = [p for i, p in enumerate(parts) if i not in drop]
    return messages


def _bar(total: int, desc: str, progress: bool | None, initial: int = 0) -> Any:
    from covip.sdk.progress import progress_bar

    return progress_bar(total=total, initial=initial, desc=f"capeval {desc}",
                        unit="sample" if "caption" in desc else "question", enabled=progress)


def generate_captions(items: Sequence[CapEvalItem], engine: Any, store_path: str | Path, *, vision: bool = True,
                      max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, progress: bool | None = None,
                      pack: prompts.PromptPack | None = None) -> dict[str, str]:
    """Caption every item with ``engine`` (greedy) into the resumable JSONL ``store_path``; captions by id."""
    from covip.sdk.engines.base import GenerationConfig

    missing = [it.id for it in items if it.sample is None]
    if missing:
        raise InputError(f"sample {missing[0]!r} has no images to caption (a CapEval file alone holds only "
                         "questions): pass the test-set JSONL with --capeval, or give --captions")
    expect = {"model": engine.model_id, "prompt_version": prompts.load_pack(pack).tag(), "vision": vision,
              "max_new_tokens": max_new_tokens}
    store = JsonlStore(store_path, expect=expect)
    todo = [it for it in items if it.id not in store]
    config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=0.0)
    bar = _bar(len(items), "caption" + ("" if vision else " (no vision)"), progress, len(items) - len(todo))
    try:
        for it in todo:
            t0 = time.perf_counter()
            gen = engine.generate(caption_messages_for(it.sample, vision=vision, pack=pack), config)  # type: ignore[arg-type]
            store.add({"id": it.id, "caption": gen.text.strip(), **expect, "finish_reason": gen.finish_reason,
                       "completion_tokens": gen.completion_tokens, "seconds": round(time.perf_counter() - t0, 3)})
            bar.update(1)
    finally:
        bar.close()
    return {it.id: store.get(it.id)["caption"] for it in items}  # type: ignore[index]


def judge_captions(items: Sequence[CapEvalItem], captions: Mapping[str, str], judge: Any, *, batch: int = 64,
                   progress: bool | None = None, desc: str = "judge", protocol: str = DEFAULT_PROTOCOL,
                   pack: prompts.PromptPack | None = None) -> list[QuestionRecord]:
    """Every question of every item judged from its caption; one :class:`QuestionRecord` per question."""
    from covip.training.judges import JudgeItem

    protocol = check_protocol(protocol)
    missing = [it.id for it in items if it.id not in captions]
    if missing:
        raise DataError(f"no caption for {len(missing)} sample(s), e.g. {missing[:3]}")
    jobs: list[tuple[CapEvalItem, MCQA, str]] = [(it, qa, pol) for it in items
                                                for pol, qas in (("pos", it.pos_qas), ("neg", it.neg_qas))
                                                for qa in qas]
    records: list[QuestionRecord] = []
    bar = _bar(len(jobs), desc, progress)
    try:
        for start in range(0, len(jobs), max(1, batch)):
            chunk = jobs[start:start + max(1, batch)]
            outputs = judge.complete([JudgeItem(captions[it.id], qa) for it, qa, _ in chunk], style=protocol,
                                     pack=pack)
            for (it, qa, pol), out in zip(chunk, outputs, strict=True):
                records.append(question_record(it.id, qa.id, polarity=pol, n_present=it.n_present,
                                               correct=qa.correct, judge_output=out, concept_index=qa.concept_index,
                                               protocol=protocol))
            bar.update(len(chunk))
    finally:
        bar.close()
    return records


def no_vision_verdict(vision: Mapping[str, BucketScore], no_vision: Mapping[str, BucketScore]) -> dict[str, Any]:
    """The shortcut check's verdict (rule in the module doc) with both runs' overall Acc+ and Acc−."""
    v, nv = vision["overall"], no_vision["overall"]
    out: dict[str, Any] = {"acc_pos_vision": v.acc_pos, "acc_pos_no_vision": nv.acc_pos,
                           "acc_neg_vision": v.acc_neg, "acc_neg_no_vision": nv.acc_neg,
                           "rule": f"pass when Acc+ without the query image <= {NO_VISION_MAX_SHARE:g} x Acc+ with it; "
                                   f"inconclusive when Acc+ with it < {NO_VISION_MIN_ACC:g}"}
    if v.acc_pos is None or nv.acc_pos is None or v.acc_pos < NO_VISION_MIN_ACC:
        out["verdict"] = "inconclusive"
        out["ratio"] = None
    else:
        out["ratio"] = round(nv.acc_pos / v.acc_pos, 6)
        out["verdict"] = "pass" if nv.acc_pos <= NO_VISION_MAX_SHARE * v.acc_pos else "fail"
    return out


@dataclass
class CapEvalResult:
    """What :func:`run_capeval` measured and wrote."""

    scores: dict[str, dict[str, BucketScore]]
    """``{"vision": {bucket: BucketScore}}`` plus ``"no vision"`` when asked."""
    report: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.scores, title=self.report.get("title", ""))


def _make_judge(judge: Any, out: Path, options: Mapping[str, Any] | None, cache: bool,
                protocol: str = "strict") -> tuple[Any, bool]:
    from covip.training.judges import Judge, make_judge
    from covip.training.judges.base import PAPER_JUDGE_MAX_TOKENS

    if isinstance(judge, Judge):
        return judge, False
    opts = dict(options or {})
    if str(judge).strip() not in ("lexical", "lexical-loose"):
        if cache:
            opts.setdefault("cache_path", str(out / "judge_cache.sqlite"))
        if protocol == "paper":  # the authors' judge writes its reasoning first: no tight cap
            opts.setdefault("max_tokens", PAPER_JUDGE_MAX_TOKENS)
    return make_judge(judge, **opts), True


def run_capeval(test: str | Path, *, out: str | Path, judge: Any = "lexical", model: Any = None,
                captions: str | Path | None = None, capeval: str | Path | None = None,
                image_root: str | Path | None = None, no_vision: bool = False, limit: int | None = None,
                max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, engine_options: Mapping[str, Any] | None = None,
                judge_options: Mapping[str, Any] | None = None, judge_cache: bool = True, judge_batch: int = 64,
                progress: bool | None = None, protocol: str = DEFAULT_PROTOCOL,
                prompt_pack: Any = None) -> CapEvalResult:
    """Run CapEval-QAs end to end (see the module doc); ``model`` is a spec string or an Engine;
    ``prompt_pack`` (a :class:`~covip.sdk.prompts.PromptPack` or a pack file) words the captioning and judge
    prompts (covip's by default)."""
    started = time.perf_counter()
    protocol = check_protocol(protocol)
    pack = prompts.load_pack(prompt_pack)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (model is None) == (captions is None):
        raise InputError("give exactly one of --model (caption with an engine) or --captions (a captions JSONL)")
    if no_vision and model is None:
        raise InputError("--no-vision captions again without the query image: it needs --model")
    skipped: list[tuple[str, str]] = []
    items = load_items(test, capeval=capeval, image_root=image_root, check_images=model is not None, limit=limit,
                       skipped=skipped)
    files = {"json": str(out / "capeval.json"), "png": str(out / "capeval.png"),
             "judgments": str(out / "judgments.jsonl")}
    engine = owned_engine = None
    if model is not None:
        if isinstance(model, str):
            from covip.sdk.engines.factory import make_engine

            engine = owned_engine = make_engine(model, **dict(engine_options or {}))
        else:
            engine = model
    the_judge, owned_judge = _make_judge(judge, out, judge_options, judge_cache, protocol)
    runs: dict[str, list[QuestionRecord]] = {}
    try:
        passes = [("vision", True)] + ([("no vision", False)] if no_vision else [])
        for name, vision in passes:
            suffix = "" if vision else "_no_vision"
            if engine is not None:
                files[f"captions{suffix}"] = str(out / f"captions{suffix}.jsonl")
                caps = generate_captions(items, engine, files[f"captions{suffix}"], vision=vision,
                                         max_new_tokens=max_new_tokens, progress=progress, pack=pack)
            else:
                files["captions"] = str(captions)
                caps = read_captions(captions)  # type: ignore[arg-type]
            runs[name] = judge_captions(items, caps, the_judge, batch=judge_batch, progress=progress,
                                        desc="judge" + ("" if vision else " (no vision)"), protocol=protocol,
                                        pack=pack)
            files[f"judgments{suffix}"] = str(out / f"judgments{suffix}.jsonl")
            # question ids repeat per concept (Q1-Q3 of each, as in the authors' files): key by concept too
            questions = {(it.id, qa.concept_index, qa.id): qa.question
                         for it in items for qa in (*it.pos_qas, *it.neg_qas)}
            write_jsonl(files[f"judgments{suffix}"],
                        ({**r.to_dict(), "question": questions[(r.sample_id, r.concept_index, r.question_id)]}
                         for r in runs[name]))
        judge_id = getattr(the_judge, "model_id", type(the_judge).__name__)
        judge_stats = the_judge.stats.as_dict() if hasattr(the_judge, "stats") else {}
        judge_sampling = the_judge.sampling_params() if hasattr(the_judge, "sampling_params") else {}
    finally:
        if owned_judge:
            the_judge.close()
        if owned_engine is not None:
            owned_engine.close()
    scores = {name: score_records(recs) for name, recs in runs.items()}
    model_id = getattr(engine, "model_id", None)
    title = (f"CapEval-QAs: {Path(test).name}, {len(items)} samples; captions: "
             f"{model_id or Path(str(captions)).name}; judge: {judge_id}")
    report: dict[str, Any] = {
        "kind": "covip-eval-capeval", "title": title, "test": str(test), "capeval": str(capeval) if capeval else None,
        "model": model_id, "meaningless_model": bool(getattr(engine, "meaningless", False)),
        "captions": None if captions is None else str(captions), "judge": judge_id, "judge_stats": judge_stats,
        "protocol": protocol, "judge_prompt": protocol, "judge_sampling": judge_sampling,
        "skipped_records": {"count": len(skipped), "examples": [{"id": k, "reason": r} for k, r in skipped[:10]]},
        "parser_disagreement": {name: parser_disagreement(recs) for name, recs in runs.items()},
        "prompt_version": pack.tag(), "prompt_pack": pack.describe(),
        "max_new_tokens": max_new_tokens if engine is not None else None,
        "n_samples": len(items), "n_questions": len(runs["vision"]),
        "scores": {name: scores_to_dict(s) for name, s in scores.items()},
    }
    if no_vision:
        report["no_vision_check"] = no_vision_verdict(scores["vision"], scores["no vision"])
    report.update(files=files, meta=run_meta(), elapsed_s=round(time.perf_counter() - started, 3))
    plot_scores(scores, files["png"], title)
    write_json(files["json"], report)
    return CapEvalResult(scores, report, files)
