"""The pytest kit as an app that extends creditapp uses it: examples/sketch (a paid feature of
its own, its tests on the kit) runs in a pytest of its own, on SQLite and on PostgreSQL."""
import os
import subprocess
import sys

import pytest

from creditapp.testing.databases import server_url
from creditapp.testing.servers import ROOT

EXAMPLE = ROOT / "examples" / "sketch"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("databases", ["sqlite", "sqlite and postgresql"])
def test_the_kits_example_app_passes_its_tests(databases, postgres_url):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AI_STUB_", "JOBS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env.pop("TEST_DATABASE_URL", None)
    if databases != "sqlite":
        env["TEST_DATABASE_URL"] = server_url()  # the kit then runs every test on both
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
                            cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = result.stdout.count(" PASSED ") or result.stdout.count("PASSED")
    assert passed == (5 if databases == "sqlite" else 10), result.stdout[-3000:]
