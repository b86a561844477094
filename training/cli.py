"""``covip train``: supervised warm start (``sft``), GSPO post-training (``gspo``), the bundled configs (``configs``).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from covip.training.embedder_cli import embedder_cmd  # click only; torch loads when a build starts

__all__ = ["train", "register", "main"]


@click.group("train")
def train() -> None:
    """Train a personalized VLM: SFT warm start, then GSPO on CoViP's verifiable rewards.

    \b
    Example:
      covip train configs
      covip train sft --config mini-cpu --quick
      covip train gspo --config tiny-cpu --output runs/tiny --max-steps 2
    """


@train.command("gspo")
@click.option("--config", "config_name", required=True, metavar="NAME|FILE",
              help="A bundled config name (see `covip train configs`) or a YAML file path.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (overrides run.output_dir).")
@click.option("--resume", is_flag=True, help="Resume from the newest checkpoint-N in the run folder.")
@click.option("--force", is_flag=True, help="Replace an earlier run in the run folder (default: refuse).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set gspo.learning_rate=1e-5 --set data.train=data/train.jsonl "
                   "(repeatable; values are read as YAML).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit without training.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def gspo(config_name: str, output_dir: Path | None, resume: bool, force: bool, max_steps: int | None,
         overrides: tuple[str, ...], print_config: bool, as_json: bool) -> None:
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
    from covip.training.gspo_config import load_config

    extra = _run_overrides(overrides, output_dir, resume, "gspo.max_steps", max_steps)
    config = load_config(config_name, extra)
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return
    _check_fresh(Path(config.run.output_dir), resume, force)
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
    note = all_penalized_note(result.samples_path, config.gspo.max_completion_length)
    if note:
        click.echo(f"  note: {note}")
    for label, path in (("adapter", result.adapter_dir), ("merged", result.merged_dir),
                        ("metrics", result.metrics_path), ("samples", result.samples_path),
                        ("tensorboard", result.tensorboard_dir)):
        if path is not None:
            click.echo(f"  {label}: {path}")


@train.command("sft")
@click.option("--config", "config_name", required=True, metavar="NAME|FILE",
              help="A bundled config name (e.g. mini-cpu) or a YAML file path (an SFT config or a recipe with an "
                   "'sft:' group).")
@click.option("--quick", is_flag=True, help="Apply the config's 'quick' overrides: the same recipe in minutes.")
@click.option("--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (overrides run.output_dir).")
@click.option("--resume", is_flag=True, help="Resume from the newest checkpoint-N in the run folder.")
@click.option("--force", is_flag=True, help="Replace an earlier run in the run folder (default: refuse).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps.")
@click.option("--max-time", "max_time_s", type=click.FloatRange(min=1), default=None,
              help="Stop training after this many seconds (overrides trainer.max_time_s).")
@click.option("--no-eval", is_flag=True, help="Skip the held-out evaluation (eval.enabled=false).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set trainer.learning_rate=5e-4 --set data.synth.n_train=800 "
                   "(repeatable; values are read as YAML).")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit without training.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's result as JSON.")
def sft(config_name: str, quick: bool, output_dir: Path | None, resume: bool, force: bool, max_steps: int | None,
        max_time_s: float | None, no_eval: bool, overrides: tuple[str, ...], print_config: bool, as_json: bool) -> None:
    """Supervised warm start (trl SFTTrainer) on the synthetic world's ground truth, training concepts only.

    Writes under the run folder: model/ (the SFT checkpoint with its processor: what GSPO and the export
    package take), logs/metrics.jsonl, config.yaml, eval.json (held-out recognition F1 of the random
    initialization and of the trained model, with chance levels) and result.json. A config's `then:` phases
    (mini-cpu: recognition, then captions) continue from that model, each into <run folder>/<phase name>;
    --max-steps, --max-time-s and --set reach the first phase only (--set then=[] skips the others).

    \b
    Example:
      covip train sft --config mini-cpu
      covip train sft --config mini-cpu --quick --output runs/mini-quick
    """
    from covip.training.sft_config import load_sft_config

    extra = _run_overrides(overrides, output_dir, resume, "trainer.max_steps", max_steps)
    if max_time_s is not None:
        extra["trainer.max_time_s"] = max_time_s
    if no_eval:
        extra["eval.enabled"] = False
    config = load_sft_config(config_name, extra, quick=quick)
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return
    _check_fresh(Path(config.run.output_dir), resume, force)
    from covip.training.sft import train_sft

    with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its log dicts; stdout is for the result
        result = train_sft(config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1, sort_keys=True))
        return
    for phase in result.phases or [result.to_dict()]:
        _echo_sft(phase, named=bool(result.phases))


def _echo_sft(r: dict[str, Any], *, named: bool) -> None:
    """One SFT phase's summary lines (steps, held-out recognition F1 and CapEval, the model)."""
    head = f"{r['name']}: " if named else ""
    click.echo(f"{head}trained {r['global_step']} steps on {r['n_samples']} samples in {r['train_s']:.1f}s "
               f"(run {r['runtime_s']:.1f}s{', stopped by the time budget' if r['stopped_by_time'] else ''})")
    evaluation = r.get("evaluation") or {}
    after, init = evaluation.get("sft") or {}, evaluation.get("random_init") or {}
    rec = after.get("recognition")
    if rec:
        start = f"before {init['recognition']['f1']:.3f} -> " if init.get("recognition") else ""
        click.echo(f"  held-out recognition F1: {start}after {rec['f1']:.3f} (best constant answer "
                   f"{rec['constant']['f1']:.3f}, permutation p={rec['permutation']['p_value']:.4f})")
    cap = after.get("caption")
    if cap:
        click.echo(f"  held-out CapEval (lexical judge): Acc+ {cap['acc_pos']:.3f}, Acc- {cap['acc_neg']:.3f} "
                   f"({cap['n']} captions)")
    click.echo(f"  model: {r['model_dir']}")
    if r.get("eval_path"):
        click.echo(f"  eval: {r['eval_path']}")


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


