"""Shared by the training tests: a tiny synthetic world and the tiny CPU GSPO config (the GSPO tests), and one
quick build of the mini embedder (the embedder tests and the quick reproduction), each built once per session."""

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


@pytest.fixture(scope="session")
def quick_embedder(tmp_path_factory):
    """(cache folder, config, build): one quick build of the bundled ``mini-cpu`` embedder recipe (what
    ``covip train embedder --quick`` does, about a minute) in a private cache, never the user's. The quick
    reproduction is pointed at the same cache and reuses it, as a user's second run would."""
    from covip.training.embedder_config import load_embedder_config
    from covip.training.embedder_train import build_mini_embedder

    cache = tmp_path_factory.mktemp("covip-cache")
    config = load_embedder_config("mini-cpu", [f"run.cache_dir={cache}"], quick=True)
    return cache, config, build_mini_embedder(config, progress=False)
