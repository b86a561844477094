"""Personalized inference commands: caption, ask, chat, demo (``covip init --model`` lives in memory_cmds).

Each command opens the memory, checks its inputs (photo, user) before any model loads, then builds an
:class:`~covip.sdk.assistant.Assistant` around the memory with the model chosen by ``covip init --model``
(or ``--model``). Answers and captions go to stdout; notices and progress go to stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from covip.sdk._config import option_help
from covip.sdk.assistant import TINY_MAX_TOKENS
from covip.sdk.cag import CagConfig
from covip.sdk.cli.common import CliState, echo_json, is_interactive, json_option, pass_state, user_option
from covip.sdk.context import ContextConfig
from covip.sdk.errors import ConfigError, CovipError, InputError, NotFoundError

if TYPE_CHECKING:
    from covip.sdk.assistant import Assistant
    from covip.sdk.cag import Answer
    from covip.sdk.context import Context, ContextItem
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["register", "check_model_spec", "TINY_MAX_TOKENS"]

"""Random-weight models never stop on their own: without --max-tokens their output is capped at this."""

REAL_MODEL_HINT = "Qwen/Qwen3-VL-2B-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


# ---------------------------------------------------------------------------------------------- model specs
def _looks_like_path(spec: str) -> bool:
    """Whether a spec that does not exist was meant as a local path (not a hub id like Org/Name)."""
    return (spec.startswith(("/", ".", "~", "\\")) or spec.lower().endswith(".gguf") or "\\" in spec
            or spec.count("/") > 1 or (len(spec) > 1 and spec[1] == ":"))


def check_model_spec(spec: str) -> tuple[str, str, list[str]]:
    """Cheaply validate a model spec: (value to store, back end, notices). Raises InputError when unusable.

    'tiny' is fine; a local path must exist (a GGUF export needs its text GGUF, a HF directory its
    config.json) and is stored absolute; anything else shaped like ``Org/Name`` is taken as a hub id.
    """
    from covip.sdk.engines.factory import describe_model_spec

    spec = spec.strip()
    if not spec:
        raise InputError(f"--model is empty; give 'tiny', a hub id such as {REAL_MODEL_HINT}, a local model "
                         "directory, or an export directory with GGUF + mmproj files")
    backend = describe_model_spec(spec)
    if backend == "tiny":
        return spec, backend, ["the tiny model has random weights, so its answers are meaningless (tests and "
                               f"offline demos only; choose a real one with --model {REAL_MODEL_HINT})"]
    notes: list[str] = []
    path = Path(spec).expanduser()
    if path.exists():
        if backend == "llama.cpp":
            if path.is_dir():
                from covip.sdk.engines.factory import _gguf_pair

                pair = _gguf_pair(path)  # InputError when it holds only mmproj files
                if pair is not None and pair[1] is None:
                    raise InputError(f"{path} has a text GGUF but no mmproj GGUF (the vision projector), so "
                                     "the model could not see photos; export the mmproj file into it too")
            else:
                notes.append(f"a single GGUF file has no vision projector; give the export directory that holds "
                             f"{path.name} and its mmproj GGUF so the model can see photos")
            if importlib.util.find_spec("llama_cpp") is None:
                notes.append("the llama.cpp back end needs the Python package llama-cpp-python, which is not "
                             "installed: pip install llama-cpp-python")
        elif backend == "onnx":
            if importlib.util.find_spec("onnxruntime") is None:
                notes.append("the ONNX back end needs onnxruntime, which is not installed: "
                             "pip install 'covip[onnx]'")
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise InputError(f"{path} is neither a model directory written by save_pretrained (it has no "
                                 "config.json) nor a GGUF export directory (it has no .gguf files)")
        else:
            raise InputError(f"{path} is a file but not a .gguf model; give a model directory, a GGUF export "
                             f"directory, a hub id such as {REAL_MODEL_HINT}, or 'tiny'")
        return str(path.resolve()), backend, notes
    if _looks_like_path(spec):
        raise InputError(f"model path '{path}' does not exist; check the path (it is relative to {Path.cwd()}), "
                         f"or give a hub id such as {REAL_MODEL_HINT}")
    if not _HUB_ID.match(spec):
        raise InputError(f"'{spec}' is neither an existing path nor a hub id like {REAL_MODEL_HINT}")
    notes.append(f"{spec} is taken as a Hugging Face hub id: it is downloaded on first use unless it is "
                 "already in the local Hugging Face cache")
    return spec, backend, notes


def _model_label(spec: str) -> str:
    from covip.sdk.engines.factory import describe_model_spec

    return f"{spec} (back end: {describe_model_spec(spec)})"


# ---------------------------------------------------------------------------------------------- common options
@dataclass(frozen=True)
class InferenceOptions:
    """The model and context options every inference command takes."""

    model: str | None = None
    k: int | None = None
    floor: float | None = None
    budget: int | None = None
    max_tokens: int | None = None
    caption_only: bool = False
    quant: str | None = None

    def context_config(self) -> Any:
        from covip.sdk.context import ContextConfig

        base = ContextConfig()
        k = self.k if self.k is not None else base.k
        return dataclasses.replace(
            base, k=k, search_k=max(base.search_k, 4 * k),
            similarity_floor=base.similarity_floor if self.floor is None else self.floor,
            token_budget=base.token_budget if self.budget is None else self.budget)

    def cag_config(self) -> Any:
        from covip.sdk.cag import CagConfig

        config = CagConfig(caption_only=self.caption_only)
        if self.max_tokens is not None:
            _cap_tokens(config, self.max_tokens)
        return config


def _cap_tokens(config: Any, n: int) -> None:
    """Set the caption and answer passes' max_new_tokens to ``n``."""
    config.caption = dataclasses.replace(config.caption, max_new_tokens=n)
    config.answer = dataclasses.replace(config.answer, max_new_tokens=n)


