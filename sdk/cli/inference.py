"""What the inference commands share: model specs, the model/context options, opening the Assistant, and
printing answers, captions and the memories they used (also for answers from a running ``covip serve``)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from covip.sdk._config import option_help
from covip.sdk.assistant import TINY_MAX_TOKENS
from covip.sdk.cag import CagConfig
from covip.sdk.cli.common import CliState
from covip.sdk.context import ContextConfig
from covip.sdk.errors import ConfigError, CovipError, InputError, NotFoundError

if TYPE_CHECKING:
    from covip.sdk.assistant import Assistant
    from covip.sdk.cag import Answer
    from covip.sdk.context import Context
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["check_model_spec", "check_quant", "InferenceOptions", "inference_options", "echo_memory_dicts",
           "echo_stats", "TINY_MAX_TOKENS", "REAL_MODEL_HINT"]

REAL_MODEL_HINT = "Qwen/Qwen3-VL-2B-Instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


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


def _ensure_user(mem: Memory, user: str, create: bool | None = None) -> None:
    """Check the user exists (or add it when ``create``; None: the command has no --create-user)."""
    if any(u.name == user for u in mem.users()):
        return
    if create:
        mem.add_user(user)
        click.echo(f"added user {user!r}", err=True)
        return
    raise NotFoundError(f"no user named {user!r} in this memory; add it with `covip user add {user}`"
                        + (" or pass --create-user" if create is not None else ""))


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
    t0 = time.perf_counter()
    click.echo(f"loading model {_model_label(model)} ...", err=True)
    assistant = Assistant(config, memory=mem)
    click.echo(f"model ready in {time.perf_counter() - t0:.1f} s", err=True)
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
    echo_memory_dicts([item.to_dict() for item in context.items], context.reason)


def echo_memory_dicts(items: list[dict[str, Any]], reason: str | None) -> None:
    """:func:`_echo_memories` from the JSON form of the items (``ContextItem.to_dict()``; through a running
    ``covip serve`` the items carry no local path)."""
    if not items:
        reason = reason or "nothing in this user's memory was used"
        click.echo(f"memories used: none ({reason})")
        return
    click.echo(f"memories used ({len(items)}):")
    for n, item in enumerate(items, 1):
        click.echo(f"  {n}. {_item_head(item)}")
        where = item.get("path") or ("(served by covip serve)" if "photo_url" in item else "(no stored file)")
        click.echo(f"     photo {item['photo_id']}: {where}")
        if item.get("dialogue"):
            click.echo(f"     \"{_snippet(item['dialogue'])}\"" + ("  [shortened to fit]" if item.get("trimmed") else ""))


def _item_head(item: dict[str, Any]) -> str:
    extra = []
    if item.get("shared"):
        extra.append(f"shared by {item.get('owner')}")
    if item.get("taken_at"):
        extra.append(f"taken {item['taken_at']}")
    if item.get("place"):
        extra.append(f"at {item['place']}")
    return (f"score {item['score']:.3f}  {', '.join(item.get('concepts') or []) or '(no concepts)'}"
            + (f"  ({', '.join(extra)})" if extra else ""))


def _short_memories(context: Context) -> str:
    """One line: 'Bori 0.96 (photo 3), Mom 0.91 (photo 5)'."""
    if not context.items:
        return f"none ({context.reason})" if context.reason else "none"
    return ", ".join(f"{'/'.join(i.concepts) or 'photo'} {i.score:.2f} (photo {i.photo.id})" for i in context.items)


def echo_stats(timings: dict[str, float], tokens: dict[str, int]) -> None:
    """One line of timings and token counts of an answer."""
    t, k = timings, tokens
    parts = []
    if "caption_s" in t:
        parts.append(f"caption {t['caption_s']:.2f}s")
    parts.append(f"answer {t.get('answer_s', 0.0):.2f}s (prefill {t.get('answer_prefill_s', 0.0):.2f}s, "
                 f"decode {t.get('answer_decode_s', 0.0):.2f}s)")
    parts.append(f"total {t.get('total_s', 0.0):.2f}s")
    text = (f"answer prompt {k.get('answer_prompt', 0) + k.get('answer_cached', 0)} tokens "
            f"({k.get('answer_cached', 0)} reused from the KV cache), {k.get('answer_completion', 0)} generated")
    click.echo(f"time: {', '.join(parts)}; {text}")


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
