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
           "is_interactive"]

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

    def memory(self, *, create: bool = False) -> Memory:
        """Open the memory in the home (closed when the command ends); refuses a home never initialized."""
        from covip.sdk.memory import Memory

        home = self.home_dir
        if not create and not ((home / DB_FILE).is_file() or (home / SETTINGS_FILE).is_file()):
            raise NotFoundError(f"no covip memory in {home}; create one with `covip init` (or point --home / "
                                "COVIP_HOME at an existing one)")
        log.info("opening memory in %s", home)
        mem = Memory.open(home)
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