_INFERENCE_OPTIONS: tuple[Callable[[Any], Any], ...] = (
    click.option("--model", "model", metavar="NAME|DIR",
                 help="Override the model chosen by `covip init --model`: 'tiny' (random weights), a hub id "
                      f"such as {REAL_MODEL_HINT}, a local HF model dir, or a GGUF + mmproj export dir."),
    click.option("-k", "--top", "k", type=click.IntRange(min=1), metavar="N",
                 help=option_help(ContextConfig, "k")),
    click.option("--floor", type=click.FloatRange(-1.0, 1.0), metavar="SIM",
                 help=option_help(ContextConfig, "similarity_floor")),
    click.option("--budget", type=click.IntRange(min=1), metavar="TOKENS",
                 help=option_help(ContextConfig, "token_budget")),
    click.option("--max-tokens", "max_tokens", type=click.IntRange(min=1), metavar="N",
                 help="Stop the caption and the answer after N generated tokens (default "
                      f"{CagConfig().caption.max_new_tokens} / {CagConfig().answer.max_new_tokens}; "
                      f"{TINY_MAX_TOKENS} with a random-weight model)."),
    click.option("--quant", metavar="QUANT",
                 help="For an export directory (covip export): which of its model files to open, e.g. q4_k_m or "
                      "q8_0 (GGUF), int8 or int4 (ONNX). Default: the one `covip init --quant` chose, else the "
                      "most faithful file."),
    click.option("--caption-only", is_flag=True,
                 help="For weak devices: memories carry a cached plain caption of their photo instead of the "
                      "image, so only the asked-about photo is encoded."),
)
_INFERENCE_KEYS = ("model", "k", "floor", "budget", "max_tokens", "caption_only", "quant")


