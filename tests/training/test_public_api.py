"""The training package's curated API is pinned, and importing it does not pull in torch."""

from __future__ import annotations

import subprocess
import sys

import covip.training


def test_training_api_is_pinned() -> None:
    assert set(covip.training.__all__) == {
        "MCQA", "Sample", "SynthConfig", "synthesize", "read_jsonl", "write_jsonl", "Judge", "JudgeItem",
        "make_judge", "CoViPReward", "caption_sample_reward", "recognition_reward", "is_degenerate",
    }
    for name in covip.training.__all__:
        assert getattr(covip.training, name) is not None


def test_importing_training_does_not_import_torch() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, covip.training; print('torch' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
