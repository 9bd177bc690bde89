"""The `hvdl` command: `hvdl train|eval|fetch|report|bench|data ...`, each a module's `main`.

    hvdl train --model lenet5 --epochs 3      # same as python -m hvdl.train ...
    hvdl fetch mnist --data-dir data
    hvdl data inspect train.csv --label y     # same as python -m hvdl.data.tool inspect ...
    hvdl bench --ranks 1 2
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"train": "hvdl.train", "eval": "hvdl.evaluate", "fetch": "hvdl.fetch",
            "report": "hvdl.report", "bench": "hvdl.bench.suite", "data": "hvdl.data.tool",
            "encode": "hvdl.encode"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        given = repr(argv[0]) if argv else "nothing"
        print(f"hvdl: error: unknown command {given}; allowed: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
