import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["cluster"]  # the local multi-host cluster fixture, tests/cluster.py


@pytest.fixture(autouse=True)
def own_environment():
    """Each test gets the environment as it found it. hvdl run in-process (hvdl.fit) sets
    Horovod's knobs in os.environ, and every later job inherits os.environ: a fusion threshold
    and cycle time left behind reach an elastic job, where Horovod 0.28.1 segfaults when it
    re-initialises after a reset with both set."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
