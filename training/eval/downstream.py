"""Downstream diagnostic tasks with and without CAG: LSD, LAR, ITR (the paper, "Downstream").

Each sample (:mod:`covip.training.data.downstream`: the authors' field names) is answered by an engine in
the sample's own context (no memory search), in one or both modes:

* ``cag``: Caption-Augmented Generation. The caption pass (greedy, ``caption_tokens``) with
  :func:`covip.sdk.prompts.caption_messages`, then the answer pass continuing that chat
  (:func:`covip.sdk.prompts.answer_messages`: the caption as the assistant's turn, the question next).
* ``no_cag``: the question asked directly (:func:`covip.sdk.prompts.direct_messages`).

The answer pass samples as the authors' downstream code does (temperature 0.7, top-p 0.8, top-k 20,
presence penalty 1.5: :class:`covip.sdk.cag.CagConfig`) with a seed derived from the sample id and mode,
so a run is repeatable; ``greedy=True`` decodes it greedily instead.

Metrics (one number per sample, averaged over samples):

* **LSD** (last-seen detection): token-set F1 between the place in the answer's first ``\\boxed{}`` (the
  whole answer when it has no box; the box rate is reported) and the reference place. Tokens: lowercase,
  every non-alphanumeric character a space, the articles a/an/the dropped; sets, so repeats do not count.
  Several accepted references: the best F1.
* **LAR** (last-action recall): a judge says Correct or Wrong against the reference action. An LLM judge
  (``http://...``, ``gguf:``, ``hf:``) gets the prompt pack's LAR judge chat with the question, reference and answer
  and replies ``\\boxed{Correct}`` or ``\\boxed{Wrong}`` (unparsable = Wrong). The ``lexical`` judge (valid
  for templated synthetic data only) says Correct when every content word of the reference action (its
  tokens minus a few function words such as "my", "the", "to") occurs among the answer's tokens.
* **ITR** (instruction-triggered recall): 1 when the answer contains the planted code word (whole words,
  after the same normalization), else 0.

Protocols (``protocol=``, :mod:`.protocols`). The metrics above are covip's ``strict`` protocol. The
default, ``paper``, is the authors' (oyt9306/CoViP ``downstream/``): their questions
(:data:`~covip.training.data.downstream.PAPER_QUESTIONS`, in our words: LSD asks for ``//boxed{}``), their
second-pass layout (:func:`covip.sdk.prompts.paper_answer_messages`: the captioning instruction as the system
turn for LSD/LAR, :data:`~covip.sdk.prompts.PERSONALIZATION_PROMPT` for ITR; without CAG, the
personalization prompt as system turn for LAR/ITR and none for LSD), answers of up to 1,024 tokens, and their
scoring: LSD reads the last ``//boxed{}`` with set-of-whitespace-token F1, LAR's judge compares with the
record's ``last_action`` and counts a verdict containing "correct", ITR counts answers containing the
placeholder name (``SKS`` in their data, the code word in the synthetic data) case-sensitively.

Scoring only (``answers=``): answers made elsewhere (another engine, vLLM) are scored without loading a
model: a JSONL of ``{"id", "answer"}`` (optionally ``"mode"``: ``cag``/``no_cag``), a JSON object
``{id: answer}``, or the authors' JSON list of response strings in the data file's order.

Outputs in ``out``: ``answers_<task>.jsonl`` (resumable raw answers and captions keyed by sample id and
mode), ``scored_<task>.jsonl`` (per sample and mode: the score and, for LAR, the judge's output),
``downstream_<task>.json`` and ``downstream_<task>.png`` (with vs without CAG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import textwrap
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from covip.sdk import prompts
from covip.sdk.errors import DataError, InputError
from covip.training.data.downstream import (
    DEFAULT_QUESTIONS,
    TASKS,
    DownstreamSample,
    load_downstream,
)
from covip.training.eval.common import JsonlStore, read_jsonl_records, run_meta, write_json, write_jsonl
from covip.training.eval.protocols import (
    DEFAULT_PROTOCOL,
    check_protocol,
    paper_itr_score,
    paper_lar_correct,
    paper_lsd_score,
)
from covip.training.rewards import parse_boxed

log = logging.getLogger(__name__)

__all__ = ["MODES", "METRICS", "tokens", "token_set_f1", "lsd_score", "itr_score", "lar_lexical_correct",
           "lar_judge_messages", "paper_lar_judge_messages", "parse_verdict", "DownstreamResult", "run_downstream",
           "answer_sample", "question_for", "paper_system", "read_answers"]

MODES = ("cag", "no_cag", "given")
MODE_LABELS = {"cag": "with CAG", "no_cag": "without CAG", "given": "given answers"}
METRICS = {"lsd": "token-set F1 of the boxed place", "lar": "judged Correct (share)",
           "itr": "code word present (share)"}
DEFAULT_CAPTION_TOKENS = 1024
DEFAULT_ANSWER_TOKENS = 256
PAPER_ANSWER_TOKENS = 1024
_ARTICLES = frozenset({"a", "an", "the"})
_FUNCTION_WORDS = _ARTICLES | frozenset({"my", "to", "of", "on", "in", "at", "and", "for", "with", "by", "i", "was",
                                         "some", "up"})
LAR_JUDGE_SYSTEM = prompts.LAR_JUDGE_SYSTEM
"""The strict LAR judge's system turn in covip's prompt pack."""


def tokens(text: str, drop: frozenset[str] = _ARTICLES) -> list[str]:
    """Lowercased alphanumeric tokens of ``text`` without the words in ``drop``."""
    return [t for t in re.sub(r"[^0-9a-z]+", " ", str(text).lower()).split() if t not in drop]


def token_set_f1(prediction: str, reference: str) -> float:
    """F1 between the token sets of ``prediction`` and ``reference`` (0 when either is empty)."""
    p, g = set(tokens(prediction)), set(tokens(reference))
    hits = len(p & g)
    if not hits:
        return 0.0
    precision, recall = hits / len(p), hits / len(g)
    return 2 * precision * recall / (precision + recall)


def lsd_score(answer: str, references: Sequence[str]) -> tuple[float, bool]:
    """(best token-set F1 of the boxed place against the references, whether the answer had a box)."""
    boxed = parse_boxed(answer)
    predicted = boxed if boxed is not None else answer
    return max(token_set_f1(predicted, ref) for ref in references), boxed is not None


def _contains(text: str, phrase: str) -> bool:
    needle = " ".join(tokens(phrase, frozenset()))
    return bool(needle) and f" {needle} " in f" {' '.join(tokens(text, frozenset()))} "


def itr_score(answer: str, references: Sequence[str]) -> bool:
    """True when the answer contains one of the code words (whole words, normalized)."""
    return any(_contains(answer, ref) for ref in references)


def lar_lexical_correct(answer: str, references: Sequence[str]) -> bool:
    """The lexical LAR rule: every content word of a reference action occurs among the answer's tokens."""
    have = set(tokens(answer, frozenset()))
    for ref in references:
        need = set(tokens(ref, _FUNCTION_WORDS)) or set(tokens(ref, frozenset()))
        if need and need <= have:
            return True
    return False


