"""Shared by the GSPO tests: a tiny synthetic world (built once per session) and the tiny CPU GSPO config."""

from __future__ import annotations

from pathlib import Path

import pytest

SYNTH = {"n_concepts": 12, "n_train": 12, "n_test": 4, "context_size": 2, "max_present": 1, "image_size": 64,
         "similarity": "attributes", "seed": 0}


def tiny_gspo_config(tmp: Path, **groups):
    """A tiny CPU config (tiny model, LoRA r8, no checkpoints, 2 steps) with ``groups`` merged in."""
    from covip.training.gspo_config import GspoConfig

    base = {
        "model": {"name_or_path": "tiny", "dtype": "float32", "gradient_checkpointing": False},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "gspo": {"num_generations": 4, "per_device_train_batch_size": 4, "max_steps": 2,
                 "max_completion_length": 8, "learning_rate": 1e-2},
        "run": {"output_dir": str(tmp / "run"), "use_cpu": True, "save_steps": 0, "progress": False,
                "torch_threads": 1, "seed": 0},
    }
    for group, values in groups.items():
        base.setdefault(group, {}).update(values)
    return GspoConfig.from_dict(base)


@pytest.fixture(scope="session")
def synth_train(tmp_path_factory) -> Path:
    """train.jsonl of the tiny world of :data:`SYNTH`."""
    from covip.training.data import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("gspo-data") / "synth"
    synthesize(SynthConfig(**SYNTH), out, progress=False)
    return out / "train.jsonl"
