"""``covip eval``: ``capeval`` and ``downstream``.

:func:`register` adds the ``eval`` group to the ``covip`` CLI (entry-point group ``covip.cli``). Importing
this module imports click only; engines, judges, torch and
matplotlib load when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

__all__ = ["eval_group", "register"]

_JUDGE_HELP = ("Judge spec: 'lexical' (synthetic data only; credits an option only in a caption that names "
               "whom the question asks about; 'lexical-loose' does not ask), 'http://host:port/v1#model' "
               "(OpenAI-compatible "
               "server, e.g. vLLM), 'gguf:/path/model.gguf' or 'hf:model-id-or-dir'.")


def _progress_option(f):
    return click.option("--progress/--no-progress", default=None,
                        help="Progress on stderr (default: on; a bar on a terminal, otherwise a plain line at "
                             "25/50/75/100%% and every 20 s). --no-progress: none.")(f)


def _pack_option(f):
    return click.option("--prompt-pack", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                        help="A prompt pack file (TOML/JSON; any subset of covip.sdk.prompts.PromptPack's fields, "
                             "e.g. the authors' wording): instructions, headers, numbering, vision ids, "
                             "questions and judge prompts. Its name and hash go into the results JSON.")(f)


def _protocol_option(f):
    return click.option("--protocol", type=click.Choice(["paper", "strict"]), default="paper", show_default=True,
                        help="paper: the authors' judge prompt, layout and scoring rules (comparable with the "
                             "paper's tables); strict: covip's stricter parsers (lone boxed letters, whole "
                             "words).")(f)


@click.group("eval")
def eval_group() -> None:
    """Measure personalization quality: CapEval-QAs captions and downstream tasks with/without CAG.

    \b
    Both commands follow the paper's protocol by default (--protocol paper) and record the protocol, the
    judge's prompt style and sampling settings in their JSON; --protocol strict selects covip's stricter
    parsers. Both can score text made elsewhere without loading a model (--captions, --answers).

    \b
    Example:
      covip data synth --out data/synth --n-downstream 20
      covip eval capeval --test data/synth/test.jsonl --model tiny --judge lexical --out runs/eval
      covip eval downstream --task lsd --data data/synth/downstream_lsd.jsonl --model tiny --both \\
          --out runs/eval
      covip eval downstream --task lsd --data hf:Yeongtak/lsd --answers my_answers.jsonl --out runs/lsd
    """


@eval_group.command("capeval")
@click.option("--test", "test", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Test set: covip samples JSONL (test.jsonl), the authors' test-set JSONL (with --capeval), or "
                   "the authors' CapEval QA file alone (with --captions).")
@click.option("--capeval", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The authors' CapEval QA file (QAS_GT_test.json) for a test-set JSONL.")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='Score these captions (JSONL of {"id", "caption"}, or a JSON object id -> caption).')
@click.option("--model", default=None, help="Caption with this model: 'tiny', a hub id, an HF folder or a GGUF "
                                            "export folder.")
@click.option("--judge", "judge_spec", required=True, help=_JUDGE_HELP)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (captions, judgments, JSON, PNG); rerunning into it resumes.")
@click.option("--no-vision", is_flag=True, help="Also caption without the query image (shortcut check: Acc+ "
                                                "must drop); needs --model.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder image paths are relative to (default: the test file's folder).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Caption length budget (greedy).")
@click.option("--engine-opt", multiple=True, metavar="KEY=VALUE",
              help="Engine setting, e.g. device=cuda, dtype=bfloat16, n_ctx=16384 (repeatable).")
@click.option("--judge-opt", multiple=True, metavar="KEY=VALUE",
              help="Judge setting, e.g. concurrency=32, seed=0, cache_path=FILE (repeatable).")
@click.option("--judge-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Questions per judge call (an HTTP judge sends them in parallel).")
@click.option("--no-judge-cache", is_flag=True, help="Do not cache model-judge answers in <out>/judge_cache.sqlite.")
@_protocol_option
@_pack_option
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON instead of the table.")
def capeval_cmd(test: Path, capeval: Path | None, captions: Path | None, model: str | None, judge_spec: str,
                out_dir: Path, no_vision: bool, limit: int | None, image_root: Path | None, max_new_tokens: int,
                engine_opt: tuple[str, ...], judge_opt: tuple[str, ...], judge_batch: int, no_judge_cache: bool,
                protocol: str, prompt_pack: Path | None, progress: bool | None, as_json: bool) -> None:
    """CapEval-QAs: caption each test sample in its own context, judge every question, report Acc+ / Acc−.

    Acc+ = accuracy on questions about concepts present in the query image, Acc− = share of questions about
    absent concepts answered D (cannot be determined); micro-averaged over questions, per number of present
    concepts (1-4) and overall. Writes capeval.json, capeval.png, captions.jsonl and judgments.jsonl.

    \b
    Example:
      covip eval capeval --test data/synth/test.jsonl --model tiny --judge lexical --out runs/eval --no-vision
      covip eval capeval --test QAS_GT_test.json --captions my_captions.jsonl \\
          --judge 'http://127.0.0.1:8000/v1' --out runs/eval-mine
    """
    from covip.training.eval.capeval import run_capeval
    from covip.training.eval.common import parse_options

    result = run_capeval(test, out=out_dir, judge=judge_spec, model=model, captions=captions, capeval=capeval,
                         image_root=image_root, no_vision=no_vision, limit=limit, max_new_tokens=max_new_tokens,
                         engine_options=parse_options(engine_opt, "--engine-opt"),
                         judge_options=parse_options(judge_opt, "--judge-opt"), judge_cache=not no_judge_cache,
                         judge_batch=judge_batch, progress=progress, protocol=protocol, prompt_pack=prompt_pack)
    if as_json:
        click.echo(json.dumps(result.report, indent=1, default=str))
        return
    click.echo(result.table())
    skipped = result.report["skipped_records"]
    if skipped["count"]:
        first = skipped["examples"][0]
        click.echo(f"skipped {skipped['count']} record(s) that break the schema, e.g. {first['id']}: {first['reason']}")
    dis = result.report["parser_disagreement"]["vision"]
    click.echo(f"protocol: {protocol}; the paper and strict parsers disagree on {dis['disagree']} of "
               f"{dis['questions']} judge outputs")
    check = result.report.get("no_vision_check")
    if check:
        click.echo(f"no-vision shortcut check: {check['verdict']} ({check['rule']})")
    if result.report.get("meaningless_model"):
        click.echo("note: the model has random weights; these numbers only show that the pipeline runs")
    click.echo(f"wrote {result.files['json']}, {result.files['png']} and the per-question judgments")


@eval_group.command("downstream")
@click.option("--task", required=True, type=click.Choice(["lsd", "lar", "itr"]),
              help="lsd: last-seen place (token-set F1); lar: last action (judged); itr: planted instruction.")
@click.option("--data", required=True,
              help="Task file (JSON list or JSONL; fields images_context, dialogues_context, query_image, answer), "
                   "'hf:Yeongtak/lsd' (the authors' set on the Hugging Face hub, optionally @split), or a "
                   "downloaded dataset folder.")
@click.option("--model", default=None, help="Answer with this model: 'tiny', a hub id, an HF folder or a GGUF "
                                            "export folder.")
@click.option("--answers", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='Score these answers instead of running a model: JSONL of {"id", "answer"[, "mode"]}, a JSON '
                   "object id -> answer, or a JSON list of answers in the data's order.")
@click.option("--judge", "judge_spec", default=None, help=_JUDGE_HELP + " Needed for LAR.")
@click.option("--no-cag", is_flag=True, help="Answer directly (without a caption first) only.")
@click.option("--both", is_flag=True, help="With and without CAG, side by side.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (answers, scores, JSON, PNG); rerunning into it resumes.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples.")
@click.option("--image-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder image paths are relative to (default: the data file's folder).")
@click.option("--max-new-tokens", "caption_tokens", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Caption pass budget (greedy).")
@click.option("--answer-tokens", type=click.IntRange(min=1), default=None,
              help="Answer pass budget (default: 1024 with --protocol paper, 256 with strict).")
@click.option("--greedy", is_flag=True, help="Greedy answers (default: the authors' sampling, seeded).")
@click.option("--seed", type=int, default=0, show_default=True, help="Base seed of the sampled answers.")
@click.option("--engine-opt", multiple=True, metavar="KEY=VALUE", help="Engine setting (repeatable).")
@click.option("--judge-opt", multiple=True, metavar="KEY=VALUE", help="Judge setting (repeatable).")
@_protocol_option
@_pack_option
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print the result JSON instead of the table.")
def downstream_cmd(task: str, data: str, model: str | None, answers: Path | None, judge_spec: str | None,
                   no_cag: bool, both: bool, out_dir: Path, limit: int | None, image_root: Path | None,
                   caption_tokens: int, answer_tokens: int | None, greedy: bool, seed: int,
                   engine_opt: tuple[str, ...], judge_opt: tuple[str, ...], protocol: str,
                   prompt_pack: Path | None, progress: bool | None, as_json: bool) -> None:
    """Downstream diagnostics (LSD, LAR, ITR) with CAG, without it (--no-cag), or both side by side (--both).

    With --answers, scores answers produced elsewhere (no model is loaded).

    \b
    Example:
      covip eval downstream --task lar --data data/synth/downstream_lar.jsonl --model tiny \\
          --judge lexical --both --out runs/eval
      covip eval downstream --task itr --data data/synth/downstream_itr.jsonl --answers answers.jsonl \\
          --out runs/itr
    """
    from covip.training.eval.common import parse_options
    from covip.training.eval.downstream import run_downstream

    if both and no_cag:
        raise click.UsageError("--both already includes the run without CAG; pass one of them")
    if (model is None) == (answers is None):
        raise click.UsageError("pass --model (answer with a model) or --answers (score a file), not both or neither")
    if answers is not None and (both or no_cag):
        raise click.UsageError("--both/--no-cag choose what a model answers; with --answers the file's 'mode' "
                               "fields say which answers are which")
    if not data.startswith("hf:") and not Path(data).exists():
        raise click.BadParameter(f"{data!r} does not exist (give a task file, a dataset folder or hf:REPO)",
                                 param_hint="--data")
    modes = ("cag", "no_cag") if both else (("no_cag",) if no_cag else ("cag",))
    result = run_downstream(task, data, out=out_dir, model=model, judge=judge_spec, modes=modes,
                            image_root=image_root, limit=limit, caption_tokens=caption_tokens,
                            answer_tokens=answer_tokens, greedy=greedy, seed=seed,
                            engine_options=parse_options(engine_opt, "--engine-opt"),
                            judge_options=parse_options(judge_opt, "--judge-opt"), progress=progress,
                            protocol=protocol, answers=answers, prompt_pack=prompt_pack)
    if as_json:
        click.echo(json.dumps(result.report, indent=1, default=str))
        return
    click.echo(result.table())
    click.echo(f"protocol: {protocol}")
    if result.report.get("meaningless_model"):
        click.echo("note: the model has random weights; these numbers only show that the pipeline runs")
    click.echo(f"wrote {result.files['json']}, {result.files['png']} and {result.files['scored']}")


def register(group: click.Group) -> None:
    """Add the ``eval`` command group to ``group`` (the ``covip`` CLI)."""
    group.add_command(eval_group)
