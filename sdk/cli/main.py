"""The ``covip`` command group: global options, logging, and the one place errors become exit codes.

Commands live in their own modules; each module has ``register(group)``, and :data:`COMMAND_MODULES`
lists them. To add commands (caption, ask, chat, serve, ...): write ``covip/sdk/cli/<name>_cmds.py``
with a ``register`` function and add its name here. Import heavy dependencies inside the command
functions so ``covip --help`` stays fast and works without the optional extras.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from covip.sdk.cli.common import CliState
from covip.sdk.errors import (
    ConflictError,
    CovipError,
    InputError,
    MissingExtraError,
    NotFoundError,
    StoreError,
)

log = logging.getLogger(__name__)

__all__ = ["cli", "main", "exit_code_for", "COMMAND_MODULES", "EXIT_CODES"]

COMMAND_MODULES: tuple[str, ...] = (
    "covip.sdk.cli.memory_cmds",
    "covip.sdk.cli.people_cmds",
    "covip.sdk.cli.edit_cmds",
    "covip.sdk.cli.bundle_cmds",
    "covip.sdk.cli.key_cmds",
    "covip.sdk.cli.ask_cmds",
    "covip.sdk.cli.chat_cmds",
    "covip.sdk.cli.serve_cmds",
    "covip.sdk.cli.bench_cmds",
    "covip.sdk.cli.models_cmds",
)
"""Modules whose ``register(group)`` adds commands to ``covip``, in help order."""

EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "verify found errors / other covip error": 1,
    "bad input or usage": 2,
    "not found": 3,
    "conflict": 4,
    "store, schema, bundle or file I/O error": 5,
    "missing optional dependency": 6,
}

_EPILOG = """\b
Exit codes: 0 ok, 1 verify found errors or another covip error, 2 bad input or usage,
3 not found, 4 conflict, 5 store/schema/bundle/I-O error, 6 missing optional dependency.

\b
Example:
  covip demo                     # the whole pipeline offline, on tiny random-weight models
  covip init --embedder ViT-B-32/laion2b_s34b_b79k --model Qwen/Qwen3-VL-2B-Instruct
  covip user add ana
  covip remember bori.jpg --user ana --concept Bori --dialogue "User: This is Bori at the Han river."
  covip recall new.jpg --user ana -k 3
  covip ask new.jpg "Who is this, and where did we last meet?" --user ana
"""


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an expected error (see :data:`EXIT_CODES`)."""
    if isinstance(exc, MissingExtraError):
        return 6
    if isinstance(exc, InputError):
        return 2
    if isinstance(exc, NotFoundError):
        return 3
    if isinstance(exc, ConflictError):
        return 4
    if isinstance(exc, (StoreError, OSError)):
        return 5
    return 1


class CovipCommandError(click.ClickException):
    """An expected error, shown as ``error: <message>`` on stderr with its own exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        """Print ``error: <message>`` to stderr (no usage text, no traceback)."""
        click.echo(f"error: {self.format_message()}", err=True, file=file)


class CovipGroup(click.Group):
    """A click group that turns CovipError (and OS errors) into ``error: ...`` plus an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in registration order (COMMAND_MODULES order), not alphabetical."""
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the chosen command; expected errors end the process cleanly (traceback only with -v)."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click handles a closed stdout (e.g. `covip history --json | head`)
        except (CovipError, OSError) as exc:
            state = ctx.obj if isinstance(ctx.obj, CliState) else None
            if state is not None and state.verbose:
                click.echo(traceback.format_exc().rstrip(), err=True)
            message = str(exc) if isinstance(exc, CovipError) else _os_message(exc)
            raise CovipCommandError(message, exit_code_for(exc)) from exc


def _os_message(exc: OSError) -> str:
    """A one-line description of an OS error (which file, what went wrong)."""
    if exc.filename is not None:
        return f"{exc.strerror or exc}: {exc.filename}"
    return str(exc)


class _EchoHandler(logging.Handler):
    """A logging handler that writes through click, so it follows stderr redirection (and CliRunner)."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write one formatted record to stderr."""
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class _Reroute(logging.Filter):
    """Send a library logger's records to covip's stderr handler instead of its own handlers.

    DeepSpeed (installed with ``[train]``) logs through a ``StreamHandler(sys.stdout)`` of its own with
    ``propagate=False``, and transformers imports it in every model load: its "Setting accelerator to CPU"
    line would land in the middle of ``--json`` output. A logger-level filter survives DeepSpeed's own setup.
    """

    def __init__(self, handler: logging.Handler, level: int) -> None:
        super().__init__()
        self.handler, self.level = handler, level

    def filter(self, record: logging.LogRecord) -> bool:
        """Re-emit ``record`` on stderr when the verbosity shows it; never let the logger's own handlers run."""
        if record.levelno >= self.level:
            self.handler.handle(record)
        return False


