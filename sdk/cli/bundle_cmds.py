"""Moving and checking a memory: export-memory, import-memory, verify."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from covip.sdk.cli.common import CliState, echo_json, json_option, pass_state, plural, user_option
from covip.sdk.errors import ConflictError

log = logging.getLogger(__name__)

__all__ = ["register"]


@click.command("export-memory")
@user_option()
@click.argument("out", metavar="OUT.zip", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite OUT.zip if it exists.")
@pass_state
def export_cmd(state: CliState, user: str, out: Path, force: bool) -> None:
    """Write one user's whole memory to a portable zip bundle.

    The bundle holds the concepts, photos (their bytes), dialogues and embedding vectors, with
    checksums; `covip import-memory` loads it on another device. Shares and cached captions are
    not exported. The file is written atomically.

    \b
    Example:
      covip export-memory --user ana ana-2024-05.zip
    """
    out = out.expanduser()
    if out.exists() and not force:
        raise ConflictError(f"{out} already exists; pass --force to overwrite it")
    mem = state.memory()
    n = len(mem.photos(user))
    path = mem.export_user(user, out)
    click.echo(f"exported user {user!r} ({plural(n, 'photo')}) to {path}")


@click.command("import-memory")
@click.argument("bundle", metavar="BUNDLE.zip", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--user", "-u", "user", metavar="NAME",
              help="Import as this user (default: the user named in the bundle).")
@click.option("--merge", is_flag=True, help="Add into an existing user instead of refusing.")
@json_option()
@pass_state
def import_cmd(state: CliState, bundle: Path, user: str | None, merge: bool, as_json: bool) -> None:
    """Load a bundle written by `covip export-memory` into this memory.

    The whole bundle is checked (format, checksums, images) before anything is written, and the
    import is one transaction. An existing user is only added to with --merge; photos already
    remembered are not duplicated.

    \b
    Example:
      covip import-memory ana-2024-05.zip
      covip import-memory ana-2024-05.zip --user ana-old --merge
    """
    mem = state.memory()
    counts = mem.import_bundle(bundle, user=user, merge=merge)
    if as_json:
        echo_json({"bundle": str(bundle), "imported": counts})
        return
    click.echo(f"imported into user {counts['user']!r}: {plural(counts['photos'], 'new photo')}, "
               f"{plural(counts['episodes'], 'dialogue')}, {plural(counts['concepts'], 'new concept')}, "
               f"{plural(counts['vectors'], 'vector')}")


@click.command("verify")
@click.option("--repair", is_flag=True,
              help="Rebuild the indexes from SQLite and clean up stale files before checking again.")
@click.option("--quick", is_flag=True, help="Skip re-hashing the stored photo files.")
@json_option()
@pass_state
@click.pass_context
def verify_cmd(ctx: click.Context, state: CliState, repair: bool, quick: bool, as_json: bool) -> None:
    """Check the memory for damage; exit code 1 when errors are found.

    Checks SQLite's integrity, that every stored photo file exists and is unaltered, and that the
    vector indexes hold exactly SQLite's vectors. Warnings are harmless states that fix themselves.
    --repair rebuilds everything derived from SQLite first.

    \b
    Example:
      covip verify
      covip verify --repair --json | jq .errors
    """
    mem = state.memory()
    report = mem.repair() if repair else mem.verify(deep=not quick)
    if as_json:
        echo_json({"home": str(mem.home), "ok": report.ok, "errors": report.errors,
                   "warnings": report.warnings, "checked": report.checked, "repaired": report.repaired})
    else:
        click.echo(f"memory: {mem.home}")
        click.echo("checked: " + ", ".join(f"{k} {v}" for k, v in report.checked.items()))
        for line in report.repaired:
            click.echo(f"repaired: {line}")
        for line in report.warnings:
            click.echo(f"warning: {line}")
        for line in report.errors:
            click.echo(f"problem: {line}")
        verdict = "ok" if report.ok else "DAMAGED"
        click.echo(f"{verdict}: {plural(len(report.errors), 'error')}, {plural(len(report.warnings), 'warning')}"
                   + ("" if report.ok or repair else "; try `covip verify --repair`"))
    if not report.ok:
        ctx.exit(1)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    for command in (export_cmd, import_cmd, verify_cmd):
        group.add_command(command)
