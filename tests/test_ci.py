"""The suite's own rules for CI: a cluster that cannot start skips its tests on a developer's
machine and fails them under HVDL_REQUIRE_CLUSTER=1, which .ci/run sets."""

import subprocess
import sys

import pytest

from procs import ROOT

CASE = '''
from cluster import cannot_start


def test_needs_a_cluster():
    cannot_start("the test cluster", "namespaces refused")
'''


@pytest.mark.parametrize("require, status, words", [
    ("", 0, "1 skipped"),
    ("1", 1, "HVDL_REQUIRE_CLUSTER=1 forbids skipping: namespaces refused"),
])
def test_a_cluster_that_cannot_start_skips_or_fails_under_the_ci_variable(tmp_path, require,
                                                                          status, words):
    """Test that a test whose cluster cannot start is skipped with the reason, and fails with it
    when HVDL_REQUIRE_CLUSTER=1."""
    (tmp_path / "test_case.py").write_text(CASE)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "tests"),
           "HVDL_REQUIRE_CLUSTER": require}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(tmp_path / "test_case.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stdout[-2000:]
    assert words in proc.stdout, proc.stdout[-2000:]
    assert "namespaces refused" in proc.stdout


def test_ci_runs_the_suite_with_cluster_skips_forbidden():
    """Test that .ci/run sets HVDL_REQUIRE_CLUSTER=1 before it runs the README's test command."""
    script = (ROOT / ".ci" / "run").read_text()
    assert script.index("export HVDL_REQUIRE_CLUSTER=1") < script.index("bash launch/test.sh")