@train.command("install-mini")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The trained checkpoint: an SFT phase's model/ folder or a GSPO run's merged/ folder.")
@click.option("--world", "world_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The synthetic world it was trained on (data.world of the SFT config); the demo set is drawn "
                   "from its held-out concepts.")
@click.option("--prompt-pack", "pack_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The prompt pack it was trained with (default: the mini-cpu recipe's).")
@click.option("--demo-concepts", "n_demo", type=int, default=12, show_default=True,
              help="How many held-out concepts the demo shows.")
@click.option("--json", "as_json", is_flag=True, help="Print the install record as JSON.")
def install_mini_cmd(model_dir: Path, world_dir: Path, pack_file: Path | None, n_demo: int, as_json: bool) -> None:
    """Install a trained mini model for `covip demo --model mini`.

    `covip repro mini` installs its seed-0 model itself; use this for a model you trained by hand
    (`covip train sft --config mini-cpu`, then `covip train gspo --config mini-cpu`). Replaces an earlier
    install; the demo set is drawn from the world's held-out concepts (never trained on).

    \b
    Example:
      covip train install-mini --model runs/mini-cpu/gspo/merged --world runs/mini-cpu/world
      covip demo --model mini
    """
    from covip.training.config_io import pack_path
    from covip.training.mini_install import install_mini
    from covip.training.sft_config import load_sft_config

    if pack_file is None:
        recipe = load_sft_config("mini-cpu")
        pack_file = pack_path(recipe.data.prompt_pack or "", recipe.source)
    installed = install_mini(model_dir, world_dir, pack_file, n_demo=n_demo, source={"command": "install-mini"})
    if as_json:
        click.echo(json.dumps(installed.record, indent=1, sort_keys=True))
        return
    click.echo(f"mini model installed in {installed.folder} ({len(installed.concepts)} held-out demo concepts)")
    click.echo("  try: covip demo --model mini")


train.add_command(embedder_cmd)  # `covip train embedder`: the mini image embedder


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


def all_penalized_note(samples_path: Path | None, max_tokens: int) -> str | None:
    """Why a run learned nothing when every completion got the degeneration penalty (reward -1, equal rewards
    in every group, so zero advantage and zero gradient); None when that is not the case."""
    if samples_path is None or not Path(samples_path).is_file():
        return None
    rows = [json.loads(line) for line in Path(samples_path).read_text().splitlines() if line.strip()]
    if not rows or any(r.get("reward") != -1.0 for r in rows):
        return None
    over = sum(bool(r.get("over_length")) for r in rows)
    return (f"every completion got reward -1 ({over} of {len(rows)} hit the {max_tokens}-token cap "
            f"gspo.max_completion_length, the rest were degenerate), so each group's rewards are equal and the "
            "gradient is 0 (grad_norm 0): nothing was learned. Random-weight models never stop by themselves; "
            "with a real model, raise gspo.max_completion_length or check the prompts.")


_RUN_MARKS = ("result.json", "adapter", "merged", "model", "logs/metrics.jsonl")


def _check_fresh(output_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to train over an earlier run unless asked to continue it (--resume) or replace it (--force)."""
    if resume or force or not output_dir.is_dir():
        return
    found = [m for m in _RUN_MARKS if (output_dir / m).exists()] + sorted(
        p.name for p in output_dir.glob("checkpoint-*"))[:1]
    if found:
        raise click.ClickException(f"{output_dir} already holds a run ({', '.join(found)}); pass --resume to "
                                   "continue it, --force to replace it, or --output another folder")


def _run_overrides(overrides: Sequence[str], output_dir: Any, resume: bool, steps_key: str,
                   max_steps: int | None) -> dict[str, Any]:
    """The dotted overrides of --set plus the run options every `covip train` command shares."""
    from covip.training.gspo_config import parse_overrides

    extra = parse_overrides(list(overrides))
    if output_dir is not None:
        extra["run.output_dir"] = str(output_dir)
    if resume:
        extra["run.resume_from_checkpoint"] = True
    if max_steps is not None:
        extra[steps_key] = max_steps
    return extra
