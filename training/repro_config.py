"""The miniature reproduction's recipe (``covip repro mini``): typed dataclasses loaded from YAML
(``training/configs/repro/``).

A recipe has three groups, each a dataclass below (every field carries a ``help`` text)::

    stages:   which training recipe (SFT group + GSPO groups), seeds, and overrides of either stage
    eval:     how the three models (random init, SFT, SFT+GSPO) are measured on held-out concepts
    run:      where runs and results go, threads

plus ``quick``: dotted overrides that ``--quick`` applies (the same pipeline in minutes, for CI).
The stages themselves are the ``covip train sft`` / ``covip train gspo`` recipes, so what the reproduction
measures is what a user trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from covip.training.config_io import (
    GroupedConfigMixin,
    config_from_dict,
    config_to_dict,
    read_yaml,
    resolve_recipe,
)
from covip.training.gspo_config import _check

__all__ = ["REPRO_CONFIG_DIR", "DOWNSTREAM_TASKS", "ReproStagesSection", "ReproEvalSection", "ReproRunSection",
           "ReproConfig", "bundled_repro_configs", "load_repro_config"]

REPRO_CONFIG_DIR = Path(__file__).resolve().parent / "configs" / "repro"
DOWNSTREAM_TASKS = ("lsd", "lar", "itr")
MAX_SEEDS = 16


def _h(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class ReproStagesSection:
    """The two training stages, run once per seed on one shared synthetic world."""

    recipe: str = field(default="mini-cpu", metadata=_h(
        "Training recipe: a bundled name (`covip train configs`) or a YAML file with an 'sft:' group and the "
        "GSPO groups at the top level."))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata=_h(
        "Training seeds (one SFT and one GSPO run each); the world and the evaluation samples stay fixed."))
    warmup_seed: int = field(default=0, metadata=_h(
        "Seed of the vision warm-up that every seed's SFT starts from (trained once per work folder). Fixed, "
        "not the first of `seeds`, so a seed run on its own (--seeds 1) starts from the tower it would start "
        "from in --seeds 0,1,2."))
    sft_quick: bool = field(default=False, metadata=_h("Apply the recipe's own SFT 'quick' overrides first."))
    sft_overrides: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "Dotted SFT config overrides (e.g. trainer.max_time_s: 600); the world, output folder and seed are "
        "set by the reproduction."))
    gspo_overrides: dict[str, Any] = field(default_factory=dict, metadata=_h(
        "Dotted GSPO config overrides (e.g. gspo.max_steps: 40); the model, data, output folder and seed are "
        "set by the reproduction."))
    gspo: bool = field(default=True, metadata=_h("Run Stage 2 (GSPO from the SFT checkpoint)."))


@dataclass
class ReproEvalSection:
    """The held-out evaluation of the random initialization, the SFT model and the SFT+GSPO model."""

    capeval_samples: int | None = field(default=60, metadata=_h(
        "Held-out caption samples for CapEval-QAs (Acc+ / Acc-, lexical judge); null = all of the test split."))
    recognition_samples: int | None = field(default=120, metadata=_h(
        "Held-out recognition samples for set-F1 (with the permutation null); null = all."))
    downstream_tasks: list[str] = field(default_factory=lambda: list(DOWNSTREAM_TASKS), metadata=_h(
        "Downstream tasks answered with and without CAG by the final model (needs data.synth.n_downstream)."))
    downstream_samples: int | None = field(default=30, metadata=_h("Samples per downstream task; null = all."))
    downstream_answer_tokens: int | None = field(default=64, metadata=_h(
        "Answer budget of the downstream tasks, tokens (their answers are a letter, yes/no or a short phrase); "
        "null = the paper protocol's 1,024, which a mini model that never learned to stop free-form answers "
        "spends in full (about a minute per answer on 2 cores)."))
    bootstrap: int = field(default=2000, metadata=_h(
        "Bootstrap resamples of the 95% intervals (seeds, then held-out samples within each seed)."))
    embedder: str | None = field(default="mini-cpu", metadata=_h(
        "Embedder recipe whose held-out retrieval recall@1/@5 is reported (built once and cached, as "
        "`covip train embedder` does); null skips it."))
    embedder_quick: bool = field(default=False, metadata=_h("Build the embedder with its recipe's 'quick' overrides."))
    max_new_tokens: int = field(default=160, metadata=_h("Caption budget of CapEval-QAs, tokens."))
    laptop_path: bool = field(default=True, metadata=_h(
        "Export the first seed's final model to GGUF (f32, q8_0) and ONNX with their parity checks, and answer "
        "held-out recognition with llama.cpp next to transformers."))
    laptop_samples: int = field(default=20, metadata=_h("Held-out recognition samples llama.cpp answers."))


@dataclass
class ReproRunSection:
    """Where things go."""

    work_dir: str = field(default="runs/repro-mini", metadata=_h(
        "Run folder: world/, seed-N/sft, seed-N/gspo, seed-N/eval/<stage>/."))
    results_dir: str | None = field(default=None, metadata=_h(
        "Folder of the result JSON and PNG; null = benchmarks/results of the covip checkout when there is "
        "one, else <work_dir>/results (a quick run: their quick/ subfolder)."))
    result_name: str = field(default="miniature", metadata=_h("File stem of the result (<name>.json, <name>.png)."))
    cache_dir: str | None = field(default=None, metadata=_h(
        "Cache folder of the mini embedder this run builds and distils the vision tower from; null = covip's "
        "cache (where `covip demo --model mini` finds it; a quick run's embedder replaces a full one there)."))
    torch_threads: int | None = field(default=None, metadata=_h("torch CPU threads; null keeps torch's default."))
    use_cpu: bool = field(default=True, metadata=_h("Train and evaluate on the CPU even when a GPU is present."))
    install: bool = field(default=True, metadata=_h(
        "A full run installs the first seed's final model into cache_dir (else covip's cache) for "
        "`covip demo --model mini`; a quick run never does."))


_SECTIONS: dict[str, type] = {"stages": ReproStagesSection, "eval": ReproEvalSection, "run": ReproRunSection}


@dataclass
class ReproConfig(GroupedConfigMixin):
    """A whole reproduction recipe (see the module doc)."""

    override_what: ClassVar[str] = "repro config key"
    neutral_when_off: ClassVar[Mapping[str, Any]] = {"stages.warmup_seed": 0}  # seed records kept their key

    stages: ReproStagesSection = field(default_factory=ReproStagesSection, metadata=_h("Training stages."))
    eval: ReproEvalSection = field(default_factory=ReproEvalSection, metadata=_h("Held-out evaluation."))
    run: ReproRunSection = field(default_factory=ReproRunSection, metadata=_h("Folders and threads."))
    quick: dict[str, Any] = field(default_factory=dict, metadata=_h("Dotted overrides applied by --quick."))
    mode: str = field(default="full", metadata=_h("'full' or 'quick' (set by --quick)."))
    name: str = field(default="custom", metadata=_h("A short name of this recipe."))
    description: str = field(default="", metadata=_h("What this recipe is for."))
    source: str | None = field(default=None, metadata=_h("The file it was loaded from (set by the loader)."))

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Any, *, source: str | None = None) -> ReproConfig:
        """Build from a nested mapping; unknown keys and bad values raise InputError naming the dotted key."""
        return config_from_dict(cls, _SECTIONS, data, what="a repro recipe", unknown="repro config key",
                                source=source)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict that :meth:`from_dict` turns back into an equal config."""
        out = config_to_dict(self)
        out.pop("source", None)
        return out

    def quick_variant(self) -> ReproConfig:
        """This recipe with its ``quick`` overrides applied (the pipeline in minutes)."""
        out = self.with_quick("the repro recipe")
        out.mode = "quick"
        return out

    def validate(self) -> None:
        """Raise InputError naming the dotted key of the first bad value."""
        s, e, r = self.stages, self.eval, self.run
        _check(bool(s.recipe.strip()), "stages.recipe", "must name a training recipe")
        _check(1 <= len(s.seeds) <= MAX_SEEDS, "stages.seeds", f"must hold 1 to {MAX_SEEDS} seeds, got {len(s.seeds)}")
        _check(len(set(s.seeds)) == len(s.seeds), "stages.seeds", f"must not repeat a seed, got {s.seeds}")
        _check(all(0 <= x < 2**31 for x in s.seeds), "stages.seeds", f"must be in 0..2**31-1, got {s.seeds}")
        _check(0 <= s.warmup_seed < 2**31, "stages.warmup_seed", f"must be in 0..2**31-1, got {s.warmup_seed}")
        for key, value in (("eval.capeval_samples", e.capeval_samples),
                           ("eval.recognition_samples", e.recognition_samples),
                           ("eval.downstream_samples", e.downstream_samples)):
            _check(value is None or 1 <= value <= 100_000, key, f"must be null or in 1..100000, got {value}")
        bad = [t for t in e.downstream_tasks if t not in DOWNSTREAM_TASKS]
        _check(not bad, "eval.downstream_tasks", f"must be among {list(DOWNSTREAM_TASKS)}, got {bad}")
        _check(100 <= e.bootstrap <= 100_000, "eval.bootstrap", f"must be in 100..100000, got {e.bootstrap}")
        _check(1 <= e.laptop_samples <= 10_000, "eval.laptop_samples", f"must be in 1..10000, got {e.laptop_samples}")
        _check(e.downstream_answer_tokens is None or 1 <= e.downstream_answer_tokens <= 4096,
               "eval.downstream_answer_tokens", f"must be null or in 1..4096, got {e.downstream_answer_tokens}")
        _check(1 <= e.max_new_tokens <= 4096, "eval.max_new_tokens", f"must be in 1..4096, got {e.max_new_tokens}")
        _check(bool(r.work_dir.strip()), "run.work_dir", "must be a folder path")
        _check(bool(r.result_name) and r.result_name.replace("-", "").replace("_", "").isalnum(), "run.result_name",
               f"must be a plain file stem (letters, digits, - and _), got {r.result_name!r}")
        _check(r.torch_threads is None or 1 <= r.torch_threads <= 1024, "run.torch_threads",
               "must be null or in 1..1024")
        _check(self.mode in ("full", "quick"), "mode", f"must be 'full' or 'quick', got {self.mode!r}")
        _check(isinstance(self.quick, dict), "quick", "must be a mapping of dotted overrides")


def bundled_repro_configs() -> dict[str, Path]:
    """The reproduction recipes shipped with covip: name -> file."""
    return {p.stem: p for p in sorted(REPRO_CONFIG_DIR.glob("*.yaml"))}


def load_repro_config(name_or_path: str | Path = "mini",
                      overrides: dict[str, Any] | list[str] | tuple[str, ...] | None = None, *,
                      quick: bool = False) -> ReproConfig:
    """Load a bundled recipe by name (``mini``) or a YAML file, then ``quick`` and dotted ``overrides``."""
    path = resolve_recipe(name_or_path, bundled_repro_configs(), "repro recipe")
    config = ReproConfig.from_dict(read_yaml(path, "the repro recipe"), source=str(path))
    if quick:
        config = config.quick_variant()
    return config.with_overrides(overrides) if overrides else config
