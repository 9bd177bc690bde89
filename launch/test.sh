#!/usr/bin/env bash
# Set up (or reuse) the environment, then run the test suite. Extra arguments go to pytest.
#   bash launch/test.sh              # everything, multi-process and Slurm tests included
#   bash launch/test.sh -m "not slow"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
cd "$root"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# The linter first (pyproject's [tool.ruff]): a finding fails the command as a failed test does.
"$root/.venv/bin/ruff" check --quiet "$root"
# pytest's own status passes through: 5 (no test ran) fails like any other non-zero status.
exec "$root/.venv/bin/python" -m pytest -ra "$@"