def paper_lar_judge_messages(question: str, reference: str, answer: str,
                             pack: prompts.PromptPack | None = None) -> list[dict[str, str]]:
    """The LAR judge chat of the paper protocol: one user turn, a one-word verdict (our wording)."""
    return prompts.lar_judge_messages(question, reference, answer, style="paper", pack=pack)


def lar_judge_messages(question: str, reference: str, answer: str,
                       pack: prompts.PromptPack | None = None) -> list[dict[str, str]]:
    """The strict Correct/Wrong chat an LLM judge gets for one LAR answer."""
    return prompts.lar_judge_messages(question, reference, answer, style="strict", pack=pack)


def parse_verdict(text: str | None) -> bool:
    """True for ``\\boxed{Correct}``; Wrong, both, or unparsable output are False."""
    content = parse_boxed(text)
    if content is None:
        return False
    words = set(tokens(content, frozenset()))
    return "correct" in words and not words & {"wrong", "incorrect", "not"}


def _entries(sample: DownstreamSample) -> list[prompts.ContextEntry]:
    return [prompts.ContextEntry(dialogue=d, image=img) for d, img in zip(sample.dialogues, sample.context_images)]


def _seed(sample_id: str, mode: str, base: int) -> int:
    return int(hashlib.sha256(f"{base}:{sample_id}:{mode}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def question_for(sample: DownstreamSample, protocol: str, pack: prompts.PromptPack | None = None) -> str:
    """The question asked: the record's own, else the prompt pack's question of the task for the protocol."""
    pack = pack or prompts.DEFAULT_PACK
    if sample.question == DEFAULT_QUESTIONS[sample.task]:  # the record had none of its own
        return (pack.paper_questions if protocol == "paper" else pack.questions)[sample.task]
    return sample.question


def paper_system(task: str, mode: str) -> str:
    """The system turn of the paper's answer pass (see the module doc)."""
    if mode == "cag":
        return "personalization" if task == "itr" else "caption"
    return "none" if task == "lsd" else "personalization"


def answer_sample(engine: Any, sample: DownstreamSample, mode: str, *, caption_config: Any,
                  answer_config: Any, protocol: str = "strict",
                  pack: prompts.PromptPack | None = None) -> dict[str, Any]:
    """Answer one sample in one mode: ``{"answer", "caption", tokens and timings}``."""
    entries = _entries(sample)
    question = question_for(sample, protocol, pack)
    t0 = time.perf_counter()
    caption = None
    info: dict[str, Any] = {}
    if mode == "cag":
        cap = engine.generate(prompts.caption_messages(entries, sample.query_image, pack=pack), caption_config)
        caption = cap.text  # kept as generated: the answer pass then continues the caption pass's KV cache
        info["caption_tokens"] = cap.completion_tokens
        if protocol == "paper":
            messages = prompts.paper_answer_messages(entries, sample.query_image, caption, question,
                                                     system=paper_system(sample.task, mode), pack=pack)
        else:
            messages = prompts.answer_messages(entries, sample.query_image, caption, question, pack=pack)
    elif mode == "no_cag":
        if protocol == "paper":
            messages = prompts.paper_direct_messages(entries, sample.query_image, question,
                                                     system=paper_system(sample.task, mode), pack=pack)
        else:
            messages = prompts.direct_messages(entries, sample.query_image, question, pack=pack)
    else:
        raise InputError(f"mode must be 'cag' or 'no_cag', got {mode!r}")
    gen = engine.generate(messages, answer_config)
    info.update(answer_tokens=gen.completion_tokens, answer_cached_tokens=gen.cached_tokens,
                seconds=round(time.perf_counter() - t0, 3))
    return {"answer": gen.text.strip(), "caption": None if caption is None else caption.strip(), **info}


@dataclass
class DownstreamResult:
    """What :func:`run_downstream` measured and wrote."""

    task: str
    scores: dict[str, dict[str, Any]]
    """Per mode: ``score`` (mean over samples), ``n`` and task extras (LSD ``boxed_rate``)."""
    report: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        modes = list(self.scores)
        lines = [self.report.get("title", ""), f"metric: {METRICS[self.task]}",
                 f"{'samples':>8}" + "".join(f" {MODE_LABELS[m]:>12}" for m in modes),
                 f"{self.scores[modes[0]]['n']:>8}" + "".join(f" {self.scores[m]['score']:>12.3f}" for m in modes)]
        if self.task == "lsd":
            lines.append("boxed answers: " + ", ".join(f"{MODE_LABELS[m]} {self.scores[m]['boxed_rate']:.0%}"
                                                       for m in modes))
        return "\n".join(line for line in lines if line)


def _grade(task: str, rows: list[dict[str, Any]], judge: Any, protocol: str,
           pack: prompts.PromptPack | None = None) -> None:
    """Add ``score`` (and judge fields) to each answer row in place."""
    if task == "lsd":
        for r in rows:
            scorer = paper_lsd_score if protocol == "paper" else lsd_score
            r["score"], r["boxed"] = scorer(r["answer"], r["references"])
            r["score"] = round(r["score"], 6)
    elif task == "itr":
        for r in rows:
            ok = paper_itr_score(r["answer"], r["placeholders"]) if protocol == "paper" \
                else itr_score(r["answer"], r["references"])
            r["score"] = float(ok)
    else:
        from covip.training.judges import LexicalJudge

        if isinstance(judge, LexicalJudge):
            for r in rows:
                r["score"] = float(lar_lexical_correct(r["answer"], r["judge_references"]))
                r["judge"] = "lexical"
            return
        build = paper_lar_judge_messages if protocol == "paper" else lar_judge_messages
        prompts_ = [build(r["question"], r["judge_references"][0], r["answer"], pack) for r in rows]
        outputs = judge.complete_messages(prompts_) if prompts_ else []
        for r, out in zip(rows, outputs, strict=True):
            r["judge_output"] = out
            r["score"] = float(paper_lar_correct(out) if protocol == "paper" else parse_verdict(out))


def read_answers(path: str | Path, samples: Sequence[DownstreamSample]) -> dict[tuple[str, str], str]:
    """Answers made elsewhere, keyed by (sample id, mode); formats in the module doc."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the answers file {path} ({exc.strerror or exc})") from None
    ids = [s.id for s in samples]
    out: dict[tuple[str, str], str] = {}
    stripped = text.lstrip()
    whole: Any = None
    if stripped.startswith(("[", "{")):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # maybe JSONL
    if isinstance(whole, list):
        if len(whole) != len(ids) or not all(isinstance(a, str) for a in whole):
            raise DataError(f"{path}: a JSON list of answers must hold one string per sample of the data "
                            f"({len(ids)}), in the data's order; got {len(whole)} item(s)")
        return {(sid, "given"): a for sid, a in zip(ids, whole)}
    if isinstance(whole, dict) and "answer" not in whole:
        records = [{"id": k, "answer": v} for k, v in whole.items()]
    else:
        records, bad = read_jsonl_records(path)
        if bad:
            raise DataError(f"{path}: {bad} line(s) are not valid JSON objects; expected "
                            f'{{"id": ..., "answer": ...}} per line')
    known = set(ids)
    for i, rec in enumerate(records, start=1):
        if not isinstance(rec, dict) or not isinstance(rec.get("answer"), str) or "id" not in rec:
            raise DataError(f"{path}: record {i} is not {{\"id\": ..., \"answer\": \"...\"}}")
        mode = str(rec.get("mode") or "given")
        if mode not in MODES:
            raise DataError(f"{path}: record {i} has mode {mode!r}; use one of {list(MODES)}")
        sid = str(rec["id"])
        if sid not in known:
            raise DataError(f"{path}: record {i} answers sample {sid!r}, which is not in the data file")
        out[(sid, mode)] = rec["answer"]
    if not out:
        raise DataError(f"{path}: no answers")
    return out


def _plot(task: str, scores: Mapping[str, Mapping[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    modes = list(scores)
    bars = ax.bar([MODE_LABELS[m] for m in modes], [scores[m]["score"] for m in modes],
                  color=["tab:blue" if m == "cag" else "tab:gray" for m in modes])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel(METRICS[task])
    ax.set_title(textwrap.fill(title, 70), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _references(sample: DownstreamSample, protocol: str) -> dict[str, list[str]]:
    """What each scorer compares with: references, the LAR judge's reference, the ITR placeholders."""
    judge_ref = [sample.last_action] if protocol == "paper" and sample.last_action else list(sample.answers)
    placeholder = sample.meta.get("placeholder") if isinstance(sample.meta, Mapping) else None
    placeholders = [str(placeholder)] if placeholder else list(sample.answers)
    return {"references": list(sample.answers), "judge_references": judge_ref, "placeholders": placeholders}


def run_downstream(task: str, data: str | Path, *, out: str | Path, model: Any = None, judge: Any = None,
                   modes: Sequence[str] = ("cag",), image_root: str | Path | None = None, limit: int | None = None,
                   caption_tokens: int = DEFAULT_CAPTION_TOKENS, answer_tokens: int | None = None,
                   greedy: bool = False, seed: int = 0, engine_options: Mapping[str, Any] | None = None,
                   judge_options: Mapping[str, Any] | None = None, progress: bool | None = None,
                   protocol: str = DEFAULT_PROTOCOL, answers: str | Path | None = None,
                   prompt_pack: Any = None) -> DownstreamResult:
    """Answer a downstream task file in the given modes and score it, or score ``answers`` (see the module doc)."""
    from covip.sdk.cag import CagConfig
    from covip.sdk.engines.base import GenerationConfig
    from covip.sdk.progress import progress_bar

    started = time.perf_counter()
    protocol = check_protocol(protocol)
    pack = prompts.load_pack(prompt_pack)
    if task not in TASKS:
        raise InputError(f"--task must be one of {list(TASKS)}, got {task!r}")
    if (model is None) == (answers is None):
        raise InputError("give exactly one of --model (answer with an engine) or --answers (score a file of answers)")
    if answers is None:
        modes = [m for m in MODES[:2] if m in set(modes)]
        if not modes:
            raise InputError("modes must be among ('cag', 'no_cag')")
    if task == "lar" and judge is None:
        raise InputError("LAR is graded by a judge: pass --judge ('lexical' for the synthetic data, an LLM judge "
                         "such as 'http://host:8000/v1' otherwise)")
    if answer_tokens is None:
        answer_tokens = PAPER_ANSWER_TOKENS if protocol == "paper" else DEFAULT_ANSWER_TOKENS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_downstream(data, task, image_root=image_root)[:limit]
    if not samples:
        raise InputError(f"{data}: no {task} samples")
    given = read_answers(answers, samples) if answers is not None else None
    if given is not None:
        modes = [m for m in MODES if any(k[1] == m for k in given)]
    from covip.sdk.engines.factory import make_engine
    from covip.training.judges import Judge, make_judge

    the_judge = None
    if task == "lar":
        if isinstance(judge, Judge):
            the_judge = judge
        else:
            opts = dict(judge_options or {})
            if str(judge).strip() != "lexical":
                opts.setdefault("cache_path", str(out / "judge_cache.sqlite"))
                if protocol == "paper":
                    from covip.training.judges.base import PAPER_JUDGE_MAX_TOKENS

                    opts.setdefault("max_tokens", PAPER_JUDGE_MAX_TOKENS)
            the_judge = make_judge(judge, **opts)
    caption_config = GenerationConfig(max_new_tokens=caption_tokens, temperature=0.0)
    answer_base = replace(CagConfig().answer, max_new_tokens=answer_tokens)
    if greedy:
        answer_base = GenerationConfig(max_new_tokens=answer_tokens, temperature=0.0)
    files = {"answers": str(out / f"answers_{task}.jsonl"), "scored": str(out / f"scored_{task}.jsonl"),
             "json": str(out / f"downstream_{task}.json"), "png": str(out / f"downstream_{task}.png")}
    engine = None
    try:
        if given is not None:
            files["answers"] = str(answers)
            answer_of = {f"{sid}|{m}": a for (sid, m), a in given.items()}
            jobs = [(s, m) for s in samples for m in modes if f"{s.id}|{m}" in answer_of]
            missing = len(samples) * len(modes) - len(jobs)
            if missing:
                log.warning("%s: %d sample/mode pair(s) have no answer and are not scored", answers, missing)
            if not jobs:
                raise DataError(f"{answers}: none of its answers belongs to a sample of {data}")
        else:
            engine = make_engine(model, **dict(engine_options or {})) if isinstance(model, str) else model
            expect = {"model": engine.model_id, "prompt_version": pack.tag(), "protocol": protocol,
                      "caption_tokens": caption_tokens, "answer_tokens": answer_tokens, "greedy": greedy,
                      "seed": seed}
            store = JsonlStore(files["answers"], key="key", expect=expect)
            jobs = [(s, m) for s in samples for m in modes]
            todo = [(s, m) for s, m in jobs if f"{s.id}|{m}" not in store]
            bar = progress_bar(total=len(jobs), initial=len(jobs) - len(todo), desc=f"downstream {task} answers",
                               unit="answer", enabled=progress)
            try:
                for s, m in todo:
                    cfg = answer_base if greedy else replace(answer_base, seed=_seed(s.id, m, seed))
                    res = answer_sample(engine, s, m, caption_config=caption_config, answer_config=cfg,
                                        protocol=protocol, pack=pack)
                    store.add({"key": f"{s.id}|{m}", "id": s.id, "mode": m, **expect, **res})
                    bar.update(1)
            finally:
                bar.close()
            answer_of = {f"{s.id}|{m}": store.get(f"{s.id}|{m}")["answer"] for s, m in jobs}  # type: ignore[index]
        rows = [{"id": s.id, "mode": m, "question": question_for(s, protocol, pack), **_references(s, protocol),
                 "answer": answer_of[f"{s.id}|{m}"]} for s, m in jobs]
        _grade(task, rows, the_judge, protocol, pack)
        judge_id = getattr(the_judge, "model_id", None) if the_judge is not None else None
        judge_stats = the_judge.stats.as_dict() if the_judge is not None else None
        judge_sampling = the_judge.sampling_params() if the_judge is not None else None
    finally:
        if the_judge is not None and not isinstance(judge, Judge):
            the_judge.close()
        if isinstance(model, str) and engine is not None:
            engine.close()
    write_jsonl(files["scored"], rows)
    scores: dict[str, dict[str, Any]] = {}
    for m in modes:
        mine = [r for r in rows if r["mode"] == m]
        if not mine:
            continue
        scores[m] = {"score": round(sum(r["score"] for r in mine) / len(mine), 6), "n": len(mine)}
        if task == "lsd":
            scores[m]["boxed_rate"] = round(sum(r["boxed"] for r in mine) / len(mine), 6)
    modes = list(scores)
    source = engine.model_id if engine is not None else f"answers {Path(str(answers)).name}"
    title = f"{task.upper()} ({protocol} protocol): {Path(str(data)).name}, {len(samples)} samples; {source}" + (
        f"; judge {judge_id}" if judge_id else "")
    report: dict[str, Any] = {
        "kind": "covip-eval-downstream", "title": title, "task": task, "metric": METRICS[task], "data": str(data),
        "protocol": protocol, "model": engine.model_id if engine is not None else None,
        "answers": None if answers is None else str(answers),
        "meaningless_model": bool(getattr(engine, "meaningless", False)),
        "judge": judge_id, "judge_stats": judge_stats, "judge_sampling": judge_sampling, "modes": modes,
        "scores": scores,
        "cag_minus_no_cag": round(scores["cag"]["score"] - scores["no_cag"]["score"], 6)
        if {"cag", "no_cag"} <= set(scores) else None,
        "generation": None if engine is None else {
            "caption": {"max_new_tokens": caption_tokens, "temperature": 0.0},
            "answer": {k: getattr(answer_base, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k",
                                                            "presence_penalty")},
            "seed": None if greedy else seed, "layout": "paper" if protocol == "paper" else "prefix-reuse"},
        "prompt_version": pack.tag(), "prompt_pack": pack.describe(), "n_samples": len(samples),
        "files": files, "meta": run_meta(), "elapsed_s": round(time.perf_counter() - started, 3),
    }
    _plot(task, scores, Path(files["png"]), title)
    write_json(files["json"], report)
    return DownstreamResult(task, scores, report, files)
