"""What every ``edgegen`` command module shares: the options given on the command line, and the line itself.

The command groups live one per module (cli.py: the top-level commands; draft_cli, ngram_cli,
lud_cli: one group each), and import only this module from one another.
"""

from __future__ import annotations

import sys
from typing import Any


def given(**values: Any) -> dict[str, Any]:
    """The options the user set: those left at None (click's 'not given') are dropped, so the API's
    defaults apply."""
    return {key: value for key, value in values.items() if value is not None}


def command_line() -> str:
    """The command as typed (recorded in benchmark reports)."""
    return " ".join(["edgegen", *sys.argv[1:]])
