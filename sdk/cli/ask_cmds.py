"""``covip caption`` and ``covip ask``: one personalized caption or answer, in-process or through a running
``covip serve`` of the same home (:mod:`covip.sdk.cli.remote`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from covip.sdk.cli.common import CliState, echo_json, json_option, pass_state, user_option
from covip.sdk.cli.inference import (
    InferenceOptions,
    _check_photo,
    _echo_memories,
    _ensure_user,
    _open_assistant,
    _stream_answer,
    echo_memory_dicts,
    echo_stats,
    inference_options,
)
from covip.sdk.cli.remote import local_option
from covip.sdk.errors import InputError

__all__ = ["register"]


def _server(state: CliState, mem: Any, photo: Path, opts: InferenceOptions, local: bool) -> Any:
    """The running server of this home to hand the work to, or None (see :mod:`covip.sdk.cli.remote`)."""
    if local or opts != InferenceOptions():  # model options apply to a model loaded here
        return None
    from covip.sdk.cli.remote import find_server

    return find_server(mem.home, photo)


# ---------------------------------------------------------------------------------------------- caption
@click.command("caption")
@click.argument("photo", type=click.Path(path_type=Path))
@user_option()
@inference_options
@local_option()
@json_option()
@pass_state
def caption_cmd(state: CliState, photo: Path, user: str, as_json: bool, local: bool, opts: InferenceOptions) -> None:
    """Write the personalized caption of PHOTO from the user's memories.

    The photo is compared with the user's remembered photos; the most similar ones (with their
    dialogues) go into the model's context, and the caption names the people, pets and places it
    recognizes. Captions are cached: asking again about the same photo with the same memories
    answers from the cache (shown as "from the cache"). Lists the memories used.

    \b
    Example:
      covip caption new.jpg --user ana
      covip caption new.jpg --user ana --json | jq -r .caption
      covip caption new.jpg --user ana --caption-only -k 2     # weak device

    When `covip serve` runs for this memory, the caption comes from it (no model to load).
    """
    mem = state.memory()
    _ensure_user(mem, user)
    _check_photo(mem, photo)
    remote = _server(state, mem, photo, opts, local)
    if remote is not None:
        doc = remote.caption(user, photo)
        if as_json:
            echo_json({"photo": str(photo), **doc})
            return
        click.echo(doc["caption"])
        click.echo(f"caption {'from the cache' if doc['cached'] else 'generated'} in {doc['seconds']:.2f}s "
                   f"(by covip serve, model {doc['model']})")
        echo_memory_dicts(doc["memories"], doc.get("abstain_reason"))
        return
    assistant = _open_assistant(state, mem, opts)
    result = assistant.caption(user, photo)
    if as_json:
        echo_json({"user": user, "photo": str(photo), "model": assistant.engine.model_id,
                   "meaningless": assistant.meaningless, "caption": result.caption, "cached": result.cached,
                   "seconds": round(result.seconds, 4), "abstained": result.context.abstained,
                   "abstain_reason": result.context.reason or None,
                   "memories": [m.to_dict() for m in result.memories],
                   "tokens": None if result.generation is None else {
                       "prompt": result.generation.prompt_tokens, "cached": result.generation.cached_tokens,
                       "completion": result.generation.completion_tokens}})
        return
    click.echo(result.caption)
    click.echo(f"caption {'from the cache' if result.cached else 'generated'} in {result.seconds:.2f}s")
    _echo_memories(result.context)


# ---------------------------------------------------------------------------------------------- ask
@click.command("ask")
@click.argument("photo", type=click.Path(path_type=Path))
@click.argument("question", metavar="QUESTION")
@user_option()
@click.option("--no-cag", "no_cag", is_flag=True,
              help="Ask the model directly (memories in context, but no personalized caption first).")
@click.option("--stream/--no-stream", default=None,
              help="Print the answer as it is generated (default: on when stdout is a terminal).")
@inference_options
@local_option()
@json_option()
@pass_state
def ask_cmd(state: CliState, photo: Path, question: str, user: str, no_cag: bool, stream: bool | None,
            as_json: bool, local: bool, opts: InferenceOptions) -> None:
    """Answer QUESTION about PHOTO from the user's memories.

    With Caption-Augmented Generation (the default) the model first writes a personalized caption
    of the photo from the most similar remembered photos and dialogues (cached), then answers with
    it. Shows the answer, the caption (and whether it came from the cache), the memories used,
    timings and token counts. QUESTION may be @FILE or @- (stdin).

    \b
    Example:
      covip ask new.jpg "Who is this, and where did we last meet?" --user ana
      covip ask new.jpg "What is she doing?" --user ana --no-cag
      covip ask new.jpg "Who is this?" --user ana --json | jq '.memories[].concepts'

    When `covip serve` runs for this memory (and no model option is given), the answer comes from it:
    no model to load, the same output (memories without local paths, the answer printed whole).
    """
    from covip.sdk.cli.common import read_text_arg

    if stream and as_json:
        raise InputError("--stream does not go with --json (the JSON document holds the whole answer)")
    question = read_text_arg(question, "question").strip()
    if not question:
        raise InputError("the question is empty; ask something about the photo")
    mem = state.memory()
    _ensure_user(mem, user)
    _check_photo(mem, photo)
    cag = not no_cag
    remote = _server(state, mem, photo, opts, local)
    if remote is not None:
        doc = remote.ask(user, photo, question, cag=cag)
        if as_json:
            echo_json({"photo": str(photo), **doc})
            return
        click.echo(doc["answer"])
        _echo_caption(doc["caption"], doc["caption_cached"])
        echo_memory_dicts(doc["memories"], doc.get("abstain_reason"))
        echo_stats(doc["timings"], doc["tokens"])
        click.echo(f"(answered by covip serve, model {doc['model']})", err=True)
        return
    assistant = _open_assistant(state, mem, opts)
    if as_json:
        reply = assistant.ask(user, photo, question, cag=cag)
        echo_json({"user": user, "photo": str(photo), "question": question, "model": assistant.engine.model_id,
                   "meaningless": assistant.meaningless, **reply.to_dict()})
        return
    if stream is None:
        stream = sys.stdout.isatty()
    if stream:
        reply = _stream_answer(assistant, user, photo, question, cag=cag)
    else:
        reply = assistant.ask(user, photo, question, cag=cag)
        click.echo(reply.answer)
    _echo_caption(reply.caption, reply.caption_cached)
    _echo_memories(reply.context)
    echo_stats(reply.timings, reply.tokens)


def _echo_caption(caption: str | None, cached: bool) -> None:
    click.echo("")
    if caption is None:
        click.echo("caption: none (--no-cag asks the model directly)")
    else:
        click.echo(f"caption ({'from the cache' if cached else 'generated'}): {caption}")


def register(group: click.Group) -> None:
    """Add `covip caption` and `covip ask` to the ``covip`` group."""
    for command in (caption_cmd, ask_cmd):
        group.add_command(command)
