"""``covip models`` (what is cached, with sizes) and ``covip pull ID`` (download a checkpoint ahead of time).

The work is :mod:`covip.sdk.models.cache` and :mod:`covip.sdk.models.hub`; this module adds the commands.
"""

from __future__ import annotations

import logging

import click

from covip.sdk.cli.common import CliState, echo_json, json_option, pass_state

log = logging.getLogger(__name__)

__all__ = ["register", "models_cmd", "pull_cmd"]

_GET_ONE = ("get one ahead of time with `covip pull ggml-org/Qwen3-VL-2B-Instruct-GGUF --include '*Q4_K_M.gguf' "
            "--include 'mmproj*'` (or any Hugging Face model id), or build the offline tiny models with "
            "`covip demo`")


@click.command("models")
@json_option()
@pass_state
def models_cmd(state: CliState, as_json: bool) -> None:
    """List the models this machine holds, with their sizes: covip's cache, the home's model, Hugging Face's cache.

    \b
    Kinds:
      model       a tiny/mini model covip built (random weights until trained)
      embedder    an image embedder built or trained into the cache (`covip train embedder`)
      gguf        llama.cpp conversions made by covip
      bench       the benchmarks' converted engines; converter: llama.cpp's converter source
      export      the export directory the home uses (`covip init --model EXPORT`); local: another
                  model file or folder it uses
      hub         a Hugging Face checkpoint (`covip pull`, or downloaded by transformers);
                  hub-dataset: a dataset in the same cache
      partial     an unfinished build left by a crash (safe to delete); other: anything else

    Nothing is downloaded or changed. Caches: $COVIP_CACHE (else e.g. ~/.cache/covip) and $HF_HUB_CACHE
    (else $HF_HOME/hub, e.g. ~/.cache/huggingface/hub). Sizes count each file once (powers of 1000).

    \b
    Example:
      covip models
      covip models --json | jq -r '.models[] | select(.kind == "hub") | .path'
    """
    from covip.sdk.models.cache import human_size, list_models

    listing = list_models(state.home_dir)
    if as_json:
        echo_json(listing.to_dict())
        return
    for note in listing.notes:
        click.echo(f"note: {note}", err=True)
    if not listing.models:
        click.echo(f"no models cached (covip cache {listing.covip_cache}, Hugging Face cache {listing.hub_cache}); "
                   f"{_GET_ONE}.")
        return
    rows = [(m.kind, m.name, m.size, m.path + (f"  ({m.note})" if m.note else "")) for m in listing.models]
    widths = [max(len(r[i]) for r in [("KIND", "NAME", "SIZE", ""), *rows]) for i in range(3)]
    click.echo(f"{'KIND':<{widths[0]}}  {'NAME':<{widths[1]}}  {'SIZE':>{widths[2]}}  PATH")
    for kind, name, size, path in rows:
        click.echo(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {size:>{widths[2]}}  {path}")
    click.echo(f"total {human_size(listing.total_bytes)} (covip cache {listing.covip_cache}; Hugging Face cache "
               f"{listing.hub_cache})")
    if listing.home_model:
        click.echo(f"the home {listing.home} uses model {listing.home_model}")


@click.command("pull")
@click.argument("model_id", metavar="ID")
@click.option("--revision", metavar="REV", default=None,
              help="Branch, tag or commit hash (default: main).")
@click.option("--include", "include", multiple=True, metavar="PATTERN",
              help="Download only the files matching this glob (repeatable), e.g. one GGUF quant: "
                   "--include '*Q4_K_M.gguf' --include 'mmproj*'. Default: the whole repository.")
@click.option("--refresh", is_flag=True,
              help="Ask the Hub even when the cache has the snapshot: fetch files an earlier --include left "
                   "out, or a branch that moved on (only missing or changed files are downloaded).")
@json_option()
def pull_cmd(model_id: str, revision: str | None, include: tuple[str, ...], refresh: bool, as_json: bool) -> None:
    """Download a Hugging Face checkpoint now, so later commands run without network.

    ID is a Hugging Face model id, owner/name. The files go to the Hugging Face cache ($HF_HUB_CACHE, else
    $HF_HOME/hub, e.g. ~/.cache/huggingface/hub), the one transformers reads, with huggingface_hub's
    progress bar. A snapshot already in the cache is not fetched again (and needs no network); with
    HF_HUB_OFFLINE=1 only the cache is looked at. Prints the local folder on stdout: pass it, or the id,
    to `--model`. Private or gated models need a token (`hf auth login` or $HF_TOKEN).

    \b
    Example:
      covip pull Qwen/Qwen3-VL-2B-Instruct
      covip pull ggml-org/Qwen3-VL-2B-Instruct-GGUF --include "*Q4_K_M.gguf" --include "mmproj*"
      covip init --force --model "$(covip pull ggml-org/Qwen3-VL-2B-Instruct-GGUF --include '*Q4_K_M.gguf' --include 'mmproj*')"
    """
    from covip.sdk.models.cache import human_size
    from covip.sdk.models.hub import pull

    result = pull(model_id, revision=revision, include=include, refresh=refresh)
    if as_json:
        doc = {k: v for k, v in result.__dict__.items()}
        doc["size"] = human_size(result.bytes)
        echo_json(doc)
        return
    what = f"{result.repo_id} (revision {result.revision}, commit {result.commit[:12]}, {result.files} files, " \
           f"{human_size(result.bytes)})"
    if result.already_cached:
        click.echo(f"{what} is already in the cache; nothing downloaded"
                   + ("" if include or refresh else " (--refresh asks the Hub for anything newer or left out)"),
                   err=True)
    else:
        click.echo(f"downloaded {what} in {result.seconds:.0f} s", err=True)
    use = str(result.path) if result.has_gguf else result.repo_id
    click.echo(f"use it: --model {_quote(use)} (on ask, chat, serve), or make it the home's model with "
               f"`covip init --model {_quote(use)}` (--force to switch an existing home)", err=True)
    click.echo(str(result.path))


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def register(group: click.Group) -> None:
    """Add ``models`` and ``pull`` to ``group`` (the ``covip`` CLI)."""
    group.add_command(models_cmd)
    group.add_command(pull_cmd)
