import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["cluster"]  # the local multi-host cluster fixture, tests/cluster.py
