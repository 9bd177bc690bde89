"""`python -m hvdl.bench`: the same as `hvdl bench` (hvdl/bench/suite.py)."""

import sys

from hvdl.bench.suite import main

sys.exit(main())
