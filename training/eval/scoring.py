"""CapEval-QAs scoring: Acc+ and Acc− micro-averaged over questions, per bucket of present concepts.

The paper, "CapEval-QAs evaluation": the judge answers every question of a test sample from the
caption alone. A *positive* question belongs to a concept present in the query image and is right when the
judge picks its correct letter (A/B/C); a *negative* question belongs to an absent (distractor) concept
and is right when the judge answers D ("cannot be determined"). Unparsable judge output counts as D
(:func:`covip.training.rewards.judge_letter`), so it is wrong on a positive question and right on a
negative one.

* Acc+ = right positive questions / positive questions; Acc− = negative questions answered D / negative
  questions. Both are micro-averages over questions (every question weighs the same, so a sample with 4
  present concepts weighs more in Acc+ than one with 1).
* Buckets: samples grouped by their number of present concepts (1, 2, 3, 4 in the authors' test set; any
  other count gets its own bucket), plus ``overall`` (all questions).
* A bucket without questions of one polarity reports that accuracy as None (shown as "-").

Right or wrong depends on the protocol (:mod:`.protocols`): ``paper`` (the default) reads the judge's first
box and counts the expected letter occurring in it, as the authors' code does; ``strict`` reads a lone
letter (hedges = D). Every record carries both verdicts, so a run reports how often they disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from covip.sdk.errors import InputError
from covip.training.eval.protocols import check_protocol, paper_judge_right
from covip.training.rewards import judge_letter

__all__ = ["QuestionRecord", "BucketScore", "question_record", "score_records", "BUCKETS", "format_table",
           "parser_disagreement"]

BUCKETS = ("1", "2", "3", "4")
"""Buckets always shown (the authors' test set holds 1 to 4 present concepts per sample)."""


@dataclass(frozen=True)
class QuestionRecord:
    """One judged question (one line of the per-question audit JSONL)."""

    sample_id: str
    question_id: str
    concept_index: int | None
    polarity: str
    """``"pos"`` (concept present: answer = ``correct``) or ``"neg"`` (concept absent: answer must be D)."""
    n_present: int
    correct: str
    judge_output: str
    answer: str
    """The judge's letter read from ``judge_output`` by the strict parser (unparsable or hedged = D)."""
    protocol: str = "paper"
    """Which rule :attr:`right` applies (``paper`` or ``strict``)."""

    @property
    def expected(self) -> str:
        """The letter a right answer gives: the correct option, or D for a negative question."""
        return "D" if self.polarity == "neg" else self.correct

    @property
    def right_strict(self) -> bool:
        return self.answer == self.expected

    @property
    def right_paper(self) -> bool:
        return paper_judge_right(self.judge_output, self.expected)

    @property
    def right(self) -> bool:
        return self.right_paper if self.protocol == "paper" else self.right_strict

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "right": self.right, "right_strict": self.right_strict,
                "right_paper": self.right_paper}


def question_record(sample_id: str, question_id: str, *, polarity: str, n_present: int, correct: str,
                    judge_output: str, concept_index: int | None = None, protocol: str = "paper") -> QuestionRecord:
    """Build a :class:`QuestionRecord`, reading the judge's letter from its raw output (unparsable = D)."""
    protocol = check_protocol(protocol)
    if polarity not in ("pos", "neg"):
        raise InputError(f"polarity must be 'pos' or 'neg', got {polarity!r}")
    correct = "D" if polarity == "neg" else str(correct).strip().upper()
    if correct not in ("A", "B", "C", "D"):
        raise InputError(f"question {question_id!r} of sample {sample_id!r}: correct letter {correct!r} is not A-D")
    return QuestionRecord(str(sample_id), str(question_id), concept_index, polarity, int(n_present), correct,
                          str(judge_output or ""), judge_letter(judge_output), protocol)


