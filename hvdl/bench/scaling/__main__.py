"""`python -m hvdl.bench.scaling measure|report ...` (hvdl/bench/scaling/__init__.py)."""

import sys

from hvdl.bench.scaling import main

sys.exit(main())
