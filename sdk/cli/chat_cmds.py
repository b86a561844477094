"""Personalized inference commands: chat and demo (caption and ask: ask_cmds; ``covip init --model``: memory_cmds).

Each command opens the memory, checks its inputs (photo, user) before any model loads, then builds an
:class:`~covip.sdk.assistant.Assistant` around the memory with the model chosen by ``covip init --model``
(or ``--model``). Answers and captions go to stdout; notices and progress go to stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from covip.sdk.assistant import TINY_MAX_TOKENS
from covip.sdk.cli.common import CliState, echo_json, is_interactive, json_option, pass_state, user_option
from covip.sdk.cli.inference import (
    InferenceOptions,
    _cap_tokens,
    _check_photo,
    _ensure_user,
    _model_label,
    _notice,
    _open_assistant,
    _short_memories,
    _stream_answer,
    check_model_spec,
    inference_options,
)
from covip.sdk.errors import CovipError, InputError, NotFoundError
from covip.sdk.models.mini import MINI_MODEL_SPEC

if TYPE_CHECKING:
    from covip.sdk.assistant import Assistant
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["register"]



# ---------------------------------------------------------------------------------------------- chat
CHAT_HELP = """\
commands:
  /photo PATH      attach a photo to talk about (or just paste or drop its path)
  /caption         the personalized caption of the current photo
  /remember NOTE   remember the current photo with NOTE as the dialogue about it
  /concept NAME    tag the current photo with a person, pet, object or place
  /forget          forget the current photo (its dialogues, vectors and cached captions)
  /cag on|off      answer with (default) or without the personalized caption first
  /new             start a new conversation about the current photo (forget the earlier questions)
  /help            this list
  /quit            leave (Ctrl-D too)
