"""Corrections by id: ``covip photo list|tag|untag|move`` and ``covip episode update`` (hidden alias ``edit``).

Photos and episodes are named by the ids ``covip history`` and ``covip photo list`` show (a photo also by
its file, matched by content, as in ``covip forget --photo``). Forgetting one episode is ``covip forget
--episode ID``, with the other forgets. Each command changes one user's memory in one transaction and says
what changed; ``--json`` prints the record instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from covip.sdk.cli.common import (
    CliState,
    echo_json,
    json_option,
    jsonable,
    pass_state,
    plural,
    read_text_arg,
    user_option,
)
from covip.sdk.cli.memory_cmds import find_episode, hidden_alias, photo_line

if TYPE_CHECKING:
    from covip.sdk.memory.types import PhotoTags

log = logging.getLogger(__name__)

__all__ = ["register"]


def _photo_ref(photo: str) -> Any:
    """A PHOTO argument: an id (digits that name no file here), else a photo file matched by content."""
    return int(photo) if photo.isdigit() and not Path(photo).exists() else photo


def _echo_tags(user: str, tags: PhotoTags, as_json: bool, unchanged: str) -> None:
    """Print what a tag, untag or move left on the photo."""
    if as_json:
        echo_json({"user": user, "photo": tags.photo, "concepts": tags.concepts, "changed": tags.changed,
                   "captions_dropped": tags.captions})
        return
    if not tags.changed:
        click.echo(unchanged)
        return
    click.echo(f"{photo_line(tags.photo)}\n    concepts now: {', '.join(tags.concepts) or '(none)'}"
               + (f" (dropped {plural(tags.captions, 'cached caption')})" if tags.captions else ""))


# ---------------------------------------------------------------------------------------------- photo
@click.group("photo")
def photo_group() -> None:
    """List a user's photos with their ids, and correct which concepts a photo shows.

    Tagging ties the photo and its dialogues to the concept (created as needed), so recall, history
    and sharing by concept follow; cached captions that used the photo are dropped. Vectors never
    change.

    \b
    Example:
      covip photo list --user ana
      covip photo move 12 --from Mina --to Bori --user ana
    """


@photo_group.command("list")
@user_option()
@json_option()
@pass_state
def photo_list_cmd(state: CliState, user: str, as_json: bool) -> None:
    """List the user's remembered photos, oldest first: id, original file name, concepts, when and where.

    \b
    Example:
      covip photo list --user ana
      covip photo list --user ana --json | jq '.photos[] | {id, original_name, concepts}'
    """
    mem = state.memory()
    rows = [(p, mem.photo_concepts(user, p.id)) for p in mem.photos(user)]
    if as_json:
        echo_json({"user": user, "photos": [{**jsonable(p), "concepts": c} for p, c in rows]})
        return
    if not rows:
        click.echo(f"no remembered photos for {user!r} yet; add some with `covip remember`")
    for p, concepts in rows:
        click.echo(f"{photo_line(p)}  [{', '.join(concepts)}]")


@photo_group.command("tag")
@click.argument("photo", metavar="PHOTO")
@click.argument("concept")
@user_option()
@json_option()
@pass_state
def photo_tag_cmd(state: CliState, photo: str, concept: str, user: str, as_json: bool) -> None:
    """Tag PHOTO (an id, or the photo file) with CONCEPT; created as needed.

    \b
    Example:
      covip photo tag 12 Bori --user ana
      covip photo tag ~/Pictures/beach.jpg Mina --user ana --json
    """
    tags = state.memory().tag_photo(user, _photo_ref(photo), concept)
    _echo_tags(user, tags, as_json, f"photo {tags.photo.id} was tagged {concept!r} already; nothing changed")


@photo_group.command("untag")
@click.argument("photo", metavar="PHOTO")
@click.argument("concept")
@user_option()
@json_option()
@pass_state
def photo_untag_cmd(state: CliState, photo: str, concept: str, user: str, as_json: bool) -> None:
    """Take CONCEPT off PHOTO (an id, or the photo file) and off its dialogues.

    The photo, its dialogues and its other concepts stay; the concept stays too (forget it with
    `covip forget --concept`).

    \b
    Example:
      covip photo untag 12 Mina --user ana
    """
    tags = state.memory().untag_photo(user, _photo_ref(photo), concept)
    _echo_tags(user, tags, as_json, "")


@photo_group.command("move")
@click.argument("photo", metavar="PHOTO")
@click.option("--from", "from_concept", required=True, metavar="NAME", help="The wrong concept.")
@click.option("--to", "to_concept", required=True, metavar="NAME", help="The right concept (created as needed).")
@user_option()
@json_option()
@pass_state
def photo_move_cmd(state: CliState, photo: str, from_concept: str, to_concept: str, user: str,
                   as_json: bool) -> None:
    """Move PHOTO and its dialogues from a wrong concept to the right one, in one step.

    \b
    Example:
      covip photo move 12 --from Mina --to Bori --user ana
    """
    tags = state.memory().move_photo(user, _photo_ref(photo), from_concept, to_concept)
    _echo_tags(user, tags, as_json, "")


# ---------------------------------------------------------------------------------------------- episode
@click.group("episode")
def episode_group() -> None:
    """Correct one remembered dialogue (an episode) by its id; `covip history` shows the ids.

    Forget one with `covip forget --episode ID`.

    \b
    Example:
      covip episode update 7 --user ana --place "Han river" --dialogue "User: Bori at the Han river."
    """


@episode_group.command("update")
@click.argument("episode_id", metavar="ID", type=int)
@user_option()
@click.option("--dialogue", "-d", metavar="TEXT|@FILE",
              help="The corrected dialogue: 'User: ... / Assistant: ...' lines (plain text is one user turn); "
                   "@FILE reads it from a file, @- from stdin.")
@click.option("--taken-at", metavar="ISO", help="When, e.g. 2024-05-01T14:30.")
@click.option("--no-taken-at", is_flag=True, help="Clear the time.")
@click.option("--place", metavar="TEXT", help="Where, e.g. 'Han river, Seoul'.")
@click.option("--no-place", is_flag=True, help="Clear the place.")
@json_option()
@pass_state
def episode_update_cmd(state: CliState, episode_id: int, user: str, dialogue: str | None, taken_at: str | None,
                       no_taken_at: bool, place: str | None, no_place: bool, as_json: bool) -> None:
    """Correct episode ID's dialogue, time or place; what is not given stays.

    The old text is scrubbed from the memory's files, and cached captions that used the photo are
    dropped. The photo's own time and place follow when they were written with this dialogue.

    \b
    Example:
      covip episode update 7 --user ana --dialogue @fixed.txt
      covip episode update 7 --user ana --taken-at 2024-05-01T14:30 --no-place
    """
    if taken_at is not None and no_taken_at:
        raise click.UsageError("give --taken-at or --no-taken-at, not both")
    if place is not None and no_place:
        raise click.UsageError("give --place or --no-place, not both")
    changes: dict[str, Any] = {}
    if dialogue is not None:
        changes["dialogue"] = read_text_arg(dialogue, "dialogue")
    if taken_at is not None or no_taken_at:
        changes["taken_at"] = taken_at
    if place is not None or no_place:
        changes["place"] = place
    if not changes:
        raise click.UsageError("give what to change: --dialogue, --taken-at/--no-taken-at or --place/--no-place")
    mem = state.memory()
    episode = mem.update_episode(user, episode_id, **changes)
    if as_json:
        echo_json({"user": user, "episode": episode})
        return
    item = find_episode(mem, user, episode.id)
    when = " ".join(x for x in (f"taken {episode.taken_at}" if episode.taken_at else "",
                                f"at {episode.place}" if episode.place else "") if x)
    click.echo(f"updated episode {episode.id} [{', '.join(episode.concepts)}]" + (f" {when}" if when else ""))
    click.echo(f"    {photo_line(item.photo)}")
    for turn in episode.dialogue:
        click.echo(f"    {turn.role.capitalize()}: {turn.text}")


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    episode_group.add_command(hidden_alias(episode_update_cmd, "edit"))
    for command in (photo_group, episode_group):
        group.add_command(command)
