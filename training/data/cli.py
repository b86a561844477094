"""``covip data``: build and check training data (``synth``, ``check``).

:func:`register` adds the ``data`` group to a click group (the ``covip`` CLI). Importing this module imports
click only; the generator, loaders, Pillow and torch load when a command runs.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import click

__all__ = ["data", "register"]

_FORMATS = ("auto", "samples", "training", "capeval", "testset")


@click.group("data")
def data() -> None:
    """Build and check CoViP training and evaluation data.

    \b
    Example:
      covip data synth --out data/synth --seed 0
      covip data check data/synth/train.jsonl
    """


def _mix(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        parts = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers, got {value!r}")
    return parts


@data.command("synth")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created; must be empty unless --force replaces an earlier synthetic set).")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives the same files. [default: 0]")
@click.option("--n-concepts", type=int, default=None, help="Concepts in the world (train + test). [default: 40]")
@click.option("--n-train", type=int, default=None, help="Training samples (all types). [default: 200]")
@click.option("--n-test", type=int, default=None, help="Test samples (all types). [default: 60]")
@click.option("--test-fraction", type=float, default=None, help="Share of concepts held out for test. [default: 0.3]")
@click.option("--max-present", type=int, default=None, help="Most concepts in one query image. [default: 4]")
@click.option("--context-size", type=int, default=None, help="Context concepts per sample. [default: 5]")
@click.option("--image-size", type=int, default=None, help="Image side in pixels. [default: 128]")
@click.option("--type-mix", callback=_mix, default=None,
              help="Shares of caption,recognition,verification samples, e.g. 0.6,0.25,0.15.")
@click.option("--similarity", type=click.Choice(["clip", "attributes"]), default=None,
              help="How distractors are chosen: CLIP embedding similarity or attribute overlap. [default: clip]")
@click.option("--embedder", default=None, help="Embedder spec for --similarity clip. [default: tiny]")
@click.option("--n-downstream", type=int, default=None,
              help="Also write downstream_{lsd,lar,itr}.jsonl with N samples each (covip eval downstream). "
                   "[default: 0]")
@click.option("--force", is_flag=True, help="Replace an earlier synthetic dataset in --out.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: on; a bar on a terminal, plain lines otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def synth(out_dir: Path, force: bool, progress: bool | None, as_json: bool, **options: Any) -> None:
    """Render an offline synthetic dataset of personal concepts (images, dialogues, MCQAs, 3 sample types).

    Writes train.jsonl / test.jsonl (covip samples; train and test share no concept), the test caption
    samples in the authors' CapEval and test-set layouts, the train samples in their training-JSON layout,
    the images, concepts.json and manifest.json.

    \b
    Example:
      covip data synth --out data/synth --seed 0 --n-concepts 60 --n-train 500 --n-test 120
    """
    from covip.training.data.synth import SynthConfig, synthesize

    config = SynthConfig(**{k: v for k, v in options.items() if v is not None})
    report = synthesize(config, out_dir, overwrite=force, progress=progress)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1, sort_keys=True))
        return
    click.echo(f"wrote {config.n_train} train + {config.n_test} test samples, {report.n_images} images "
               f"to {report.out_dir} in {report.elapsed_s:.1f}s")
    for split, counts in report.counts.items():
        click.echo(f"  {split}: {report.concepts[split]} concepts; "
                   + ", ".join(f"{n} {t}" for t, n in counts.items()))
    click.echo(f"  distractor similarity ({report.similarity}): {report.mean_distractor_similarity:.3f} "
               f"vs {report.mean_random_similarity:.3f} for a random choice")


def _classify(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "sample_type" in record:
        return "samples"
    if "accu_reward_method" in record:
        return "training"
    if "imgs" in record:
        return "testset"
    return None


def _detect(path: Path) -> str:
    """Guess a data file's layout from its first record."""
    text = path.read_text(encoding="utf-8").lstrip()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, list):
        return (_classify(whole[0]) if whole else None) or "training"
    if isinstance(whole, dict):
        return _classify(whole) or "capeval"
    try:
        first = json.loads(text.splitlines()[0]) if text else None
    except json.JSONDecodeError:
        first = None
    return _classify(first) or "samples"


@data.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(_FORMATS), default="auto", show_default=True,
              help="The file's layout: covip samples JSONL, the authors' training JSON, CapEval file or test-set "
                   "JSONL.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder image paths are relative to (default: the file's folder).")
@click.option("--capeval", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CapEval file to merge into a test-set JSONL.")
@click.option("--no-images", is_flag=True, help="Do not check that image files exist.")
def check(path: Path, fmt: str, image_root: Path | None, capeval: Path | None, no_images: bool) -> None:
    """Validate a data file: every sample's fields and (unless --no-images) its image files.

    \b
    Example:
      covip data check CoViP_PIC_training.json --image-root /data/covip
    """
    from covip.training.data import loaders, schema

    fmt = _detect(path) if fmt == "auto" else fmt
    if fmt == "capeval":
        entries = loaders.load_capeval(path)
        by_n = Counter(len(e.gts) for e in entries.values())
        click.echo(f"{path}: {len(entries)} CapEval samples; present concepts: "
                   + ", ".join(f"{k}: {by_n[k]}" for k in sorted(by_n)))
        return
    if fmt == "samples":
        samples = schema.read_jsonl(path, image_root=image_root or path.parent, check_images=not no_images)
    elif fmt == "training":
        samples = loaders.load_training_json(path, image_root=image_root, check_images=not no_images)
    else:
        samples = loaders.load_testset_jsonl(path, image_root=image_root, capeval=capeval,
                                             check_images=not no_images)
    types = Counter(s.sample_type for s in samples)
    click.echo(f"{path}: {len(samples)} valid samples ({fmt}): "
               + ", ".join(f"{types[t]} {t}" for t in schema.SAMPLE_TYPES if types[t]))


def register(group: click.Group) -> None:
    """Add the ``data`` command group to ``group`` (the ``covip`` CLI)."""
    group.add_command(data)
