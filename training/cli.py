"""``covip train``: GSPO post-training from a config (``gspo``), and the bundled configs (``configs``).

:func:`register` adds the ``train`` group to the ``covip`` CLI (entry point group ``covip.cli``). Importing
this module imports click only; torch, trl and peft load when a run starts.

Multi-GPU runs go through accelerate; this module runs the whole ``covip`` CLI when executed with ``-m``,
so both of these work (one process per GPU, each runs the same command)::

    accelerate launch --config_file training/accelerate/zero2.yaml -m covip.training.cli \\
        train gspo --config qwen3vl-8b-paper
    accelerate launch --config_file training/accelerate/zero2.yaml $(which covip) train gspo --config ...
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

__all__ = ["train", "register", "main"]


@click.group("train")
def train() -> None:
    """Post-train a personalized VLM with GSPO on CoViP's verifiable rewards.

    \b
    Example:
      covip train configs
      covip train gspo --config tiny-cpu --output runs/tiny --max-steps 2
    """


@train.command("gspo")
@click.option("--config", "config_name", required=True, metavar="NAME|FILE",
              help="A bundled config name (see `covip train configs`) or a YAML file path.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (overrides run.output_dir).")
@click.option("--resume", is_flag=True, help="Resume from the newest checkpoint-N in the run folder.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set gspo.learning_rate=1e-5 --set data.train=data/train.jsonl "
                   "(repeatable; values are read as YAML).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit without training.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def gspo(config_name: str, output_dir: Path | None, resume: bool, max_steps: int | None, overrides: tuple[str, ...],
         print_config: bool, as_json: bool) -> None:
    """Train with GSPO (trl GRPOTrainer, sequence-level importance ratio) as a config file says.

    Writes under the run folder: checkpoint-N/ (resumable), adapter/ (LoRA), merged/ (base + LoRA merged,
    with the processor: the input of the export package), logs/metrics.jsonl, logs/samples.jsonl,
    logs/tensorboard/, config.yaml and result.json.

    \b
    Example:
      covip train gspo --config tiny-cpu --output runs/tiny --max-steps 2
      covip train gspo --config qwen3vl-2b --set data.train=data/synth/train.jsonl
      accelerate launch --config_file training/accelerate/zero2.yaml -m covip.training.cli \\
          train gspo --config qwen3vl-8b-paper --set data.train=/data/covip/train.jsonl
    """
    from covip.training.gspo_config import load_config, parse_overrides

    extra = parse_overrides(list(overrides))
    if output_dir is not None:
        extra["run.output_dir"] = str(output_dir)
    if resume:
        extra["run.resume_from_checkpoint"] = True
    if max_steps is not None:
        extra["gspo.max_steps"] = max_steps
    config = load_config(config_name, extra)
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return
    from covip.training.gspo import train_gspo

    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log dicts; stdout is for the result
        result = train_gspo(config)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        return
    click.echo(f"trained {result.global_step} steps on {result.n_samples} samples in {result.runtime_s:.1f}s")
    if result.reward_history:
        click.echo(f"  reward: first step {result.reward_history[0]:.4f}, last step {result.reward_history[-1]:.4f}")
    for label, path in (("adapter", result.adapter_dir), ("merged", result.merged_dir),
                        ("metrics", result.metrics_path), ("samples", result.samples_path),
                        ("tensorboard", result.tensorboard_dir)):
        if path is not None:
            click.echo(f"  {label}: {path}")


@train.command("configs")
@click.option("--json", "as_json", is_flag=True, help="Print name -> path as JSON.")
def configs(as_json: bool) -> None:
    """List the bundled GSPO configs (use a name with `covip train gspo --config NAME`).

    \b
    Example:
      covip train configs
    """
    from covip.training.gspo_config import bundled_configs, load_config

    found = bundled_configs()
    if as_json:
        click.echo(json.dumps({k: str(v) for k, v in found.items()}, indent=1))
        return
    for name, path in found.items():
        click.echo(f"{name:20s} {load_config(path).description}")


def register(group: click.Group) -> None:
    """Add the ``train`` command group to ``group`` (the ``covip`` CLI)."""
    group.add_command(train)


def main(argv: list[str] | None = None) -> int:
    """The whole ``covip`` CLI (with ``train`` registered even without installed entry points)."""
    from covip.sdk.cli.main import cli
    from covip.sdk.cli.main import main as covip_main

    if "train" not in cli.commands:
        register(cli)
    return covip_main(argv)


if __name__ == "__main__":
    sys.exit(main())