def inference_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the common model/context options; the command receives them as ``opts: InferenceOptions``."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        opts = InferenceOptions(**{key: kwargs.pop(key) for key in _INFERENCE_KEYS})
        return func(*args, opts=opts, **kwargs)

    for option in reversed(_INFERENCE_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


# ---------------------------------------------------------------------------------------------- helpers
def _notice(text: str) -> None:
    click.echo(f"notice: {text}", err=True)


def _ensure_user(mem: Memory, user: str, create: bool = False) -> None:
    """Check the user exists (or add it when ``create``)."""
    if any(u.name == user for u in mem.users()):
        return
    if create:
        mem.add_user(user)
        click.echo(f"added user {user!r}", err=True)
        return
    raise NotFoundError(f"no user named {user!r} in this memory; add it with `covip user add {user}`")


def _check_photo(mem: Memory, photo: Path | str) -> Any:
    """Load the photo now so a bad path fails (exit 2) before any model loads."""
    from covip.sdk.imaging import load_photo

    return load_photo(photo, max_pixels=mem.config.max_pixels)


def _resolve_model(state: CliState, mem: Memory, override: str | None) -> str:
    """--model, else the home's config.json "model", else a clear error."""
    if override is not None:
        model, backend, notes = check_model_spec(override)
        for note in notes if backend != "tiny" else ():  # the tiny model's notice comes once it is built
            _notice(note)
        return model
    model = mem.settings.get("model")
    if isinstance(model, str) and model.strip():
        return model
    raise ConfigError(f"no model is chosen for the memory in {state.home_dir}; pass --model (e.g. --model "
                      f"{REAL_MODEL_HINT}, or --model tiny for an offline test) or store one with "
                      "`covip init --force --model NAME`")


def _limit_meaningless(assistant: Assistant, opts: InferenceOptions, *, say: Callable[[str], None]) -> None:
    """Say that a random-weight model's answers mean nothing (the Assistant caps their length unless
    --max-tokens asked for a length)."""
    if not getattr(assistant.engine, "meaningless", False):
        return
    capped = f"output capped at {TINY_MAX_TOKENS} tokens; " if opts.max_tokens is None else ""
    say(f"notice: model {assistant.engine.model_id} has random weights, so its answers are meaningless "
        f"({capped}choose a real model with --model {REAL_MODEL_HINT})")


def _open_assistant(state: CliState, mem: Memory, opts: InferenceOptions) -> Assistant:
    """Build the Assistant around the open memory (closed when the command ends)."""
    from covip.sdk.assistant import Assistant, AssistantConfig

    model = _resolve_model(state, mem, opts.model)
    quant = opts.quant or (mem.settings.get("quant") if opts.model is None else None)
    if quant is not None:
        check_quant(model, quant)
    config = AssistantConfig(home=mem.home, model=model, context=opts.context_config(), cag=opts.cag_config(),
                             meaningless_max_tokens=TINY_MAX_TOKENS if opts.max_tokens is None else None,
                             engine_options={"quant": quant} if quant is not None else {})
    state.embedder(mem)  # builds it; says once when its similarities are meaningless
    log.info("loading model %s", _model_label(model))
    assistant = Assistant(config, memory=mem)
    click.get_current_context().call_on_close(assistant.close)
    _limit_meaningless(assistant, opts, say=lambda s: click.echo(s, err=True))
    return assistant


def check_quant(model: str, quant: str) -> None:
    """A quant can only be picked in an export directory that has it; UsageError naming the choices."""
    from covip.sdk.export_manifest import has_manifest, read_manifest

    path = Path(model).expanduser()
    if not (path.is_dir() and has_manifest(path)):
        raise click.UsageError(f"--quant picks a file of an export directory (covip export gguf/onnx); {model!r} "
                               "is not one")
    manifest = read_manifest(path, verify="none")
    have = manifest.gguf_quants() if manifest.kind == "gguf" else sorted(
        {f.quant for f in manifest.files if f.kind == "onnx-decoder"})
    if quant not in have:
        raise click.UsageError(f"{model} has no {quant!r} model file; it has {', '.join(have)}")


def _snippet(text: str, width: int = 110) -> str:
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _echo_memories(context: Context) -> None:
    """The memories an answer or caption used: score, concepts, photo, a snippet of the dialogue."""
    if not context.items:
        reason = context.reason or "nothing in this user's memory was used"
        click.echo(f"memories used: none ({reason})")
        return
    click.echo(f"memories used ({len(context.items)}):")
    for n, item in enumerate(context.items, 1):
        click.echo(f"  {n}. {_item_head(item)}")
        click.echo(f"     photo {item.photo.id}: {item.photo.path or '(no stored file)'}")
        if item.dialogue:
            click.echo(f"     \"{_snippet(item.dialogue)}\"" + ("  [shortened to fit]" if item.trimmed else ""))


def _item_head(item: ContextItem) -> str:
    extra = []
    if item.shared:
        extra.append(f"shared by {item.photo.owner}")
    if item.photo.taken_at:
        extra.append(f"taken {item.photo.taken_at}")
    if item.photo.place:
        extra.append(f"at {item.photo.place}")
    return (f"score {item.score:.3f}  {', '.join(item.concepts) or '(no concepts)'}"
            + (f"  ({', '.join(extra)})" if extra else ""))


def _short_memories(context: Context) -> str:
    """One line: 'Bori 0.96 (photo 3), Mom 0.91 (photo 5)'."""
    if not context.items:
        return f"none ({context.reason})" if context.reason else "none"
    return ", ".join(f"{'/'.join(i.concepts) or 'photo'} {i.score:.2f} (photo {i.photo.id})" for i in context.items)


def _echo_stats(reply: Answer) -> None:
    t, k = reply.timings, reply.tokens
    parts = []
    if "caption_s" in t:
        parts.append(f"caption {t['caption_s']:.2f}s")
    parts.append(f"answer {t.get('answer_s', 0.0):.2f}s (prefill {t.get('answer_prefill_s', 0.0):.2f}s, "
                 f"decode {t.get('answer_decode_s', 0.0):.2f}s)")
    parts.append(f"total {t.get('total_s', 0.0):.2f}s")
    tokens = (f"answer prompt {k.get('answer_prompt', 0) + k.get('answer_cached', 0)} tokens "
              f"({k.get('answer_cached', 0)} reused from the KV cache), {k.get('answer_completion', 0)} generated")
    click.echo(f"time: {', '.join(parts)}; {tokens}")


def _stream_answer(assistant: Assistant, user: str, photo: Any, question: str, *, cag: bool,
                   prefix: str = "", history: Any = None) -> Answer:
    """Stream the answer's pieces to stdout as they are decoded; return the final Answer."""
    from covip.sdk.cag import Answer

    out = click.get_text_stream("stdout")
    if prefix:
        out.write(prefix)
    started = False
    for piece in assistant.ask_stream(user, photo, question, cag=cag, history=history):
        if isinstance(piece, Answer):
            out.write("\n")
            out.flush()
            return piece
        if not started:
            piece = piece.lstrip()  # the final answer text is stripped too
            started = bool(piece)
        out.write(piece)
        out.flush()
    raise CovipError("the engine stopped without an answer")  # pragma: no cover - ask_stream always ends with one


# ---------------------------------------------------------------------------------------------- caption
@click.command("caption")
@click.argument("photo", type=click.Path(path_type=Path))
@user_option()
@inference_options
@json_option()
@pass_state
def caption_cmd(state: CliState, photo: Path, user: str, as_json: bool, opts: InferenceOptions) -> None:
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
    """
    mem = state.memory()
    _ensure_user(mem, user)
    _check_photo(mem, photo)
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
@json_option()
@pass_state
def ask_cmd(state: CliState, photo: Path, question: str, user: str, no_cag: bool, stream: bool | None,
            as_json: bool, opts: InferenceOptions) -> None:
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
    assistant = _open_assistant(state, mem, opts)
    cag = not no_cag
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
    click.echo("")
    if reply.caption is None:
        click.echo("caption: none (--no-cag asks the model directly)")
    else:
        click.echo(f"caption ({'from the cache' if reply.caption_cached else 'generated'}): {reply.caption}")
    _echo_memories(reply.context)
    _echo_stats(reply)


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

    \b
    Example:
      covip demo                                   # offline, tiny models, meaningless answers
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
    model = "tiny"
    if opts.model is not None:
        model, backend, notes = check_model_spec(opts.model)
        for note in notes if backend != "tiny" else ():  # run_demo says itself when answers are meaningless
            _notice(note)
    if embedder_spec is None:
        embedder_spec = "tiny" if describe_model_spec(model) == "tiny" else DEFAULT_EMBEDDER
    emb_config = parse_embedder_spec(embedder_spec)
    ctx = click.get_current_context()
    group_home = None
    if ctx.parent is not None and ctx.parent.get_parameter_source("home") == ParameterSource.COMMANDLINE:
        group_home = state.home  # `covip --home DIR demo`; never $COVIP_HOME (that is the user's real memory)
    home, temporary = _demo_home(group_home, demo_home)
    click.echo(f"demo home: {home}" + (" (temporary, deleted at the end; --home DIR keeps it)" if temporary
                                      else ""), err=True)
    try:
        if not (home / SETTINGS_FILE).exists():  # so `covip --home DIR ask ...` works on it afterwards
            write_settings(home, {"embedder": {"model": emb_config.model, "pretrained": emb_config.pretrained},
                                  "model": model})
        config = AssistantConfig(home=home, model=model, embedder=embedder_spec, context=opts.context_config(),
                                 cag=opts.cag_config(),
                                 meaningless_max_tokens=TINY_MAX_TOKENS if opts.max_tokens is None else None)
        log.info("loading model %s", _model_label(model))
        with Assistant(config) as assistant:
            if getattr(assistant.engine, "meaningless", False) and opts.max_tokens is None:
                say(f"(random-weight model: output capped at {TINY_MAX_TOKENS} tokens; --max-tokens changes it)")
            result = run_demo(assistant, home / "demo-photos", say=say)
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


def _quote(path: Path) -> str:
    return shlex.quote(str(path)) if os.name != "nt" else f'"{path}"'


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    for command in (caption_cmd, ask_cmd, chat_cmd, demo_cmd):
        group.add_command(command)
