"""`python -m hvdl.data inspect|convert ...`: the same as `hvdl data ...` (hvdl/data/tool.py)."""

import sys

from hvdl.data.tool import main

sys.exit(main())