anything else is a question about the current photo; follow-ups see the earlier questions and
answers about it (the newest that fit the model's context), until another photo is attached"""


@dataclass
class _ChatState:
    photo: Path | None = None
    pending: list[str] = dataclasses.field(default_factory=list)  # concepts for the next /remember
    cag: bool = True
    turns: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # this photo's (question, answer)s


def _dropped_path(line: str) -> Path | None:
    """A pasted or dropped file path ('/a b.jpg', '/a\\ b.jpg', file:///a.jpg) that exists, else None."""
    text = line.strip()
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    candidates = [text]
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = []
    if len(parts) == 1:
        candidates.append(parts[0])
    for cand in candidates:
        if cand and len(cand) < 4096:
            path = Path(cand).expanduser()
            try:
                if path.is_file():
                    return path
            except OSError:
                continue
    return None


def _path_arg(arg: str) -> Path:
    dropped = _dropped_path(arg)
    if dropped is not None:
        return dropped
    return Path(arg.strip().strip("'\"")).expanduser()


class _Chat:
    """The chat loop's commands; each raises CovipError on a problem (shown, then the chat goes on)."""

    def __init__(self, assistant: Assistant, user: str, state: _ChatState) -> None:
        self.assistant, self.user, self.s = assistant, user, state

    @property
    def mem(self) -> Memory:
        return self.assistant.memory

    def _need_photo(self) -> Path:
        if self.s.photo is None:
            raise InputError("no photo attached yet; attach one with /photo PATH (or paste its path)")
        return self.s.photo

    def _known(self, photo: Path) -> Any:
        try:
            return self.mem.find_photo(self.user, photo)
        except NotFoundError:
            return None

    def attach(self, arg: str) -> None:
        if not arg.strip():
            if self.s.photo is None:
                raise InputError("usage: /photo PATH")
            click.echo(f"current photo: {self.s.photo}")
            return
        path = _path_arg(arg)
        pic = _check_photo(self.mem, path)
        if path != self.s.photo:
            self.s.turns = []  # a new photo starts a new conversation
        self.s.photo, self.s.pending = path, []
        known = self._known(path)
        where = (f"already remembered as photo {known.id}" if known is not None else "not remembered yet")
        click.echo(f"attached {path} ({pic.width}x{pic.height}, {where}); ask away")

    def ask(self, question: str) -> None:
        photo = self._need_photo()
        reply = _stream_answer(self.assistant, self.user, photo, question, cag=self.s.cag, prefix="assistant: ",
                               history=self.s.turns)
        self.s.turns.append((question, reply.answer))
        how = (f"caption {'cached' if reply.caption_cached else 'generated'}" if reply.cag else "no CAG")
        if reply.history_turns or reply.history_dropped:
            how += f", {reply.history_turns} earlier turn(s)"
            if reply.history_dropped:
                how += f" ({reply.history_dropped} oldest left out to fit)"
        reused = reply.tokens.get("answer_cached", 0)
        click.echo(f"  memories used: {_short_memories(reply.context)}  "
                   f"[{how}, {reused} prompt tokens reused, {reply.timings.get('total_s', 0.0):.2f}s]")

    def new_conversation(self) -> None:
        self.s.turns = []
        click.echo("new conversation: earlier questions about this photo are forgotten (the memories stay)")

    def caption(self) -> None:
        result = self.assistant.caption(self.user, self._need_photo())
        click.echo(f"caption: {result.caption}")
        click.echo(f"  memories used: {_short_memories(result.context)}  "
                   f"[{'cached' if result.cached else 'generated'}, {result.seconds:.2f}s]")

    def remember(self, note: str) -> None:
        photo = self._need_photo()
        if not note.strip():
            raise InputError("usage: /remember NOTE  (what to remember about this photo, e.g. "
                             "'This is Bori at the Han river')")
        done = self.mem.remember(self.user, photo, note, concepts=self.s.pending)
        tags = ", ".join(done.episode.concepts) if done.episode is not None and done.episode.concepts else ""
        click.echo(f"remembered photo {done.photo.id} ({'new photo' if done.new_photo else 'new dialogue'})"
                   + (f" about {tags}" if tags else ""))
        if not self.s.pending:
            click.echo("  tip: /concept NAME ties it to a person, pet, object or place", err=True)
        self.s.pending = []

    def concept(self, name: str) -> None:
        photo = self._need_photo()
        name = name.strip()
        if not name:
            raise InputError("usage: /concept NAME  (a person, pet, object or place in the photo)")
        known = self._known(photo)
        if known is None:
            if name.lower() not in {n.lower() for n in self.s.pending}:
                self.s.pending.append(name)
            click.echo(f"will tag the photo with {', '.join(self.s.pending)} when you /remember it")
            return
        done = self.mem.remember(self.user, photo, None, concepts=[name])
        click.echo(f"tagged photo {done.photo.id} with {name}")

    def forget(self) -> None:
        photo = self._need_photo()
        known = self._known(photo)
        if known is None:
            raise NotFoundError(f"{photo} is not in {self.user!r}'s memory, so there is nothing to forget")
        report = self.mem.forget_photo(self.user, known.id)
        self.s.pending = []
        click.echo(f"forgot photo {known.id} with {report.episodes} dialogue(s) and {report.captions} cached "
                   "caption(s)")

    def set_cag(self, arg: str) -> None:
        value = arg.strip().lower()
        if value not in ("on", "off"):
            raise InputError("usage: /cag on|off")
        self.s.cag = value == "on"
        click.echo(f"CAG {value}")


def _read_lines(interactive: bool) -> Any:
    """Lines from stdin; on a terminal with a prompt (line editing when the readline module exists)."""
    if interactive:
        try:
            import readline  # noqa: F401  (stdlib on most Unix Pythons; input() then gets line editing)
        except ImportError:
            pass
        while True:
            try:
                yield input("you> ")
            except EOFError:
                click.echo("", err=True)
                return
    stream = click.get_text_stream("stdin")
    for line in stream:
        yield line.rstrip("\r\n")


@click.command("chat")
@user_option()
@click.option("--photo", "first_photo", type=click.Path(path_type=Path), help="Attach this photo at the start.")
@click.option("--create-user", is_flag=True, help="Add the user first if it does not exist yet.")
@click.option("--no-cag", "no_cag", is_flag=True, help="Start with CAG off (toggle with /cag on|off).")
@inference_options
@pass_state
def chat_cmd(state: CliState, user: str, first_photo: Path | None, create_user: bool, no_cag: bool,
             opts: InferenceOptions) -> None:
    """Chat about photos in the terminal, with the user's memories.

    Attach a photo with `/photo PATH` (or paste or drop its path), then ask questions about it;
    each answer streams as it is generated and is followed by the memories it used. `/remember
    NOTE` stores the current photo with NOTE as its dialogue, `/concept NAME` tags it, `/forget`
    forgets it, `/help` lists the commands, `/quit` (or Ctrl-D) leaves. Reads plain lines from
    stdin, so it can be scripted by piping; then the exit code is that of the first failed line.

    \b
    Example:
      covip chat --user ana
      printf '/photo bori.jpg\\nWho is this?\\n/remember This is Bori at the park.\\n/quit\\n' \\
        | covip chat --user ana
    """
    from covip.sdk.cli.main import exit_code_for

    mem = state.memory()
    _ensure_user(mem, user, create=create_user)
    if first_photo is not None:
        _check_photo(mem, first_photo)
    assistant = _open_assistant(state, mem, opts)
    chat = _Chat(assistant, user, _ChatState(cag=not no_cag))
    interactive = is_interactive()
    click.echo(f"chatting as {user} with model {assistant.engine.model_id}; /help lists the commands", err=True)
    if first_photo is not None:
        chat.attach(str(first_photo))
    commands: dict[str, Callable[[str], None]] = {
        "/photo": chat.attach, "/caption": lambda _: chat.caption(), "/remember": chat.remember,
        "/concept": chat.concept, "/forget": lambda _: chat.forget(), "/cag": chat.set_cag,
        "/new": lambda _: chat.new_conversation(), "/help": lambda _: click.echo(CHAT_HELP)}
    first_error: int | None = None
    for raw in _read_lines(interactive):
        line = raw.strip()
        if not line:
            continue
        name, _, arg = line.partition(" ")
        name = name.lower()
        if name in ("/quit", "/exit", "/q"):
            break
        try:
            if name in commands:
                commands[name](arg)
            elif (dropped := _dropped_path(line)) is not None:  # a pasted or dropped photo path
                chat.attach(str(dropped))
            elif line.startswith("/"):
                if "/" in name[1:] or "." in name:  # meant as a photo path
                    chat.attach(line)  # says the file does not exist
                raise InputError(f"unknown command {name}; /help lists the commands")
            else:
                chat.ask(line)
        except (CovipError, OSError) as exc:
            message = str(exc) if isinstance(exc, CovipError) else f"{exc.strerror or exc}: {exc.filename}"
            click.echo(f"error: {message}", err=True)
            if first_error is None:
                first_error = exit_code_for(exc)
    if first_error is not None and not interactive:
        click.get_current_context().exit(first_error)


# ---------------------------------------------------------------------------------------------- demo
def _demo_home(state_home_given: Path | None, home: Path | None) -> tuple[Path, bool]:
    """(home, temporary?): --home of demo, else the group's --home from the command line, else a temp dir."""
    chosen = home or state_home_given
    if chosen is not None:
        return chosen.expanduser(), False
    return Path(tempfile.mkdtemp(prefix="covip-demo-")), True


def _chosen_demo_home(state: CliState, demo_home: Path | None) -> tuple[Path, bool]:
    """The demo's home (said on stderr): demo's --home, else the group's --home given on the command line, else
    a temporary one; (home, temporary?)."""
    ctx = click.get_current_context()
    group_home = None
    if ctx.parent is not None and ctx.parent.get_parameter_source("home") == ParameterSource.COMMANDLINE:
        group_home = state.home  # `covip --home DIR demo`; never $COVIP_HOME (that is the user's real memory)
    home, temporary = _demo_home(group_home, demo_home)
    click.echo(f"demo home: {home}" + (" (temporary, deleted at the end; --home DIR keeps it)" if temporary
                                      else ""), err=True)
    return home, temporary


@click.command("demo")
@inference_options
@click.option("--embedder", "embedder_spec", metavar="MODEL[/PRETRAINED]",
              help="Image embedding model (default: 'tiny' with the tiny model, else ViT-B-32/laion2b_s34b_b79k).")
@click.option("--home", "demo_home", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the demo memory in this directory (default: a temporary one, deleted at the end).")
@json_option()
@pass_state
def demo_cmd(state: CliState, embedder_spec: str | None, demo_home: Path | None, as_json: bool,
             opts: InferenceOptions) -> None:
    """See the whole pipeline at work: memory, retrieval, personalized caption, answer.

    Draws a few photos (a white dog 'Bori', 'Mom' in a red coat, a blue bike), remembers them with
    dialogues, then asks about new photos of Bori and Mom three ways: with CAG (cold: the caption
    is generated), with CAG again (warm: the caption comes from the cache), and directly without
    CAG. Each run shows the memories used and timings. With no --model it runs offline on the tiny
    random-weight models: the pipeline is real, the answers are meaningless (it says so). Never
    touches your own memory: it uses a temporary home unless --home is given here.

    With --model mini it runs the trained miniature model (installed by `covip repro mini`, or
    `covip train install-mini`) with the mini embedder on concepts it never saw in training, asks
    about a new photo of each with and without CAG, and prints how often it names the right one.

    \b
    Example:
      covip demo                                   # offline, tiny models, meaningless answers
      covip demo --model mini                      # the trained miniature model: naming rate
      covip demo --model Qwen/Qwen3-VL-2B-Instruct --embedder ViT-B-32/laion2b_s34b_b79k
      covip demo --model ./export/qwen3-vl-2b-gguf --home ./demo-home --json
    """
    import shutil

    from covip.sdk.assistant import Assistant, AssistantConfig
    from covip.sdk.config import DEFAULT_EMBEDDER, SETTINGS_FILE, write_settings
    from covip.sdk.demo import run_demo
    from covip.sdk.engines.factory import describe_model_spec
    from covip.sdk.vision import parse_embedder_spec

    say: Callable[[str], None] = (lambda s: click.echo(s, err=True)) if as_json else click.echo
    if opts.model is not None and opts.model.strip() == MINI_MODEL_SPEC:
        _mini_demo(state, embedder_spec, demo_home, as_json, opts, say)
        return
    model = "tiny"
    if opts.model is not None:
        model, backend, notes = check_model_spec(opts.model)
        for note in notes if backend != "tiny" else ():  # run_demo says itself when answers are meaningless
            _notice(note)
    if embedder_spec is None:
        embedder_spec = "tiny" if describe_model_spec(model) == "tiny" else DEFAULT_EMBEDDER
    emb_config = parse_embedder_spec(embedder_spec)
    home, temporary = _chosen_demo_home(state, demo_home)
    try:
        if not (home / SETTINGS_FILE).exists():  # so `covip --home DIR ask ...` works on it afterwards
            write_settings(home, {"embedder": {"model": emb_config.model, "pretrained": emb_config.pretrained},
                                  "model": model})
        config = AssistantConfig(home=home, model=model, embedder=embedder_spec, context=opts.context_config(),
                                 cag=opts.cag_config(),
                                 meaningless_max_tokens=TINY_MAX_TOKENS if opts.max_tokens is None else None)
        t0 = time.perf_counter()
        click.echo(f"loading model {_model_label(model)} ...", err=True)
        with Assistant(config) as assistant:
            click.echo(f"model ready in {time.perf_counter() - t0:.1f} s", err=True)
            if getattr(assistant.engine, "meaningless", False) and opts.max_tokens is None:
                say(f"(random-weight model: output capped at {TINY_MAX_TOKENS} tokens; --max-tokens changes it)")
            out = click.get_text_stream("stdout")
            stream = None if as_json else (lambda piece: (out.write(piece), out.flush()))
            result = run_demo(assistant, home / "demo-photos", say=say, stream=stream)
            model_id, embedder_id = assistant.engine.model_id, assistant.memory.embedder.model_id
    finally:
        if temporary:
            shutil.rmtree(home, ignore_errors=True)
    if not temporary:
        say(f"\nthe demo memory stays in {home}; try: covip --home {_quote(home)} ask "
            f"{_quote(home / 'demo-photos' / 'new-Bori.png')} \"Who is this?\" --user {result['user']}")
    if as_json:
        echo_json({"home": None if temporary else str(home.resolve()), "model": model_id, "model_spec": model,
                   "embedder": embedder_id, **result})


def _mini_demo(state: CliState, embedder_spec: str | None, demo_home: Path | None, as_json: bool,
               opts: InferenceOptions, say: Callable[[str], None]) -> None:
    """`covip demo --model mini`: the installed miniature model on its held-out demo concepts (naming rate)."""
    import shutil

    from covip.sdk.assistant import Assistant, AssistantConfig
    from covip.sdk.demo_mini import run_mini_demo
    from covip.sdk.models.mini import find_mini_model
    from covip.sdk.prompts import load_pack

    installed = find_mini_model()  # not installed: a NotFoundError that says how to build it
    pack = load_pack(installed.prompt_pack)
    # the mini model was trained on three remembered dialogues per photo, numbered by its pack, and on
    # captions of ~60 tokens: the same here, whatever the similarity of the look-alikes
    context = dataclasses.replace(opts.context_config(), k=opts.k or 3,
                                  similarity_floor=-1.0 if opts.floor is None else opts.floor)
    cag = dataclasses.replace(opts.cag_config(),
                              prompt_pack=None if installed.prompt_pack is None else str(installed.prompt_pack))
    if opts.max_tokens is None:
        _cap_tokens(cag, 96)
    home, temporary = _chosen_demo_home(state, demo_home)
    say(f"mini model: {installed.model_dir} (installed {installed.record.get('installed_at', '?')})")
    try:
        config = AssistantConfig(home=home, model=str(installed.model_dir), embedder=embedder_spec or "mini",
                                 context=context, cag=cag)
        with Assistant(config) as assistant:
            result = run_mini_demo(assistant, installed, say=say, numbering=pack.dialogue_numbering)
            model_id, embedder_id = assistant.engine.model_id, assistant.memory.embedder.model_id
    finally:
        if temporary:
            shutil.rmtree(home, ignore_errors=True)
    if as_json:
        echo_json({"home": None if temporary else str(home.resolve()), "model": model_id,
                   "model_spec": MINI_MODEL_SPEC, "embedder": embedder_id, **result})


def _quote(path: Path) -> str:
    return shlex.quote(str(path)) if os.name != "nt" else f'"{path}"'


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    for command in (chat_cmd, demo_cmd):
        group.add_command(command)
