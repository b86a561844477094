"""Progress of long loops: a tqdm bar on a terminal, plain progress lines when stderr is not one.

Every long loop in covip (embedding photos, captioning and judging in ``covip eval``, ``covip data synth``,
exports, training) asks :func:`progress_bar` for its bar instead of calling tqdm. On a terminal (or in a
Jupyter notebook) that *is* a tqdm bar on stderr. Without one (``covip ... 2> log``, CI, nohup, a pipe) a
carriage-return bar is unreadable, and tqdm's usual ``disable=None`` prints nothing at all for the whole
run, so the bar becomes plain lines instead: one at 25, 50, 75 and 100%, and between them at most one every
:data:`LINE_INTERVAL_S` seconds, each saying what, done/total, percent, elapsed time, time left and rate::

    covip data synth: 240/480 items (50%), elapsed 12s, left ~12s, 20.0 items/s

The lines are log records at INFO on the ``covip.sdk.progress`` logger, not writes to ``sys.stderr``:
the SDK also runs inside apps and servers (``covip serve``, an app's bulk import), where a library must not
write to the process's stderr behind the app's back; a log record goes wherever the app sends its logs and
can be silenced like any other (``logging.getLogger("covip.sdk.progress").setLevel(logging.WARNING)``).
This logger's level is INFO unless someone set it, so the ``covip`` CLI, which sends log records to stderr,
shows the lines without ``-v``; a script of your own shows them once logging is configured
(``logging.basicConfig()``).

``enabled``: ``False`` shows nothing; ``None`` (the usual "auto") and ``True`` show the bar or the lines.
Call sites keep their own meaning of ``progress=None`` (e.g. embedding shows progress only past 256 photos)
and pass the result here. A ``tqdm(items, desc=..., unit=..., disable=not show)`` call becomes
``progress_bar(items, desc=..., unit=..., enabled=show)``; ``bar.write(...)`` works on both kinds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

__all__ = ["progress_bar", "ProgressBar", "ProgressLines", "LINE_INTERVAL_S", "on_terminal", "wants_lines",
           "format_duration"]

log = logging.getLogger(__name__)
if log.level == logging.NOTSET:  # progress is shown by default, also when the CLI runs without -v
    log.setLevel(logging.INFO)

LINE_INTERVAL_S = 20.0
"""Without a terminal, at most one progress line per this many seconds (besides the 25/50/75/100% lines)."""


class ProgressBar(Protocol):
    """What a call site may use of a bar: tqdm's own interface, or :class:`ProgressLines`' subset of it."""

    n: float
    total: float | None

    def update(self, n: float = 1) -> Any:
        """Count ``n`` more units done."""

    def close(self) -> None:
        """Finish the bar (the last line, or the bar's final state)."""

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Show what the loop is doing now (e.g. ``quantizing to q8_0``)."""

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Rename the bar."""

    def write(self, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        """Print a message without breaking the bar (``tqdm.write``)."""

    def __iter__(self) -> Iterator[Any]: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> Any: ...


def on_terminal() -> bool:
    """Whether progress can be drawn as a bar: stderr is a terminal, or this is a Jupyter kernel."""
    stream = sys.stderr
    try:
        if stream is not None and stream.isatty():
            return True
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        pass
    return _in_notebook()


def _in_notebook() -> bool:
    """Whether we run in a Jupyter kernel (tqdm.auto draws its widget there; its stderr is no terminal)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
    except Exception:  # noqa: BLE001 - an odd IPython must not break progress
        return False


def wants_lines(enabled: bool | None) -> bool:
    """Whether progress for ``enabled`` is shown as plain lines (shown, and no terminal to draw a bar on)."""
    return enabled is not False and not on_terminal()


def progress_bar(iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str = "",
                 unit: str = "item", enabled: bool | None = None, leave: bool = True, initial: float = 0,
                 interval: float | None = None) -> ProgressBar:
    """A progress bar for a long loop: tqdm on a terminal, plain log lines otherwise, nothing when disabled.

    Use it like tqdm: ``for x in progress_bar(items, desc=...)``, or ``bar = progress_bar(total=n, ...)`` with
    ``bar.update(k)`` and ``bar.close()`` (or ``with``). ``initial`` is work already done (a resumed run);
    ``interval`` overrides :data:`LINE_INTERVAL_S`; ``leave`` applies to the terminal bar.
    """
    if total is None and iterable is not None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if enabled is not False and on_terminal():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, disable=False)
    return ProgressLines(iterable, total=total, desc=desc, unit=unit, initial=initial, emit=enabled is not False,
                         interval=LINE_INTERVAL_S if interval is None else interval)


class ProgressLines:
    """A tqdm look-alike that logs plain progress lines (see the module doc), or nothing with ``emit=False``."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None, desc: str = "",
                 unit: str = "item", initial: float = 0, emit: bool = True, interval: float = LINE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.iterable = iterable
        self.total = total if total is None or total > 0 else None
        self.desc, self.unit, self.emit, self.interval = desc, unit, emit, interval
        self.n: float = initial
        self._initial = initial
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_n = initial
        self._quarter = self._quarter_of(initial)
        self._postfix = ""
        self._closed = False
        self._lock = threading.Lock()
        if emit and initial and self.total:
            self._log(f"resuming at {self._count()}")

    def _quarter_of(self, n: float) -> int:
        return min(4, int(4 * n / self.total)) if self.total else 0

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; log a line at a new quarter or when :attr:`interval` has passed."""
        with self._lock:
            self.n += n
            if not self.emit or self._closed:
                return
            now = self._clock()
            quarter = self._quarter_of(self.n)
            if quarter > self._quarter or now - self._last_time >= self.interval:
                self._quarter = max(quarter, self._quarter)
                self._line(now)

    def close(self) -> None:
        """Log the final state when it has not been logged yet."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.emit and self.n != self._last_n:
                self._line(self._clock())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Add ``s`` (what the loop does now) to the next line."""
        self._postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Rename the bar."""
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw (tqdm compatibility)."""

    def write(self, s: str, file: Any = None, end: str = "\n", nolock: bool = False) -> None:
        """What ``tqdm.write`` does: put a message on ``file`` (stdout by default), between the lines."""
        stream = file if file is not None else sys.stdout
        stream.write(f"{s}{end}")

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar was made without an iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> ProgressLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self) -> str:
        units = _plural(self.unit, self.total if self.total else self.n)
        if not self.total:
            return f"{_num(self.n)} {units}"
        pct = int(100 * self.n / self.total) if self.n < self.total else 100
        return f"{_num(self.n)}/{_num(self.total)} {units} ({pct}%)"

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        done = self.n - self._initial
        parts = [self._count(), f"elapsed {format_duration(elapsed)}"]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            if self.total and self.n < self.total:
                parts.append(f"left ~{format_duration((self.total - self.n) / rate)}")
            parts.append(f"{_rate(rate)} {_plural(self.unit, 2)}/s" if rate >= 1 else f"{_rate(1 / rate)} s/{self.unit}")
        if self._postfix:
            parts.append(self._postfix)
        self._last_time, self._last_n = now, self.n
        self._log(", ".join(parts))

    def _log(self, text: str) -> None:
        log.info("%s: %s", self.desc or "progress", text)


def format_duration(seconds: float) -> str:
    """``42s``, ``6m40s``, ``2h05m``: a duration as a person reads it in a log."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(x: float) -> str:
    """``3.94``, ``20.5``, ``3380``: three significant digits, never in exponent form."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _plural(unit: str, count: float) -> str:
    """``item`` -> ``items`` for a count other than 1; symbols (``B``, ``it``) stay as they are."""
    if count == 1 or len(unit) < 3 or not unit.isalpha() or not unit.islower() or unit.endswith("s"):
        return unit
    if unit.endswith("y") and unit[-2] not in "aeiou":
        return unit[:-1] + "ies"
    return unit + "s"
