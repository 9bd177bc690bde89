"""Bad input: every error that means the user asked for something hvdl cannot do.

Each carries a one-line message naming the problem and what is allowed. hvdl's entry points
catch `BadInput` alone: rank 0 prints `hvdl: error: <message>`, every rank exits with status 2,
and a run folder made for the run is removed again (results/bad_input.md lists every case).
"""

from __future__ import annotations

import argparse
import sys


class BadInput(ValueError):
    """Input hvdl refuses before any work; the message is one line, ending in what is allowed."""


class UsageExit(SystemExit):
    """Exit after a one-line explanation (printed by rank 0 only): 2 bad input, 1 failed run."""


def fail(message: str, is_root: bool, status: int = 2) -> UsageExit:
    """One line on rank 0's stderr and the exit to raise: 2 for bad input, 1 for a failed run."""
    if is_root:
        print(f"hvdl: error: {message}", file=sys.stderr, flush=True)
    return UsageExit(status)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """`--help` keeps a description's and epilog's own lines and names each option's default
    (where it has one its help does not already name)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default in (None, "", ())
                or default is argparse.SUPPRESS or isinstance(default, bool)):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors on one line like every other bad input, and `--help` naming
    every option's default."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.exit_on_error is not False:
            print(f"{self.prog}: error: {message}; see {self.prog} --help", file=sys.stderr)
        raise UsageExit(2)