_STDOUT_LOGGERS = ("DeepSpeed",)
"""Loggers that write to stdout by themselves (see :class:`_Reroute`)."""


def setup_logging(verbose: int) -> Callable[[], None]:
    """Route logging to stderr (quiet: errors only; -v: covip INFO; -vv: DEBUG); returns an undo function."""
    root, pkg = logging.getLogger(), logging.getLogger("covip")
    saved = (root.level, pkg.level)
    if verbose <= 0:
        root_level, pkg_level = logging.ERROR, logging.ERROR
    elif verbose == 1:
        root_level, pkg_level = logging.WARNING, logging.INFO
    else:
        root_level, pkg_level = logging.DEBUG, logging.DEBUG
    handler = _EchoHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(root_level)
    pkg.setLevel(pkg_level)
    logging.captureWarnings(True)  # Python warnings from dependencies follow the same verbosity
    reroute = _Reroute(handler, root_level)
    for name in _STDOUT_LOGGERS:
        logging.getLogger(name).addFilter(reroute)

    def undo() -> None:
        for name in _STDOUT_LOGGERS:
            logging.getLogger(name).removeFilter(reroute)
        root.removeHandler(handler)
        root.setLevel(saved[0])
        pkg.setLevel(saved[1])
        logging.captureWarnings(False)

    return undo


@click.group(cls=CovipGroup, epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), envvar="COVIP_HOME",
              show_envvar=True,
              help="Memory home directory (memory.db, index files, config.json). "
                   "Default: $COVIP_HOME, else the per-user data directory.")
@click.option("-v", "--verbose", count=True,
              help="Log to stderr: -v for progress messages, -vv for debug detail; also shows tracebacks.")
@click.version_option(package_name="covip", prog_name="covip")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, verbose: int) -> None:
    """covip: a personal photo assistant that remembers your people, pets, things and places.

    Remember photos with the dialogues about them; show a new photo and ask about it, and the answer
    draws on your own history (caption first, then answer: Caption-Augmented Generation), with the
    memories it used. Forget on request, move a memory between devices. Everything stays in one home
    directory on this machine. Start with `covip demo`; run `covip COMMAND --help` for each command's
    options and an example.
    """
    ctx.obj = CliState(home=home, verbose=verbose)
    ctx.call_on_close(setup_logging(verbose))


PLUGIN_GROUP = "covip.cli"
"""Entry-point group through which other covip packages (training, export) add their commands, so the SDK
never imports them (a laptop install has no training code)."""


def _register_all(group: click.Group) -> None:
    """Import every module in COMMAND_MODULES and let it add its commands, then the installed plugins."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(group)
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a plugin whose own dependencies are missing: leave it out, say why with -v
            log.debug("covip command plugin %s not loaded: %s", ep.name, exc)
            continue
        register(group)


_register_all(cli)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (``covip``): run the CLI and return its exit code."""
    try:
        cli.main(args=argv, prog_name="covip", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        click.echo(str(code), err=True)
        return 1
    return 0
