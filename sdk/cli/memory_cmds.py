"""Memory commands: init, remember, recall, history, forget (a photo, an episode, a concept or a user).

``covip search`` is a hidden alias of ``covip recall`` (the Python API's older name, see the README's "One
vocabulary"); :func:`hidden_alias` makes such aliases for the other command modules too.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from covip.sdk.cli.common import (
    CliState,
    echo_json,
    init_key,
    is_interactive,
    json_option,
    pass_state,
    plural,
    read_text_arg,
    user_option,
)
from covip.sdk.cli.inference import _ensure_user
from covip.sdk.cli.remote import MAX_UPLOAD_BYTES, find_server, local_option
from covip.sdk.config import DEFAULT_EMBEDDER, SETTINGS_FILE
from covip.sdk.errors import ConfigError, ConflictError, ImageError, InputError, NotFoundError
from covip.sdk.memory.validate import MAX_K

if TYPE_CHECKING:
    from covip.sdk.memory import Memory
    from covip.sdk.memory.types import Episode, PhotoRecord

log = logging.getLogger(__name__)

__all__ = ["register", "hidden_alias", "photo_line"]


def hidden_alias(command: click.Command, name: str) -> click.Command:
    """``command`` under another name that works but is left out of `covip --help` (another spelling of it)."""
    alias = copy.copy(command)
    alias.name = name
    alias.hidden = True
    alias.help = f"Alias of `covip {command.name}`. {command.help or ''}"
    return alias


# ---------------------------------------------------------------------------------------------- init
@click.command("init")
@click.option("--embedder", "spec", default=DEFAULT_EMBEDDER, show_default=True, metavar="MODEL[/PRETRAINED]",
              help="Image embedding model: 'tiny' (random weights, tests/offline only), an open_clip model "
                   "such as 'ViT-B-32', or model/pretrained-tag such as 'ViT-B-32/laion2b_s34b_b79k'.")
@click.option("--pretrained", metavar="PATH_OR_TAG",
              help="open_clip pretrained tag, or a local weights file (stored as an absolute path); "
                   "overrides the tag in --embedder.")
@click.option("--model", "model", metavar="NAME|DIR",
              help="The vision-language model `ask`, `caption` and `chat` use: a hub id such as "
                   "Qwen/Qwen3-VL-2B-Instruct, a local HF model dir, an export dir with GGUF + mmproj files "
                   "(llama.cpp), or 'tiny' (random weights, tests/offline only). With --force and no --model, "
                   "the current one is kept.")
@click.option("--quant", metavar="QUANT",
              help="With an export directory as --model: the model file `ask`, `chat` and `serve` open by default "
                   "(e.g. q4_k_m, q8_0; int8, int4 for ONNX).")
@click.option("--force", is_flag=True, help="Overwrite an existing config.json (the memory itself is kept; "
              "without --embedder the current embedder is kept).")
@click.option("--encrypt", is_flag=True,
              help="Encrypt the new memory at rest (database, photos, vectors, index, caption cache) with a "
                   "passphrase from $COVIP_PASSPHRASE, else asked twice on the terminal. Every later command "
                   "needs it ($COVIP_PASSPHRASE, the OS keyring, or asked). Needs pip install 'covip[encrypt]'.")
@click.option("--keyring", "use_keyring", is_flag=True,
              help="Keep the passphrase in the OS keyring, so later commands unlock the memory without asking.")
@pass_state
def init_cmd(state: CliState, spec: str, pretrained: str | None, model: str | None, quant: str | None, force: bool,
             encrypt: bool, use_keyring: bool) -> None:
    """Create a memory home and choose its embedding model and its vision-language model.

    Writes config.json in the home (which embedder `remember` and `recall` use, which model `ask`,
    `caption` and `chat` use) and creates the empty memory. An existing config is only replaced
    with --force; remembered photos are kept, but photos embedded with a different model are not
    found by `recall` until remembered again.

    \b
    Example:
      covip --home ~/covip init --embedder ViT-B-32/laion2b_s34b_b79k --model Qwen/Qwen3-VL-2B-Instruct
      covip init --embedder tiny --model tiny     # random weights: for tests and offline demos
      covip init --force --model ./export/qwen3-vl-2b-gguf   # switch the model, keep the embedder
      covip init --encrypt --keyring --embedder ViT-B-32/laion2b_s34b_b79k   # encrypted at rest
    """
    from click.core import ParameterSource

    from covip.sdk.config import read_settings, write_settings
    from covip.sdk.memory.crypto import is_encrypted_home, keyring_set
    from covip.sdk.vision import parse_embedder_spec

    home = state.home_dir
    config = parse_embedder_spec(spec)
    model_notes: list[str] = []
    backend = None
    if model is not None:
        from covip.sdk.cli.inference import check_model_spec

        model, backend, model_notes = check_model_spec(model)  # before anything is written
    if quant is not None:
        from covip.sdk.cli.inference import check_quant

        if model is None:
            raise click.UsageError("--quant chooses a file of the export directory given with --model; add --model")
        check_quant(model, quant)
    if pretrained is not None:
        local = Path(pretrained).expanduser()
        config = config.with_overrides(pretrained=str(local.resolve()) if local.exists() else pretrained)
    settings: dict[str, Any] = {}
    if (home / SETTINGS_FILE).exists():
        if not force:
            raise ConflictError(f"{home / SETTINGS_FILE} already exists; pass --force to overwrite it "
                                "(remembered photos are kept)")
        try:
            settings = read_settings(home)
        except ConfigError as exc:
            log.warning("replacing an unreadable config: %s", exc)
    key = init_key(home, encrypt)  # asked and checked before anything is written
    if use_keyring and not (encrypt or is_encrypted_home(home)):
        raise click.UsageError("--keyring keeps the passphrase of an encrypted memory; add --encrypt")
    previous = settings.get("embedder")
    keep = (previous is not None and pretrained is None
            and click.get_current_context().get_parameter_source("spec") is ParameterSource.DEFAULT)
    if keep and isinstance(previous, dict):  # `init --force --model X` switches only the model
        config = dataclasses.replace(config, model=previous.get("model", config.model),
                                     pretrained=previous.get("pretrained"))
    settings["embedder"] = {"model": config.model, "pretrained": config.pretrained}
    if model is not None:
        settings["model"] = model
        settings.pop("quant", None)  # a quant belongs to the model it was chosen for
    if quant is not None:
        settings["quant"] = quant
    write_settings(home, settings)
    mem = state.memory(create=True, key=key)
    label = config.model + (f"/{config.pretrained}" if config.pretrained else "")
    click.echo(f"initialized covip memory in {home} (embedder: {label})")
    if mem.encrypted:
        if use_keyring:
            keyring_set(mem.crypto)
        click.echo("encrypted at rest: keep the passphrase and keyfile.json safe, without either the memory cannot "
                   "be read" + (" (passphrase stored in the OS keyring)" if use_keyring else ""), err=True)
    if model is not None:
        click.echo(f"model: {model} (back end: {backend}" + (f", {quant}" if quant else "") + ")")
    elif settings.get("model"):
        click.echo(f"model: {settings['model']} (kept)")
    else:
        click.echo("note: no model chosen yet; `ask`, `caption` and `chat` need one: add --model (e.g. "
                   "`covip init --force --model Qwen/Qwen3-VL-2B-Instruct`) or pass --model to them", err=True)
    for note in model_notes:
        click.echo(f"notice: {note}", err=True)
    if config.is_tiny:
        click.echo("notice: the tiny embedder has random weights, so similarity scores are meaningless "
                   "(tests and offline demos only)", err=True)
    if previous is not None and previous != settings["embedder"]:
        n = sum(len(mem.photos(u.name)) for u in mem.users())
        if n:
            click.echo(f"note: {plural(n, 'photo')} were embedded with the previous embedder {previous}; "
                       "recall searches only the current one's vectors, so remember them again", err=True)


# ---------------------------------------------------------------------------------------------- remember
def _photo_files(args: tuple[Path, ...], recursive: bool) -> list[Path]:
    """Expand PHOTO arguments (files and directories of images) into a de-duplicated file list."""
    from PIL import Image

    suffixes = {s.lower() for s in Image.registered_extensions()}
    out: list[Path] = []
    seen: set[Path] = set()
    for arg in args:
        path = arg.expanduser()
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise InputError(f"directory {path} holds no image files"
                                 + ("" if recursive else " (add --recursive to look in its subfolders)"))
            files = found
        elif path.exists():
            files = [path]
        else:
            raise InputError(f"photo file '{path}' does not exist; check the path")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


@click.command("remember")
@click.argument("photos", metavar="PHOTO...", nargs=-1, required=True, type=click.Path(path_type=Path))
@user_option()
@click.option("--concept", "-c", "concepts", multiple=True, required=True, metavar="NAME",
              help="A person, pet, object or place in the photo; repeat for several (created as needed).")
@click.option("--dialogue", "-d", required=True, metavar="TEXT|@FILE",
              help="The conversation about the photo: 'User: ... / Assistant: ...' lines (plain text is one "
                   "user turn); @FILE reads it from a file, @- from stdin.")
@click.option("--taken-at", metavar="ISO", help="When the photo was taken, e.g. 2024-05-01T14:30 "
              "(default: its EXIF date, if any).")
@click.option("--place", metavar="TEXT", help="Where the photo was taken, e.g. 'Han river, Seoul'.")
@click.option("--create-user", is_flag=True, help="Add the user first if it does not exist yet.")
@click.option("--recursive", "-r", is_flag=True, help="Also take images from subfolders of a directory.")
@local_option()
@pass_state
def remember_cmd(state: CliState, photos: tuple[Path, ...], user: str, concepts: tuple[str, ...], dialogue: str,
                 taken_at: str | None, place: str | None, create_user: bool, recursive: bool, local: bool) -> None:
    """Remember photos with the dialogue about them, tied to named concepts.

    Each photo is stored (a copy under the home), embedded and tied to the concepts and the
    dialogue. PHOTO may be several files or a directory (a progress bar shows on stderr). Photos
    that cannot be read are reported and skipped; the exit code is then 2.

    \b
    Example:
      covip remember bori.jpg --user ana --concept Bori --place "Han river" --dialogue "This is my dog Bori."
      covip remember ~/Pictures/trip --user ana -c Bori -c Mina --dialogue @trip.txt

    When `covip serve` runs for this memory, it embeds the photos (no image model to load here).
    """
    from covip.sdk.progress import progress_bar

    files = _photo_files(photos, recursive)
    text = read_text_arg(dialogue, "dialogue")
    mem = state.memory()
    _ensure_user(mem, user, create_user)
    remote = None if local else find_server(mem.home)
    bulk = len(files) > 1
    new = episodes = 0
    failed: list[str] = []
    with progress_bar(files, unit="photo", desc="remembering", enabled=bulk, leave=False) as bar:
        for path in bar:
            try:
                done = mem.remember(user, path, text, concepts=list(concepts), taken_at=taken_at, place=place,
                                    **_served_embedding(remote, path))
            except ImageError as exc:
                if not bulk:
                    raise
                failed.append(str(path))
                bar.write(f"error: skipped {path}: {exc}", file=sys.stderr)
                continue
            new += done.new_photo
            episodes += done.episode is not None
            log.info("remembered %s as photo %d", path, done.photo.id)
            if not bulk:
                state_word = "new photo" if done.new_photo else "known photo, new dialogue"
                click.echo(f"remembered photo {done.photo.id} for {user!r} ({state_word}): "
                           f"{', '.join(done.episode.concepts if done.episode else concepts)}")
    if len(failed) < len(files) and remote is None:
        state.embedder(mem)  # built by now; only says whether its similarities mean anything
    if bulk:
        ok = len(files) - len(failed)
        click.echo(f"remembered {plural(ok, 'photo')} for {user!r} ({new} new, {ok - new} already known), "
                   f"{plural(episodes, 'dialogue')}")
    if failed:
        raise InputError(f"{len(failed)} of {len(files)} photos could not be read and were skipped: "
                         + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else ""))


def _served_embedding(remote: Any, path: Path) -> dict[str, Any]:
    """``embedding``/``model_id`` for Memory.remember/recall from a running server (empty: embed here)."""
    if remote is None or path.stat().st_size > MAX_UPLOAD_BYTES:
        return {}
    doc = remote.embed(path)
    return {"embedding": doc["embedding"], "model_id": doc["model_id"]}


# ---------------------------------------------------------------------------------------------- recall
def _when_where(taken_at: str | None, place: str | None) -> str:
    """'taken 2024-05-01T14:30:00 at Han river' (parts omitted when unknown)."""
    parts = []
    if taken_at:
        parts.append(f"taken {taken_at}")
    if place:
        parts.append(f"at {place}")
    return " ".join(parts)


def _echo_episode(ep: Episode, indent: str = "    ") -> None:
    """Print one dialogue, one indented line per turn."""
    for turn in ep.dialogue:
        lines = turn.text.splitlines() or [""]
        click.echo(f"{indent}{turn.role.capitalize()}: {lines[0]}")
        for line in lines[1:]:
            click.echo(f"{indent}  {line}")


def photo_line(photo: PhotoRecord) -> str:
    """'photo 3 "bori.jpg": /path/to/file.png (taken ... at ...)' (the name it was remembered from, if any)."""
    extra = _when_where(photo.taken_at, photo.place)
    name = f' "{photo.original_name}"' if photo.original_name else ""
    return f"photo {photo.id}{name}: {photo.path or '(no stored file)'}" + (f" ({extra})" if extra else "")


@click.command("recall")
@click.argument("photo", type=click.Path(path_type=Path))
@user_option()
@click.option("-k", "--top", "k", type=click.IntRange(min=1, max=MAX_K), default=5, show_default=True,
              help=f"How many remembered photos to return (at most {MAX_K}).")
@local_option()
@json_option()
@pass_state
def recall_cmd(state: CliState, photo: Path, user: str, k: int, as_json: bool, local: bool) -> None:
    """Find the remembered photos most similar to PHOTO, with their concepts and dialogues.

    Searches only this user's memory (plus concepts other users shared with them). Each hit shows
    the similarity score, the concepts in the photo, its id and the file name it was remembered
    from, where its copy is stored, when and where it was taken, and the dialogues about it.

    \b
    Example:
      covip recall new.jpg --user ana -k 3
      covip recall new.jpg --user ana --json | jq '.hits[0].concepts'
    """
    from covip.sdk.imaging import load_photo

    mem = state.memory()
    _ensure_user(mem, user, create=None)
    query = load_photo(photo, max_pixels=mem.config.max_pixels)  # bad input fails before the model loads
    remote = None if local else find_server(mem.home, photo)
    if remote is not None:  # the running server embeds the photo; the search runs here, on this memory
        doc = remote.embed(photo)
        hits = mem.recall(user, embedding=doc["embedding"], model_id=doc["model_id"], k=k)
        embedder = {"model_id": doc["model_id"], "meaningless": doc["meaningless"]}
    else:
        emb = state.embedder(mem)
        hits = mem.recall(user, image=query, k=k)
        embedder = {"model_id": emb.model_id, "meaningless": bool(getattr(emb, "meaningless", False))}
    if as_json:
        echo_json({"user": user, "query": str(photo), "k": k, "embedder": embedder, "hits": hits})
        return
    if not hits:
        click.echo(f"no remembered photos for {user!r} yet; add some with `covip remember`")
        return
    for n, hit in enumerate(hits, 1):
        shared = "  [shared]" if hit.shared else ""
        click.echo(f"{n}. score {hit.score:.3f}  {', '.join(hit.concepts) or '(no concepts)'}{shared}")
        click.echo(f"   {photo_line(hit.photo)}")
        for ep in hit.episodes:
            _echo_episode(ep, indent="     ")


# ---------------------------------------------------------------------------------------------- history
@click.command("history")
@user_option()
@click.option("--concept", "-c", metavar="NAME", help="Only the dialogues tied to this concept.")
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Show at most this many (newest first).")
@json_option()
@pass_state
def history_cmd(state: CliState, user: str, concept: str | None, limit: int | None, as_json: bool) -> None:
    """List the user's remembered dialogues, newest first, with the photo each is about.

    Ordered by when the photo was taken (else when it was remembered). --concept narrows the list
    to one person, pet, object or place. Each dialogue shows its episode id and its photo's id and
    original file name: `covip episode update`, `covip forget --episode` and `covip photo tag|untag|move`
    take those ids.

    \b
    Example:
      covip history --user ana --concept Bori --limit 10
      covip history --user ana --json | jq '.items[].episode.dialogue'
    """
    mem = state.memory()
    items = mem.history(user, concept, limit=limit)
    if as_json:
        echo_json({"user": user, "concept": concept, "items": items})
        return
    if not items:
        click.echo(f"no dialogues for {user!r}" + (f" about {concept!r}" if concept else ""))
        return
    for item in items:
        ep = item.episode
        when = _when_where(ep.taken_at, ep.place) or f"remembered {ep.created_at}"
        click.echo(f"{when}  [{', '.join(ep.concepts)}]  episode {ep.id}")
        click.echo(f"    {photo_line(item.photo)}")
        _echo_episode(ep)


# ---------------------------------------------------------------------------------------------- forget
def find_episode(mem: Memory, user: str, episode_id: int) -> Any:
    """The user's history item of episode ``episode_id`` (NotFoundError naming where the ids are listed)."""
    from covip.sdk.memory.validate import clean_id

    episode_id = clean_id(episode_id, "episode id")
    for item in mem.history(user):
        if item.episode.id == episode_id and item.photo.owner == user:
            return item
    raise NotFoundError(f"user {user!r} has no episode {episode_id}; `covip history --user {user}` lists them "
                        "with their ids")


