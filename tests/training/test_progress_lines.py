"""Long commands without a terminal: plain progress lines on stderr (a real `covip data synth` run, a Trainer)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SYNTH = ["data", "synth", "--seed", "1", "--n-concepts", "20", "--n-train", "6", "--n-test", "6", "--image-size",
         "40", "--similarity", "attributes"]


def covip(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a fresh process, stderr a pipe (no terminal), no -v: like `covip ... 2> log`."""
    env = {**os.environ, "COVIP_CACHE": str(tmp_path / "cache"), "COVIP_HOME": str(tmp_path / "home")}
    code = "import sys; from covip.sdk.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def test_data_synth_without_a_terminal_writes_progress_lines(tmp_path: Path) -> None:
    res = covip(tmp_path, *SYNTH, "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr  # no carriage-return bar in the log
    lines = [x for x in res.stderr.splitlines() if "covip data synth:" in x]
    # 20 concept photos + 6 train + 6 test samples = 32 items; one line per quarter
    assert [re.search(r"(\d+)/32 items \((\d+)%\)", x).groups() for x in lines] == [
        ("8", "25"), ("16", "50"), ("24", "75"), ("32", "100")]
    assert all(re.search(r"elapsed \d+s", x) for x in lines)
    assert all("left ~" in x for x in lines[:3]) and "left" not in lines[3]
    assert "wrote 6 train + 6 test samples" in res.stdout  # the report stays on stdout


def test_data_synth_with_progress_off_is_silent(tmp_path: Path) -> None:
    res = covip(tmp_path, *SYNTH, "--out", str(tmp_path / "out"), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""


def test_trainer_without_a_terminal_logs_lines_not_dicts(monkeypatch, caplog, capsys, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from covip.sdk import progress
    from covip.training.trainer_progress import ProgressLinesCallback, use_progress_lines

    monkeypatch.setattr(progress, "on_terminal", lambda: False)
    caplog.set_level(logging.INFO, logger="covip.sdk.progress")

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x, y):
            return {"loss": ((self.lin(x) - y) ** 2).mean()}

    class Data(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 32

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            return {"x": torch.randn(4, generator=g), "y": torch.randn(1, generator=g)}

    def trainer(disable_tqdm: bool):
        args = transformers.TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=8, logging_steps=2,
                                              per_device_train_batch_size=4, report_to="none", use_cpu=True,
                                              save_strategy="no", disable_tqdm=disable_tqdm)
        return transformers.Trainer(model=Model(), args=args, train_dataset=Data())

    t = trainer(disable_tqdm=False)
    assert use_progress_lines(t, None, "covip train test")
    assert sum(isinstance(c, ProgressLinesCallback) for c in t.callback_handler.callbacks) == 1
    assert not any(type(c) is transformers.ProgressCallback for c in t.callback_handler.callbacks)
    t.train()
    lines = [r.getMessage() for r in caplog.records if r.name == "covip.sdk.progress"]
    assert [re.search(r"(\d+)/8 steps \((\d+)%\)", x).groups() for x in lines] == [
        ("2", "25"), ("4", "50"), ("6", "75"), ("8", "100")]
    assert all(x.startswith("covip train test: ") and re.search(r"loss \d", x) for x in lines[1:])
    assert "{'loss'" not in capsys.readouterr().out  # transformers' per-step dicts no longer go to stdout

    assert not use_progress_lines(trainer(disable_tqdm=True), None, "x")  # progress off: left as it is
    assert not use_progress_lines(trainer(disable_tqdm=False), False, "x")
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    assert not use_progress_lines(trainer(disable_tqdm=False), None, "x")  # a terminal keeps tqdm's bar
