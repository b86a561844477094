"""Run logs of GSPO training: per-step metrics (JSONL + TensorBoard) and per-completion reward components.

* :class:`MetricsCallback` (a ``transformers.TrainerCallback``): every log event of the trainer (trl's
  ``reward``, ``reward_std``, ``rewards/<func>/mean``, the ``covip/r_vis``, ``covip/r_caps_pos``,
  ``covip/r_caps_neg``, ``covip/r_verify``, ``covip/degenerate``, ``covip/over_length`` means that
  :class:`~covip.training.rewards.CoViPReward` reports, ``loss``, ``clip_ratio/*``, ``completions/*``, ...)
  becomes one line of ``logs/metrics.jsonl`` and TensorBoard scalars under ``logs/tensorboard``. Only the
  main process writes.
* :class:`LoggedReward`: wraps a :class:`CoViPReward` for trl and appends every completion's components
  (sample id and type, reward, r_vis / r_caps parts / r_verify, degeneration rule, over-length, judge
  letters, the completion text) to ``logs/samples.jsonl`` (``samples.rank<N>.jsonl`` on other processes,
  which score their own share of the batch).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from covip.training.rewards import CoViPReward, completion_text

__all__ = ["MetricsCallback", "LoggedReward", "read_metrics"]

log = logging.getLogger(__name__)

_MAX_TEXT = 4000  # characters of a completion kept in samples.jsonl


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


class MetricsCallback(TrainerCallback):
    """Write each trainer log event to ``metrics_path`` (JSONL) and, when given, TensorBoard."""

    def __init__(self, metrics_path: str | Path, tensorboard_dir: str | Path | None = None) -> None:
        self.metrics_path = Path(metrics_path)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.records: list[dict[str, Any]] = []
        self._writer: Any = None
        self._start = time.time()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if self.tensorboard_dir is not None and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": _jsonable(state.epoch),
                  "elapsed_s": round(time.time() - self._start, 3)}
        record.update({k: _jsonable(v) for k, v in logs.items()})
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (with its ``step``) to the JSONL file and TensorBoard."""
        record = {k: _jsonable(v) for k, v in record.items()}
        record.setdefault("elapsed_s", round(time.time() - self._start, 3))
        logs = {k: v for k, v in record.items() if k not in ("step", "epoch", "elapsed_s")}
        self.records.append(record)
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
        if self._writer is not None:
            for key, value in logs.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(key, value, record["step"])
            self._writer.flush()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def reward_history(self) -> list[float]:
        """The mean reward of every logged training step, in order."""
        return [r["reward"] for r in self.records if isinstance(r.get("reward"), (int, float))]


class LoggedReward:
    """A trl reward function around :class:`CoViPReward` that also writes per-completion components."""

    def __init__(self, reward: CoViPReward, samples_path: str | Path | None) -> None:
        self.reward = reward
        self.samples_path = Path(samples_path) if samples_path is not None else None
        self.__name__ = getattr(reward, "__name__", "covip_reward")

    def __repr__(self) -> str:
        return f"LoggedReward({self.reward!r}, samples_path={str(self.samples_path)!r})"

    def __call__(self, prompts: Any = None, completions: Any = None, **columns: Any) -> list[float]:
        comps = self.reward.score(completions, **columns)
        if self.samples_path is not None:
            state = columns.get("trainer_state")
            step = getattr(state, "global_step", None)
            step = step + 1 if isinstance(step, int) else None  # the optimizer step these rollouts serve
            ids = columns.get("sample_id") or [None] * len(comps)
            self.samples_path.parent.mkdir(parents=True, exist_ok=True)
            with self.samples_path.open("a", encoding="utf-8") as fh:
                for comp, sid, completion in zip(comps, ids, completions or []):
                    record = {"step": step, "sample_id": sid, **comp.as_dict(),
                              "completion": completion_text(completion)[:_MAX_TEXT]}
                    fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        return [c.reward for c in comps]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file."""
    out = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(json.loads(line))
    return out
