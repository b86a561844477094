"""The passphrase of an encrypted memory: ``covip key store | forget | change``."""

from __future__ import annotations

import logging

import click

from covip.sdk.cli.common import CliState, ask_passphrase, is_interactive, new_passphrase, pass_state

log = logging.getLogger(__name__)

__all__ = ["register"]


def _unlock(state: CliState):
    """The home's unlocked key (from $COVIP_PASSPHRASE, the keyring, or asked); refuses a plain home."""
    from covip.sdk.errors import EncryptionError, MissingKeyError
    from covip.sdk.memory import crypto

    home = state.home_dir
    if not crypto.is_encrypted_home(home):
        raise EncryptionError(f"the memory in {home} is not encrypted (no {crypto.KEYFILE}); only a memory "
                              "created with `covip init --encrypt` has a passphrase")
    try:
        return crypto.unlock_home(home)
    except MissingKeyError:
        if not is_interactive():
            raise
    return crypto.unlock_home(home, ask_passphrase(home))


@click.group("key")
def key_group() -> None:
    """Manage the passphrase of an encrypted memory (see `covip init --encrypt`).

    Every command on an encrypted memory needs its passphrase: from $COVIP_PASSPHRASE, from the OS
    keyring (`covip key store`), or typed when asked on a terminal.

    \b
    Example:
      covip key store      # asks once, then commands unlock from the OS keyring
      covip key change     # a new passphrase; nothing is re-encrypted
    """


@key_group.command("store")
@pass_state
def store_cmd(state: CliState) -> None:
    """Keep the memory's passphrase in the OS keyring, so commands unlock it without asking.

    \b
    Example:
      COVIP_PASSPHRASE=... covip key store
    """
    from covip.sdk.memory import crypto

    key = _unlock(state)
    crypto.keyring_set(key)
    click.echo(f"stored the passphrase of {state.home_dir} in the OS keyring (service 'covip', user "
               f"{key.keyring_user!r})")


@key_group.command("forget")
@pass_state
def forget_cmd(state: CliState) -> None:
    """Remove the memory's passphrase from the OS keyring (the memory itself is untouched).

    \b
    Example:
      covip key forget
    """
    from covip.sdk.memory import crypto

    key = _unlock(state)
    gone = crypto.keyring_delete(key)
    click.echo("removed the passphrase from the OS keyring" if gone
               else "the OS keyring held no passphrase for it")


@key_group.command("change")
@pass_state
def change_cmd(state: CliState) -> None:
    """Lock the memory with a new passphrase (only keyfile.json changes; nothing is re-encrypted).

    The new passphrase comes from $COVIP_NEW_PASSPHRASE (a raw key: $COVIP_NEW_KEY, 64 hex digits),
    else it is asked twice on the terminal. A passphrase kept in the OS keyring is updated too.

    \b
    Example:
      COVIP_PASSPHRASE=old COVIP_NEW_PASSPHRASE=new covip key change
    """
    from covip.sdk.memory import crypto

    old = _unlock(state)
    new = new_passphrase("covip key change", env="COVIP_NEW_PASSPHRASE", key_env="COVIP_NEW_KEY")
    crypto.change_home_key(state.home_dir, old.secret(), new)
    click.echo(f"changed the passphrase of {state.home_dir}; the old one no longer opens it")


def register(group: click.Group) -> None:
    """Add this module's commands to the ``covip`` group."""
    group.add_command(key_group)
