"""covip.training.eval: measure personalization quality and speed.

* :mod:`.capeval`: CapEval-QAs (caption each test sample in its own context, judge every question, Acc+ /
  Acc− per number of present concepts), with the no-vision shortcut check;
* :mod:`.downstream`: the downstream diagnostics LSD / LAR / ITR with and without CAG;
* :mod:`.scoring`: the Acc+ / Acc− scorer;
* :mod:`.cli`: the ``covip eval`` commands (``register(group)``); ``covip bench`` is the SDK's
  (:mod:`covip.sdk.bench`).

Importing this package imports no engine, judge or torch; they load when an evaluation runs.
"""

from __future__ import annotations

from covip.training.eval.capeval import CapEvalItem, CapEvalResult, load_items, read_captions, run_capeval
from covip.training.eval.downstream import DownstreamResult, run_downstream
from covip.training.eval.scoring import BucketScore, QuestionRecord, question_record, score_records

__all__ = [
    "run_capeval",
    "CapEvalResult",
    "CapEvalItem",
    "load_items",
    "read_captions",
    "run_downstream",
    "DownstreamResult",
    "score_records",
    "question_record",
    "QuestionRecord",
    "BucketScore",
]
