"""Moving and checking a memory: export-memory, import-memory (hidden aliases: the Python API's older names
export-user and import-bundle), verify."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from covip.sdk.cli.common import (
    CliState,
    echo_json,
    is_interactive,
    json_option,
    pass_state,
    plural,
    user_option,
)
from covip.sdk.errors import ConflictError, MissingKeyError

log = logging.getLogger(__name__)

__all__ = ["register"]


@click.command("export-memory")
@user_option()
@click.argument("out", metavar="OUT.zip", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite OUT.zip if it exists.")
@click.option("--plain", is_flag=True, help="From an encrypted memory, write an unencrypted zip (by default its "
              "bundles are encrypted with its passphrase; a plain one can be read by whoever holds the file).")
@pass_state
def export_cmd(state: CliState, user: str, out: Path, force: bool, plain: bool) -> None:
    """Write one user's whole memory to a portable zip bundle.

    The bundle holds the concepts, photos (their bytes and original file names), dialogues and
    embedding vectors, with checksums; `covip import-memory` loads it on another device. Shares,
    cached captions and the photos' original paths are not exported. The file is written atomically, outside the home.

    \b
    Example:
      covip export-memory --user ana ana-2024-05.zip
    """
    from covip.sdk.memory.bundle import refuse_inside_home

    out = out.expanduser()
    mem = state.memory()
    refuse_inside_home(mem.home, out, "write the bundle to")  # before --force: never offer to replace memory.db
    if out.exists() and not force:
        raise ConflictError(f"{out} already exists; pass --force to overwrite it")
    n = len(mem.photos(user))
    path = mem.export_memory(user, out, plain=plain)
    sealed = " (encrypted with this memory's passphrase)" if mem.encrypted and not plain else ""
    click.echo(f"exported user {user!r} ({plural(n, 'photo')}) to {path}{sealed}")


@click.command("import-memory")
@click.argument("bundle", metavar="BUNDLE.zip", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--user", "-u", "user", metavar="NAME",
              help="Import as this user (default: the user named in the bundle).")
@click.option("--merge", is_flag=True, help="Add into an existing user instead of refusing.")
@json_option()
@pass_state
def import_cmd(state: CliState, bundle: Path, user: str | None, merge: bool, as_json: bool) -> None:
    """Load a bundle written by `covip export-memory` into this memory.

    The whole bundle is checked before anything is written (format, versions, checksums, sizes,
    every row with the same rules as `remember`, vectors, images) and the import is one
    transaction. Photos come only from the bundle itself: a photo it does not carry refuses the
    bundle, and no path written in it is ever opened. An existing user is only added to with
    --merge; photos already remembered are not duplicated.

    \b
    Example:
      covip import-memory ana-2024-05.zip
      covip import-memory ana-2024-05.zip --user ana-old --merge
    """
    mem = state.memory()
    try:
        counts = mem.import_memory(bundle, user=user, merge=merge)
    except MissingKeyError:  # an encrypted bundle and no passphrase in the environment or this memory
        if not is_interactive():
            raise
        key = click.prompt(f"passphrase of the encrypted bundle {bundle}", hide_input=True, err=True)
        counts = mem.import_memory(bundle, user=user, merge=merge, key=key)
    if as_json:
        echo_json({"bundle": str(bundle), "imported": counts})
        return
    click.echo(f"imported into user {counts['user']!r}: {plural(counts['photos'], 'new photo')}, "
               f"{plural(counts['episodes'], 'dialogue')}, {plural(counts['concepts'], 'new concept')}, "
               f"{plural(counts['vectors'], 'vector')}")


@click.command("verify")
@click.option("--repair", is_flag=True,
              help="Rebuild what is derived from SQLite (indexes, unusable stored vectors), move photo files that "
                   "belong to no memory to quarantine/, make the home private, then check again.")
@click.option("--quick", is_flag=True, help="Skip re-hashing the stored photo files.")
@click.option("--start-fresh", is_flag=True,
              help="Only when memory.db is missing, empty or damaged: move what the home still holds (photos, "
                   "index files, the old database) to quarantine/<time>/ and start a new, empty memory. "
                   "Nothing is deleted.")
@json_option()
@pass_state
@click.pass_context
def verify_cmd(ctx: click.Context, state: CliState, repair: bool, quick: bool, start_fresh: bool,
               as_json: bool) -> None:
    """Check the memory for damage; exit code 1 when errors are found.

    Checks SQLite's integrity, that every stored photo file exists and is unaltered, that stored
    vectors are usable and the vector indexes hold exactly SQLite's vectors, and that no other user
    of this computer can read the home. Warnings are harmless states that fix themselves (or that
    --repair tidies). --repair rebuilds everything derived from SQLite first; it never deletes a
    photo it cannot prove is garbage (those go to quarantine/ in the home, listed).

    A lost or damaged memory.db is reported with the ways to recover (a backup, your last export
    bundle, SQLite's .recover) and nothing is changed; --start-fresh then sets the old files aside
    in quarantine/ so a new memory can start (load a bundle into it with `covip import-memory`).

    \b
    Example:
      covip verify
      covip verify --repair --json | jq .errors
      covip verify --start-fresh && covip import-memory ana-2024-05.zip
    """
    from covip.sdk.errors import DatabaseCorruptError, DatabaseMissingError
    from covip.sdk.memory import Memory, VerifyReport

    home = state.home_dir
    if start_fresh:
        if repair or quick:
            raise click.UsageError("--start-fresh goes alone (it does not check or repair anything)")
        folder = Memory.start_fresh(home)
        state.memory(create=True)
        if as_json:
            echo_json({"home": str(home), "quarantine": str(folder) if folder else None})
        elif folder is None:
            click.echo(f"started a new, empty memory in {home} (there were no old files to set aside)")
        else:
            click.echo(f"started a new, empty memory in {home}; the old files are in {folder} (nothing was "
                       "deleted). Load your last export with `covip import-memory BUNDLE.zip`")
        return
    try:
        mem = state.memory()
    except (DatabaseCorruptError, DatabaseMissingError) as exc:  # report it like any other damage
        report = VerifyReport(errors=[str(exc)])
        if repair:
            report.errors.append("repair changed nothing: it cannot rebuild the database itself")
    else:
        home = mem.home
        report = mem.repair() if repair else mem.verify(deep=not quick)
    if as_json:
        echo_json({"home": str(home), "ok": report.ok, "errors": report.errors,
                   "warnings": report.warnings, "checked": report.checked, "repaired": report.repaired})
    else:
        click.echo(f"memory: {home}")
        if report.checked:
            click.echo("checked: " + ", ".join(f"{k} {v}" for k, v in report.checked.items()))
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for line in report.warnings:
            click.echo(f"warning: {line}")
        for line in report.errors:
            click.echo(f"problem: {line}")
        verdict = "ok" if report.ok else "DAMAGED"
        db_read = "users" in report.checked  # else the database itself is lost or damaged: repair cannot help
        hint = "" if report.ok or repair or not db_read else "; try `covip verify --repair`"
        click.echo(f"{verdict}: {plural(len(report.errors), 'error')}, {plural(len(report.warnings), 'warning')}"
                   + hint)
    if not report.ok:
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    from covip.sdk.cli.memory_cmds import hidden_alias

    for command in (export_cmd, import_cmd, verify_cmd):
        group.add_command(command)
    group.add_command(hidden_alias(export_cmd, "export-user"))
    group.add_command(hidden_alias(import_cmd, "import-bundle"))
