"""Progress of Hugging Face ``Trainer`` runs without a terminal: plain lines instead of tqdm's bar.

Measured with transformers 5.25 and no terminal: the ``Trainer``'s own ``ProgressCallback`` writes its bar to
stderr as carriage-return fragments (one endless line in a log file, no newline until the run ends) and prints
each logging step's metrics dict on *stdout*, where it mixes with a command's ``--json`` document and says
neither which step nor how long is left. :func:`use_progress_lines` swaps it, when stderr is no terminal,
for :class:`ProgressLinesCallback`, which writes :mod:`covip.sdk.progress` lines (25/50/75/100% and every
20 s) with the latest loss or reward. On a terminal the trainer keeps its own bar; with progress off
(``disable_tqdm``) nothing is changed.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from covip.sdk.progress import ProgressBar, progress_bar, wants_lines

__all__ = ["ProgressLinesCallback", "use_progress_lines"]

_SHOWN = ("loss", "reward", "train_loss")
"""The logged values a progress line repeats (the rest are in the run's metrics file)."""


class ProgressLinesCallback(TrainerCallback):
    """Log ``<desc>: step/max_steps steps (pct), elapsed, left, rate, loss L`` lines (main process only)."""

    def __init__(self, desc: str = "training") -> None:
        self.desc = desc
        self.bar: ProgressBar | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the line bar at the run's current step (a resumed run starts past 0)."""
        if state.is_world_process_zero:
            self.bar = progress_bar(total=state.max_steps or None, desc=self.desc, unit="step",
                                    initial=state.global_step or 0, enabled=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Count the optimizer steps done since the last call."""
        if self.bar is not None and state.global_step > self.bar.n:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        """Keep the latest loss/reward for the next line."""
        if self.bar is None or not logs:
            return
        shown = [f"{k} {v:.4g}" for k in _SHOWN if isinstance(v := logs.get(k), (int, float))
                 and not isinstance(v, bool) and math.isfinite(v)]
        if shown:
            self.bar.set_postfix_str(", ".join(shown))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Log the last line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_progress_lines(trainer: Any, enabled: bool | None, desc: str) -> bool:
    """Without a terminal, replace ``trainer``'s tqdm ``ProgressCallback`` by :class:`ProgressLinesCallback`.

    ``enabled`` is the run's progress setting (False: leave the trainer as it is). Returns whether it swapped.
    """
    if not wants_lines(enabled):
        return False
    if not any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        return False  # disable_tqdm: the trainer shows no bar, so there is nothing to replace
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressLinesCallback(desc))
    return True