def _forget_target(mem: Memory, user: str, photo: str | None, concept: str | None,
                   episode: int | None) -> tuple[str, Any]:
    """Describe what will be forgotten (for the prompt) and resolve a --photo to its record."""
    if episode is not None:
        item = find_episode(mem, user, episode)
        first = item.episode.text.splitlines()[0][:60] if item.episode.text else ""
        return f"episode {episode} of user {user!r} ({first!r}; photo {item.photo.id} stays)", None
    if photo is not None:
        ref: Any = int(photo) if photo.isdigit() and not Path(photo).exists() else photo
        record = mem.find_photo(user, ref)
        return f"photo {record.id} ({record.path}) of user {user!r} with its dialogues", record.id
    if concept is not None:
        match = [c for c in mem.concepts(user) if c.user == user and c.name.casefold() == concept.casefold()]
        if not match:
            raise NotFoundError(f"user {user!r} has no concept named {concept!r}; list them with "
                                f"`covip concepts --user {user}`")
        return f"concept {match[0].name!r} of user {user!r} and its {plural(match[0].photo_count, 'photo')}", None
    n = len(mem.photos(user))
    return f"ALL of user {user!r}'s memory ({plural(n, 'photo')}) and the user itself", None


@click.command("forget")
@user_option()
@click.option("--photo", metavar="PATH|ID", help="Forget one photo: its file (matched by content) or its id.")
@click.option("--episode", type=int, metavar="ID",
              help="Forget one dialogue episode by its id (`covip history` shows them); its photo stays.")
