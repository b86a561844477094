"""The ``covip`` command line: ``covip init``, ``remember``, ``recall``, ``forget``, ``verify``, ...

``main`` is the console-script entry point; ``cli`` is the click group (for ``CliRunner`` and for
modules that add commands, see :mod:`covip.sdk.cli.main`).
"""

from covip.sdk.cli.main import EXIT_CODES, cli, exit_code_for, main

__all__ = ["cli", "main", "exit_code_for", "EXIT_CODES"]
