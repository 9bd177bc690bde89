"""`python -m hvdl COMMAND ...` is the `hvdl` command."""

import sys

from hvdl.cli import main

sys.exit(main())
