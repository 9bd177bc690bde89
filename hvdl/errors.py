"""Bad input: every error that means the user asked for something hvdl cannot do.

Each carries a one-line message naming the problem and what is allowed. hvdl's entry points
catch `BadInput` alone: rank 0 prints `hvdl: error: <message>`, every rank exits with status 2,
and a run folder made for the run is removed again (results/bad_input.md lists every case).
"""

from __future__ import annotations


class BadInput(ValueError):
    """Input hvdl refuses before any work; the message is one line, ending in what is allowed."""
