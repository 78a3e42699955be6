"""How `dnc` reports bad input: a `UsageError` anywhere, turned into one line on stderr and exit status 2 by `fail`.

Every command imports this module and nothing else of the CLI, so the dispatcher (dnc_cli/cli.py) can import the
commands without an import cycle.
"""

from __future__ import annotations

import sys


class UsageError(Exception):
    """Bad user input: printed as one line, exit status 2, no traceback."""


def fail(command: str, message: str) -> None:
    """The one way a command reports bad input: one line on stderr, exit status 2."""
    print(f"dnc {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
