"""``covip repro``: reproductions of the CoViP method that run on one machine (``covip repro mini``).

:func:`register` adds the ``repro`` group to the ``covip`` CLI (entry point group ``covip.cli``). Importing
this module imports click only; torch, trl and peft load when a run starts.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import click

__all__ = ["repro", "register"]


@click.group("repro")
def repro() -> None:
    """Reproduce CoViP in miniature: train, evaluate on held-out concepts, write figures.

    \b
    Example:
      covip repro mini --quick       # the whole pipeline in minutes (one seed, a small world)
      covip repro mini               # full mode: three seeds, writes benchmarks/results/miniature.json
    """


@repro.command("mini")
@click.option("--config", "config_name", default="mini", show_default=True, metavar="NAME|FILE",
              help="A bundled repro recipe (training/configs/repro/NAME.yaml) or a YAML file path.")
@click.option("--quick", is_flag=True, help="Apply the recipe's 'quick' overrides: the same pipeline in minutes.")
@click.option("--seeds", default=None, metavar="N,N,...", help="Training seeds, e.g. 0,1,2 (overrides stages.seeds).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder: the world, each seed's SFT and GSPO runs and evaluations (overrides run.work_dir).")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of miniature.json and miniature.png (default: benchmarks/results of the checkout; "
                   "--quick: its quick/ subfolder).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set eval.capeval_samples=30 (repeatable; values read as YAML).")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: on; bars on a terminal, plain lines otherwise).")
@click.option("--resume", is_flag=True,
              help="Continue a stopped run: finished seeds (in the work folder, or recorded beside the results in "
                   "miniature-seeds/) and finished SFT phases of the same recipe are reused, not trained again "
                   "(anything else changed: trained afresh).")
@click.option("--print-config", is_flag=True, help="Print the resolved recipe as YAML and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document as JSON.")
def mini(config_name: str, quick: bool, seeds: str | None, work_dir: Path | None, results_dir: Path | None,
         overrides: tuple[str, ...], progress: bool | None, resume: bool, print_config: bool, as_json: bool) -> None:
    """The miniature CoViP reproduction: SFT then GSPO per seed, three models on held-out concepts.

    For each seed, on one synthetic world whose test concepts never appear in training: `covip train sft`,
    `covip train gspo` from its checkpoint, then CapEval-QAs Acc+/Acc- (lexical judge) and recognition F1
    of the random initialization, the SFT model and the SFT+GSPO model, and LSD/LAR/ITR with and without
    CAG for the final model. Also measures the mini embedder's held-out retrieval. Prints seed means with
    95% intervals and whether the targets are met; `covip bench --report-only` adds the RESULTS.md section.
    On 2 CPU cores a full seed takes about 2 hours (recognition SFT, the caption phases, GSPO, evaluation):
    stop any time and continue with --resume.

    \b
    Example:
      covip repro mini --quick
      covip repro mini --seeds 0,1,2 --set stages.sft_overrides='{trainer.max_time_s: 900}'
      covip repro mini --resume      # after a stop: finished seeds and SFT phases are kept
      covip repro mini --seeds 2 --resume   # one more seed; seeds recorded by earlier sessions are kept
      covip bench --report-only      # RESULTS.md gains the miniature section
    """
    from covip.sdk.errors import InputError
    from covip.sdk.support import parse_overrides
    from covip.training.repro_config import load_repro_config

    extra: dict[str, Any] = parse_overrides(list(overrides))
    if seeds is not None:
        try:
            extra["stages.seeds"] = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--seeds takes comma-separated integers such as 0,1,2, got {seeds!r}") from None
    if work_dir is not None:
        extra["run.work_dir"] = str(work_dir)
    config = load_repro_config(config_name, extra, quick=quick)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False), nl=False)
        return
    from covip.training.repro import run_repro

    with contextlib.redirect_stdout(sys.stderr):  # the trainers print their log dicts; stdout is for the result
        result = run_repro(config, progress=progress, results_dir=results_dir, resume=resume)
    if as_json:
        click.echo(json.dumps(result.data, indent=1, sort_keys=True, default=str))
        return
    click.echo(summary_text(result.data))
    click.echo(f"  wrote {result.json_path} and {result.png_path}")


def _f(x: Any) -> str:
    return "-" if not isinstance(x, (int, float)) else f"{x:.3f}"


def summary_text(data: dict[str, Any]) -> str:
    """The printed table: each stage's seed means, the paired differences and the targets."""
    lines = [f"miniature CoViP ({data['mode']} mode, seeds {data['seeds']}, {data['wall_s']:.0f} s); held-out concepts:",
             f"  {'model':<12} {'Acc+':>7} {'Acc-':>7} {'recog. F1':>10} {'F1 null':>8}"]
    from covip.training.repro_report import STAGE_LABELS

    for stage, s in data["stages"].items():
        lines.append(f"  {STAGE_LABELS.get(stage, stage):<12} {_f(s['acc_pos']):>7} {_f(s['acc_neg']):>7} "
                     f"{_f(s['recognition_f1']):>10} {_f(s['recognition_null_f1']):>8}")
    for name, diff in (("SFT - random", data.get("sft_minus_random")), ("GSPO - SFT", data.get("gspo_minus_sft"))):
        for pol, label in (("acc_pos", "Acc+"), ("acc_neg", "Acc-")):
            d = (diff or {}).get(pol) or {}
            if d.get("mean") is not None:
                ci = d.get("ci95") or [None, None]
                lines.append(f"  {name} {label}: {d['mean']:+.3f} (95% CI {_f(ci[0])} .. {_f(ci[1])})")
    cag = data.get("cag_minus_direct") or {}
    if cag:
        lines.append("  CAG - direct (" + str(data.get("cag_model")) + "): " +
                     ", ".join(f"{t.upper()} {v:+.3f}" if v is not None else f"{t.upper()} -" for t, v in cag.items()))
    ret = data.get("retrieval")
    if ret:
        lines.append(f"  retrieval ({ret['embedder']}): recall@1 {_f(ret['recall_at_1'])}, "
                     f"recall@5 {_f(ret['recall_at_5'])}")
    for name, t in (data.get("targets") or {}).items():
        lines.append(f"  target {name}: {'met' if t['met'] else 'not met' if t['met'] is False else 'n/a'}")
    from covip.training.repro_report import time_capped

    lines.extend(f"  WARNING: {w}" for w in time_capped(data))
    return "\n".join(lines)


def register(group: click.Group) -> None:
    """Add the ``repro`` command group to ``group`` (the ``covip`` CLI)."""
    group.add_command(repro)
