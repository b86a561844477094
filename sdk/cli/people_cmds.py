"""Users and concepts: user add/list, concepts, concept add/update/rename/merge/share/unshare."""

from __future__ import annotations

import logging

import click

from covip.sdk.cli.common import CliState, echo_json, json_option, pass_state, plural, user_option
from covip.sdk.memory.types import CONCEPT_KINDS

log = logging.getLogger(__name__)

__all__ = ["register"]


# ---------------------------------------------------------------------------------------------- users
@click.group("user")
def user_group() -> None:
    """Add and list users: each user has a separate, isolated memory.

    \b
    Example:
      covip user add ana
      covip user list --json
    """


@user_group.command("add")
@click.argument("name")
@pass_state
def user_add_cmd(state: CliState, name: str) -> None:
    """Add a user (the owner of a separate memory); fails if the name is taken.

    \b
    Example:
      covip user add ana
    """
    user = state.memory().add_user(name)
    click.echo(f"added user {user.name!r}")


@user_group.command("list")
@json_option()
@pass_state
def user_list_cmd(state: CliState, as_json: bool) -> None:
    """List the users in this memory, oldest first, with how many photos each remembers.

    \b
    Example:
      covip user list
    """
    mem = state.memory()
    rows = [(u, len(mem.photos(u.name))) for u in mem.users()]
    if as_json:
        echo_json({"users": [{"id": u.id, "name": u.name, "created_at": u.created_at, "photos": n}
                             for u, n in rows]})
        return
    if not rows:
        click.echo("no users yet; add one with `covip user add NAME`")
    for u, n in rows:
        click.echo(f"{u.name}\t{plural(n, 'photo')}\tsince {u.created_at}")


# ---------------------------------------------------------------------------------------------- concepts
@click.command("concepts")
@user_option()
@json_option()
@pass_state
def concepts_cmd(state: CliState, user: str, as_json: bool) -> None:
    """List a user's concepts (people, pets, objects, places), including ones shared with them.

    \b
    Example:
      covip concepts --user ana
      covip concepts --user ana --json | jq -r '.concepts[].name'
    """
    concepts = state.memory().concepts(user)
    if as_json:
        echo_json({"user": user, "concepts": concepts})
        return
    if not concepts:
        click.echo(f"{user!r} has no concepts yet; `covip remember ... --concept NAME` creates them")
    for c in concepts:
        owner = "" if c.user == user else f"  (shared by {c.user})"
        notes = f"  {c.notes}" if c.notes else ""
        click.echo(f"{c.name}\t{c.kind}\t{plural(c.photo_count, 'photo')}{owner}{notes}")


@click.group("concept")
def concept_group() -> None:
    """Add, change, rename, merge and share a user's concepts.

    A photo filed under the wrong concept is moved with `covip photo move`.

    \b
    Example:
      covip concept add --user ana Bori --kind pet --notes "my corgi"
      covip concept update --user ana Bori --notes "my corgi, 3 years old"
      covip concept merge --user ana Boribori --into Bori
    """


@concept_group.command("add")
@user_option()
@click.argument("name")
@click.option("--kind", type=click.Choice(CONCEPT_KINDS), default="other", show_default=True,
              help="What the concept is.")
@click.option("--notes", default="", help="Free text about the concept (e.g. 'my corgi, 3 years old').")
@pass_state
def concept_add_cmd(state: CliState, user: str, name: str, kind: str, notes: str) -> None:
    """Create a named concept for a user before any photo of it is remembered.

    \b
    Example:
      covip concept add --user ana Bori --kind pet --notes "my corgi"
    """
    c = state.memory().add_concept(user, name, kind=kind, notes=notes)
    click.echo(f"added concept {c.name!r} ({c.kind}) for {user!r}")


@concept_group.command("update")
@user_option()
@click.argument("name")
@click.option("--kind", type=click.Choice(CONCEPT_KINDS), help="What the concept is.")
@click.option("--notes", help="New free text about the concept (replaces the old notes; '' clears them).")
@json_option()
@pass_state
def concept_update_cmd(state: CliState, user: str, name: str, kind: str | None, notes: str | None,
                       as_json: bool) -> None:
    """Change a concept's kind or notes; cached captions that used its photos are dropped.

    \b
    Example:
      covip concept update --user ana Bori --kind pet --notes "my corgi, 3 years old"
    """
    if kind is None and notes is None:
        raise click.UsageError("give --kind, --notes or both")
    c = state.memory().update_concept(user, name, kind=kind, notes=notes)
    if as_json:
        echo_json({"user": user, "concept": c})
        return
    click.echo(f"updated concept {c.name!r} ({c.kind})" + (f": {c.notes}" if c.notes else ""))


@concept_group.command("rename")
@user_option()
@click.argument("old")
@click.argument("new")
@pass_state
def concept_rename_cmd(state: CliState, user: str, old: str, new: str) -> None:
    """Rename a concept (its photos and dialogues follow); fails if NEW exists - merge instead.

    \b
    Example:
      covip concept rename --user ana Bory Bori
    """
    c = state.memory().rename_concept(user, old, new)
    click.echo(f"renamed concept {old!r} to {c.name!r}")


@concept_group.command("merge")
@user_option()
@click.argument("sources", nargs=-1, required=True)
@click.option("--into", "target", required=True, metavar="NAME", help="The concept that absorbs the others.")
@pass_state
def concept_merge_cmd(state: CliState, user: str, sources: tuple[str, ...], target: str) -> None:
    """Fold SOURCES into one concept: their photos, dialogues and shares move; the sources disappear.

    \b
    Example:
      covip concept merge --user ana Boribori "Bori dog" --into Bori
    """
    c = state.memory().merge_concepts(user, list(sources), target)
    click.echo(f"merged {', '.join(repr(s) for s in sources)} into {c.name!r} ({plural(c.photo_count, 'photo')})")


@concept_group.command("share")
@user_option()
@click.argument("name")
@click.option("--with", "with_user", required=True, metavar="USER", help="Who may see this concept.")
@pass_state
def concept_share_cmd(state: CliState, user: str, name: str, with_user: str) -> None:
    """Let another user recall this concept's photos and the dialogues tied to it (nothing else).

    \b
    Example:
      covip concept share --user ana Bori --with minho
    """
    state.memory().share_concept(user, name, with_user)
    click.echo(f"shared {user!r}'s concept {name!r} with {with_user!r}")


@concept_group.command("unshare")
@user_option()
@click.argument("name")
@click.option("--with", "with_user", required=True, metavar="USER", help="Who should no longer see it.")
@pass_state
def concept_unshare_cmd(state: CliState, user: str, name: str, with_user: str) -> None:
    """Stop sharing a concept with another user.

    \b
    Example:
      covip concept unshare --user ana Bori --with minho
    """
    state.memory().unshare_concept(user, name, with_user)
    click.echo(f"stopped sharing {user!r}'s concept {name!r} with {with_user!r}")


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    for command in (user_group, concepts_cmd, concept_group):
        group.add_command(command)