@dataclass
class BucketScore:
    """Counts and accuracies of one bucket."""

    n_samples: int = 0
    n_pos: int = 0
    pos_right: int = 0
    n_neg: int = 0
    neg_right: int = 0

    @property
    def acc_pos(self) -> float | None:
        return self.pos_right / self.n_pos if self.n_pos else None

    @property
    def acc_neg(self) -> float | None:
        return self.neg_right / self.n_neg if self.n_neg else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "acc_pos": _round(self.acc_pos), "acc_neg": _round(self.acc_neg)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def score_records(records: Iterable[QuestionRecord | Mapping[str, Any]]) -> dict[str, BucketScore]:
    """Per-bucket scores (keys ``"1"``..``"4"``, other counts, and ``"overall"``) of judged questions."""
    buckets: dict[str, BucketScore] = {b: BucketScore() for b in BUCKETS}
    overall = BucketScore()
    samples: dict[str, set[str]] = {}
    for rec in records:
        if isinstance(rec, Mapping):
            rec = QuestionRecord(**{k: rec[k] for k in QuestionRecord.__dataclass_fields__ if k in rec})
        key = str(rec.n_present)
        b = buckets.setdefault(key, BucketScore())
        for s in (b, overall):
            if rec.polarity == "pos":
                s.n_pos += 1
                s.pos_right += rec.right
            else:
                s.n_neg += 1
                s.neg_right += rec.right
        samples.setdefault(key, set()).add(rec.sample_id)
    for key, ids in samples.items():
        buckets[key].n_samples = len(ids)
    overall.n_samples = sum(len(ids) for ids in samples.values())
    ordered = {k: buckets[k] for k in sorted(buckets, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0))}
    ordered["overall"] = overall
    return ordered


def parser_disagreement(records: Iterable[QuestionRecord]) -> dict[str, Any]:
    """How often the paper and strict parsers judge a question differently (count, share, by direction)."""
    records = list(records)
    paper_only = sum(r.right_paper and not r.right_strict for r in records)
    strict_only = sum(r.right_strict and not r.right_paper for r in records)
    n = len(records)
    return {"questions": n, "disagree": paper_only + strict_only,
            "share": round((paper_only + strict_only) / n, 6) if n else None,
            "right_only_under_paper": paper_only, "right_only_under_strict": strict_only}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:5.1f}"


def format_table(runs: Mapping[str, Mapping[str, BucketScore]], title: str = "") -> str:
    """A plain-text table: one row per bucket; per run (e.g. ``vision``, ``no vision``) Acc+ and Acc−."""
    names = list(runs)
    first = runs[names[0]]
    head = f"{'present':>8} {'samples':>7} {'pos Qs':>7} {'neg Qs':>7}"
    for name in names:
        head += f" | {'Acc+ ' + name:>{max(10, len(name) + 5)}} {'Acc- ' + name:>{max(10, len(name) + 5)}}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for key, b in first.items():
        row = f"{key:>8} {b.n_samples:>7} {b.n_pos:>7} {b.n_neg:>7}"
        for name in names:
            s = runs[name].get(key, BucketScore())
            w = max(10, len(name) + 5)
            row += f" | {_pct(s.acc_pos):>{w}} {_pct(s.acc_neg):>{w}}"
        lines.append(row)
    lines.append("Acc+ = % of questions about present concepts answered right; Acc- = % of questions about "
                 "absent concepts answered D (micro-averaged over questions).")
    return "\n".join(lines)


def scores_to_dict(scores: Mapping[str, BucketScore]) -> dict[str, Any]:
    """JSON-able per-bucket scores."""
    return {k: v.to_dict() for k, v in scores.items()}


def plot_scores(runs: Mapping[str, Mapping[str, BucketScore]], path: Any, title: str) -> None:
    """Grouped bar chart (matplotlib, Agg): Acc+ and Acc− per bucket for each run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(next(iter(runs.values())))
    series: list[tuple[str, Sequence[float | None], str, str | None]] = []
    for name, scores in runs.items():
        hatch = "//" if "no vision" in name else None
        for metric, label, colour in (("acc_pos", "Acc+", "tab:blue"), ("acc_neg", "Acc\u2212", "tab:orange")):
            vals = [getattr(scores.get(k, BucketScore()), metric) for k in keys]
            series.append((f"{label} ({name})" if len(runs) > 1 else label, vals, colour, hatch))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(keys) * len(series) / 2), 3.8))
    width = 0.8 / len(series)
    for i, (label, vals, colour, hatch) in enumerate(series):
        xs = [k + (i - (len(series) - 1) / 2) * width for k in range(len(keys))]
        bars = ax.bar(xs, [100 * (v or 0.0) for v in vals], width, label=label, color=colour, hatch=hatch,
                      alpha=0.55 if hatch else 1.0, edgecolor="black" if hatch else None, linewidth=0.4)
        ax.bar_label(bars, labels=["n/a" if v is None else f"{100 * v:.0f}" for v in vals], fontsize=7)
    ax.set_xticks(range(len(keys)), [f"{k} present" if k.isdigit() else k for k in keys])
    ax.set_ylim(0, 108)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(series)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
