"""covip.sdk.progress: a tqdm bar on a terminal, plain lines at 25/50/75/100% and every interval otherwise."""

from __future__ import annotations

import logging

import pytest

from covip.sdk import progress as prog
from covip.sdk.progress import ProgressLines, format_duration, progress_bar


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def lines(caplog):
    """The progress lines logged so far (messages of covip.sdk.progress)."""
    caplog.set_level(logging.INFO, logger="covip.sdk.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "covip.sdk.progress"]


def test_lines_at_each_quarter_with_counts_time_and_rate(lines) -> None:
    clock = Clock()
    bar = ProgressLines(total=8, desc="covip data synth", unit="item", clock=clock, interval=1e9)
    for _ in range(8):
        clock.t += 2.0
        bar.update(1)
    bar.close()
    assert lines() == [
        "covip data synth: 2/8 items (25%), elapsed 4s, left ~12s, 2 s/item",
        "covip data synth: 4/8 items (50%), elapsed 8s, left ~8s, 2 s/item",
        "covip data synth: 6/8 items (75%), elapsed 12s, left ~4s, 2 s/item",
        "covip data synth: 8/8 items (100%), elapsed 16s, 2 s/item",
    ]


def test_between_quarters_at_most_one_line_per_interval(lines) -> None:
    clock = Clock()
    bar = ProgressLines(total=1000, desc="caption", unit="sample", clock=clock, interval=20.0)
    for _ in range(100):  # 100 samples, one a second: 10% done, no quarter reached
        clock.t += 1.0
        bar.update(1)
    got = lines()
    assert len(got) == 5  # at 20, 40, 60, 80, 100 s
    assert got[0] == "caption: 20/1000 samples (2%), elapsed 20s, left ~16m20s, 1 samples/s"
    assert got[-1].startswith("caption: 100/1000 samples (10%), elapsed 1m40s, left ~15m00s")


def test_close_logs_the_unreported_end_once_and_postfix_is_shown(lines) -> None:
    clock = Clock()
    bar = ProgressLines(total=10, desc="covip export gguf", unit="step", clock=clock, interval=1e9)
    bar.set_postfix_str("quantizing to q8_0")
    clock.t += 30
    bar.update(3)
    clock.t += 3
    bar.update(1)  # 40%: no new quarter, not yet logged
    bar.close()
    bar.close()
    assert lines() == ["covip export gguf: 3/10 steps (30%), elapsed 30s, left ~1m10s, 10 s/step, quantizing to q8_0",
                       "covip export gguf: 4/10 steps (40%), elapsed 33s, left ~50s, 8.25 s/step, quantizing to q8_0"]


def test_resumed_bar_counts_rate_from_new_work_only(lines) -> None:
    clock = Clock()
    bar = ProgressLines(total=40, initial=30, desc="caption", unit="sample", clock=clock, interval=1e9)
    clock.t += 10
    bar.update(5)
    assert lines() == ["caption: resuming at 30/40 samples (75%)"]
    clock.t += 10
    bar.update(5)
    assert lines()[-1] == "caption: 40/40 samples (100%), elapsed 20s, 2 s/sample"


def test_iterating_and_unknown_totals(lines) -> None:
    clock = Clock()
    out = []
    for x in ProgressLines((i for i in range(3)), total=None, desc="scan", unit="query", clock=clock, interval=0):
        clock.t += 1
        out.append(x)
    assert out == [0, 1, 2]
    assert lines()[-1] == "scan: 3 queries, elapsed 3s, 1 queries/s"


def test_disabled_is_silent_even_on_a_terminal(lines, monkeypatch, capsys) -> None:
    monkeypatch.setattr(prog, "on_terminal", lambda: True)
    bar = progress_bar(total=4, desc="x", enabled=False)
    assert isinstance(bar, ProgressLines) and not bar.emit
    for _ in range(4):
        bar.update(1)
    bar.close()
    assert list(progress_bar(range(3), desc="y", enabled=False)) == [0, 1, 2]
    assert lines() == [] and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("enabled", [None, True])
def test_terminal_gets_tqdm_and_no_terminal_gets_lines(enabled, monkeypatch) -> None:
    from tqdm.auto import tqdm

    monkeypatch.setattr(prog, "on_terminal", lambda: True)
    bar = progress_bar(total=3, desc="t", enabled=enabled, leave=False)
    assert isinstance(bar, tqdm) and not bar.disable
    bar.close()
    monkeypatch.setattr(prog, "on_terminal", lambda: False)
    assert isinstance(progress_bar(total=3, desc="t", enabled=enabled), ProgressLines)
    assert prog.wants_lines(enabled) and not prog.wants_lines(False)


def test_the_progress_logger_shows_without_configuration() -> None:
    assert logging.getLogger("covip.sdk.progress").getEffectiveLevel() <= logging.INFO


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 60, 400, 3599, 3600, 7500)] == [
        "0s", "42s", "1m00s", "6m40s", "59m59s", "1h00m", "2h05m"]


def test_fast_rates_are_plain_numbers(lines) -> None:
    clock = Clock()
    bar = ProgressLines(total=540, desc="capeval judge", unit="question", clock=clock, interval=1e9)
    clock.t += 0.16
    bar.update(540)
    assert lines() == ["capeval judge: 540/540 questions (100%), elapsed 0s, 3375 questions/s"]


def test_write_goes_between_the_lines(capsys) -> None:
    import sys

    bar = progress_bar(["a.jpg", "b.jpg"], desc="remembering", unit="photo", enabled=False)
    for name in bar:
        bar.write(f"error: skipped {name}", file=sys.stderr)
    assert capsys.readouterr().err == "error: skipped a.jpg\nerror: skipped b.jpg\n"
