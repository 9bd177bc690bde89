"""`python -m hvdl.data inspect|convert ...`: the same as `hvdl data ...` (hvdl/data/convert/)."""

import sys

from hvdl.data.convert import main

sys.exit(main())
