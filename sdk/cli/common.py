"""Shared CLI plumbing: the per-invocation state, opening the memory, JSON output and small parsers."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from covip.sdk.config import SETTINGS_FILE, resolve_home
from covip.sdk.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from covip.sdk.memory import Memory

log = logging.getLogger(__name__)

__all__ = ["CliState", "pass_state", "user_option", "json_option", "echo_json", "jsonable", "read_text_arg",
           "is_interactive", "open_memory", "ask_passphrase", "new_passphrase", "init_key"]

DB_FILE = "memory.db"


@dataclass
class CliState:
    """What the ``covip`` group's options decided, shared with every command through ``ctx.obj``."""

    home: Path | None = None
    verbose: int = 0
    _noted: set[str] = field(default_factory=set)

    @property
    def home_dir(self) -> Path:
        """The memory home: --home, else $COVIP_HOME, else the per-user data directory."""
        return resolve_home(self.home)

    def memory(self, *, create: bool = False, key: Any = None) -> Memory:
        """Open the memory in the home (closed when the command ends); refuses a home never initialized. An
        encrypted home is unlocked with ``key``, $COVIP_PASSPHRASE or the OS keyring, else asked on a terminal."""
        from covip.sdk.memory.layout import leftovers

        home = self.home_dir
        if not create and not ((home / DB_FILE).is_file() or (home / SETTINGS_FILE).is_file() or leftovers(home)):
            raise NotFoundError(f"no covip memory in {home}; create one with `covip init` (or point --home / "
                                "COVIP_HOME at an existing one)")
        log.info("opening memory in %s", home)
        mem = open_memory(home, key)
        click.get_current_context().call_on_close(mem.close)
        return mem

    def embedder(self, mem: Memory) -> Any:
        """Build (or get) the memory's embedder; say once on stderr when its similarities are meaningless."""
        emb = mem.embedder
        if getattr(emb, "meaningless", False) and emb.model_id not in self._noted:
            self._noted.add(emb.model_id)
            click.echo(f"notice: embedder {emb.model_id} has random weights, so similarity scores are "
                       "meaningless (fine for tests; choose a real one with `covip init --force --embedder "
                       "ViT-B-32/laion2b_s34b_b79k`)", err=True)
        return emb


pass_state = click.make_pass_decorator(CliState, ensure=True)


def open_memory(home: Path, key: Any = None) -> Memory:
    """Memory.open(home, key=key); when an encrypted home has no key anywhere, ask for it on a terminal."""
    from covip.sdk.errors import MissingKeyError
    from covip.sdk.memory import Memory

    try:
        return Memory.open(home, key=key)
    except MissingKeyError:
        if key is not None or not is_interactive():
            raise
    return Memory.open(home, key=ask_passphrase(home))


def ask_passphrase(home: Path, what: str = "the encrypted covip memory") -> Any:
    """Ask for a passphrase on the terminal (hidden); in a home locked with a raw key, its 64 hex digits."""
    from covip.sdk.memory import crypto

    text = click.prompt(f"passphrase of {what} in {home}", hide_input=True, err=True)
    return crypto.secret_from_text(home, text)


def init_key(home: Path, encrypt: bool) -> Any:
    """The key ``covip init`` opens ``home`` with, checked before anything is written: a new passphrase for
    --encrypt on a new home; for a home that is encrypted already, its passphrase (environment, keyring or
    asked), tried now so a wrong one changes nothing."""
    from covip.sdk.errors import EncryptionError, MissingKeyError
    from covip.sdk.memory import crypto

    if crypto.is_encrypted_home(home):
        try:
            crypto.unlock_home(home)
            return None
        except MissingKeyError:
            if not is_interactive():
                raise
        key = ask_passphrase(home)
        crypto.unlock_home(home, key)
        return key
    if not encrypt:
        return None
    crypto.require_encryption()
    if crypto.holds_memory(home):
        raise EncryptionError(f"{home} already holds an unencrypted memory and --encrypt only creates new homes. "
                              "To encrypt it: `covip export-memory` each user, `covip --home NEW init --encrypt`, "
                              "`covip --home NEW import-memory` each bundle, then delete the old home")
    return crypto.check_new_secret(new_passphrase("covip init --encrypt"))


def new_passphrase(what: str, *, env: str | None = None, key_env: str | None = None) -> Any:
    """A new passphrase: from the environment (``env``, default $COVIP_PASSPHRASE, or a raw key in ``key_env``,
    default $COVIP_KEY), else asked twice on a terminal."""
    import os

    from covip.sdk.memory import crypto

    env, key_env = env or crypto.PASSPHRASE_ENV, key_env or crypto.KEY_ENV
    if os.environ.get(env):
        return os.environ[env]
    if os.environ.get(key_env):
        try:
            return bytes.fromhex(os.environ[key_env].strip())
        except ValueError:
            raise InputError(f"${key_env} must be 64 hex digits (a raw 32-byte key)") from None
    if not is_interactive():
        raise InputError(f"{what} needs a passphrase: set ${env} (or ${key_env} to a raw key in 64 hex digits), "
                         "or run it on a terminal to be asked")
    return click.prompt(f"new passphrase ({what}; at least {crypto.MIN_PASSPHRASE} characters)", hide_input=True,
                        confirmation_prompt=True, err=True)


def user_option(required: bool = True) -> Any:
    """The ``--user/-u NAME`` option every per-user command takes."""
    return click.option("--user", "-u", "user", required=required, metavar="NAME",
                        help="Whose memory to use (see `covip user list`).")


def json_option() -> Any:
    """The ``--json`` flag: print one JSON document on stdout instead of text."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON document on stdout (for jq and scripts) instead of text.")


def jsonable(obj: Any) -> Any:
    """Turn records (dataclasses), paths, tuples and numpy scalars into plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and not isinstance(obj, (str, bytes)):
        obj = obj.item()  # numpy scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def echo_json(doc: Any) -> None:
    """Write ``doc`` as the single JSON document on stdout."""
    click.echo(json.dumps(jsonable(doc), indent=2, ensure_ascii=False))


def read_text_arg(value: str, what: str) -> str:
    """``TEXT`` as is, ``@FILE`` read from a UTF-8 file, ``@-`` read from stdin."""
    if not value.startswith("@") or value == "@":
        return value
    if value.startswith("@@"):
        return value[1:]
    source = value[1:]
    if source == "-":
        return click.get_text_stream("stdin").read()
    path = Path(source).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(f"{what} file {path} does not exist (a value starting with @ names a file; "
                         "give '@@...' for text that starts with @)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path} cannot be read as UTF-8 text ({exc})") from exc


def is_interactive() -> bool:
    """Whether a person can answer a prompt (stdin and stderr are terminals)."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def plural(n: int, word: str) -> str:
    """``1 photo`` / ``3 photos``."""
    return f"{n} {word}{'' if n == 1 else 's'}"
