"""``covip train embedder``: build the ``mini`` image embedder into the cache and report held-out retrieval."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

__all__ = ["embedder_cmd"]


@click.command("embedder")
@click.option("--config", "config_name", default="mini-cpu", show_default=True, metavar="NAME|FILE",
              help="A bundled embedder recipe (training/configs/embedder/NAME.yaml) or a YAML file path.")
@click.option("--quick", is_flag=True, help="Apply the recipe's 'quick' overrides: a build of about a minute.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key, e.g. --set trainer.max_steps=500 (repeatable; values read as YAML).")
@click.option("--force", is_flag=True, help="Retrain even when the same recipe is already built.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the weights folder here instead of the covip cache (make_embedder('mini') reads the "
                   "cache; load a folder elsewhere with --embedder mini --pretrained FOLDER).")
@click.option("--results", "results_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results (recall@1/@5 of mini and the baselines, timings, recipe) to this JSON "
                   "file, e.g. benchmarks/results/mini_embedder.json.")
@click.option("--progress/--no-progress", default=None,
              help="Progress on stderr (default: on; bars on a terminal, plain lines otherwise).")
@click.option("--print-config", is_flag=True, help="Print the resolved recipe as YAML and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print the build record as JSON.")
def embedder_cmd(config_name: str, quick: bool, overrides: tuple[str, ...], force: bool, out_dir: Path | None,
                 results_path: Path | None, progress: bool | None, print_config: bool, as_json: bool) -> None:
    """Train the `mini` embedder (open_clip, ClipLoss, HF Trainer) on the synthetic world and cache it.

    Trains on training-look concepts only, then measures recall@1 and recall@5 of the right memory for
    held-out concepts in a covip Memory full of look-alikes, next to the baselines (the random `tiny`
    embedder, raw pixels) on the same queries. A finished build of the same recipe is reused.

    \b
    Example:
      covip train embedder --config mini-cpu --results benchmarks/results/mini_embedder.json
      covip train embedder --config mini-cpu --quick --out /tmp/mini-quick --json
      covip init --embedder mini     # then use it
    """
    from covip.training.embedder_config import load_embedder_config

    config = load_embedder_config(config_name, list(overrides), quick=quick)
    if print_config:
        import yaml

        click.echo(yaml.safe_dump(config.to_dict(), sort_keys=False), nl=False)
        return
    from covip.training.data.schema import atomic_write_text
    from covip.training.embedder_train import build_mini_embedder

    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log dicts; stdout is for the result
        build = build_mini_embedder(config, out_dir=out_dir, force=force, progress=progress)
    record = build.to_dict()
    if results_path is not None:
        atomic_write_text(results_path, json.dumps(results_summary(record), indent=1, sort_keys=True) + "\n")
    if as_json:
        click.echo(json.dumps(record, indent=1, sort_keys=True))
        return
    ret = record["retrieval"]
    click.echo(f"mini embedder {'reused' if build.reused else 'built'}: {build.folder}")
    click.echo(f"  held-out retrieval ({ret['world']['n_concepts']} concepts, "
               f"{ret['embedders']['mini']['n_queries']} queries): recall@1 {ret['recall_at_1']:.3f}, "
               f"recall@5 {ret['recall_at_5']:.3f}")
    for name, res in ret["embedders"].items():
        if name != "mini":
            click.echo(f"  baseline {name}: recall@1 {res['recall_at_1']:.3f}, recall@5 {res['recall_at_5']:.3f}")
    t = record["timings"]
    click.echo(f"  time: drawing {t['draw_s']:.0f}s, training {t['train_s']:.0f}s, evaluation {t['eval_s']:.0f}s")
    if results_path is not None:
        click.echo(f"  results: {results_path}")


def results_summary(record: dict) -> dict:
    """The results file: mini's recall (``retrieval``, as miniature.json records it), baselines, timings, recipe."""
    ret = record["retrieval"]
    embedders = {name: {k: v for k, v in res.items() if k != "ranks"} for name, res in ret["embedders"].items()}
    return {
        "retrieval": {"recall_at_1": ret["recall_at_1"], "recall_at_5": ret["recall_at_5"]},
        "embedders": embedders,
        "world": ret["world"],
        "train_s": record["timings"]["train_s"],
        "timings": record["timings"],
        "config": {"name": record.get("config_name"), **record["recipe"], "eval": record.get("eval_config")},
        "arch": record["arch"],
        "parameters": record["parameters"],
        "train": record["train"],
        "machine": {"cpu_count": record.get("cpu_count"), "threads": record.get("threads"),
                    "load_avg_at_end": record.get("load_avg_at_end")},
        "versions": record["versions"],
        "reused": record["reused"],
    }