@click.option("--concept", "-c", metavar="NAME", help="Forget a concept, every photo showing it and its dialogues.")
@click.option("--all", "everything", is_flag=True, help="Forget the whole user and everything they remembered.")
@click.option("--keep-shared-photos", is_flag=True,
              help="With --concept: keep photos that also show other concepts (drop only this concept's links).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when not on a terminal).")
@json_option()
@pass_state
def forget_cmd(state: CliState, user: str, photo: str | None, episode: int | None, concept: str | None,
               everything: bool, keep_shared_photos: bool, yes: bool, as_json: bool) -> None:
    """Forget a photo, one dialogue episode, a concept, or a whole user, for good.

    Removes the rows, vectors, cached captions and stored files, and scrubs the database so the
    forgotten data cannot be read back. Asks for confirmation on a terminal; elsewhere --yes is
    required.

    \b
    Example:
      covip forget --user ana --photo bori.jpg
      covip forget --user ana --episode 12 --yes
      covip forget --user ana --concept Bori
      covip forget --user ana --all --yes
    """
    if sum(x is not None and x is not False for x in (photo, episode, concept, everything)) != 1:
        raise click.UsageError("give exactly one of --photo, --episode, --concept or --all")
    if keep_shared_photos and concept is None:
        raise click.UsageError("--keep-shared-photos only goes with --concept")
    mem = state.memory()
    what, photo_id = _forget_target(mem, user, photo, concept, episode)
    if not yes:
        if not is_interactive():
            raise InputError(f"refusing to forget {what} without confirmation; pass --yes")
        click.confirm(f"Forget {what}? This cannot be undone", abort=True, err=True)
    if episode is not None:
        report = mem.forget_episode(user, episode)
    elif photo_id is not None:
        report = mem.forget_photo(user, photo_id)
    elif concept is not None:
        report = mem.forget_concept(user, concept, keep_shared_photos=keep_shared_photos)
    else:
        report = mem.forget_user(user)
    if as_json:
        echo_json({"user": user, "forgot": report})
        return
    click.echo(f"forgot {plural(report.photos, 'photo')}, {plural(report.episodes, 'dialogue')}, "
               f"{plural(report.concepts, 'concept')}, {plural(report.vectors, 'vector')}, "
               f"{plural(report.captions, 'cached caption')}, {plural(report.files, 'file')}"
               + (f" and user {user!r}" if report.users else ""))
    if not report.scrubbed:
        click.echo("note: another process is reading this memory, so the database log could not be scrubbed "
                   "yet; it is at the next checkpoint", err=True)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    for command in (init_cmd, remember_cmd, recall_cmd, history_cmd, forget_cmd):  # help lists them in this order
        group.add_command(command)
    group.add_command(hidden_alias(recall_cmd, "search"))
