"""The README's code for apps that extend creditapp runs, as the README gives it: every block of
"Adding a paid feature" and "Testing your paid feature" is written to a directory of its own
under the file name its first line gives, and that directory's pytest must pass (on SQLite)."""
import os
import re
import subprocess
import sys

import pytest

from creditapp.testing.servers import ROOT

pytestmark = pytest.mark.slow
SECTIONS = ("## Adding a paid feature", "## Command line")
BLOCK = re.compile(r"^```(python|ini)\n(.*?)^```", re.S | re.M)
# What the README's blocks are, by the name each one's first line gives.
FILES = {"sketch.py", "sketch_lower.py", "conftest.py", "wsgi_sketch.py", "pytest.ini", "test_sketch.py"}
# The lower-level module has no test in the README: this one calls it as a client would.
LOWER_TEST = '''
from creditapp.testing import ledger_is_clean


def test_the_lower_level_sketch(client, make_user, fake_ai):
    user = make_user(credits=2)
    assert client.post("/api/lower/generate/sketch", json={"prompt": "a fox"}).status_code == 401
    assert client.post("/api/lower/generate/sketch", json={}, headers=user.headers).status_code == 422
    response = client.post("/api/lower/generate/sketch", json={"prompt": "a fox"}, headers=user.headers)
    assert response.status_code == 200, response.json
    assert response.json["balance"]["generation_credits"] == 1 and fake_ai.calls == 1
    ledger_is_clean()
'''
LOWER_CONFTEST = '''
import pytest

import sketch
import sketch_lower


@pytest.fixture
def creditapp_blueprints():
    return [sketch.blp, sketch_lower.blp]
'''


def readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    start, end = (text.index(heading) for heading in SECTIONS)
    blocks = {}
    for _, code in BLOCK.findall(text[start:end]):
        first = code.splitlines()[0]
        name = re.match(r"#\s*([\w./]+)", first)
        assert name, f"a README block without its file name on its first line: {first!r}"
        blocks[name.group(1).rstrip(":")] = code
    return blocks


def test_every_block_of_the_readme_is_one_of_the_apps_files():
    assert set(readme_blocks()) == FILES


def test_the_readmes_app_passes_its_own_tests(tmp_path):
    for name, code in readme_blocks().items():
        (tmp_path / name).write_text(code)
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "conftest.py").write_text(LOWER_CONFTEST)
    (lower / "test_lower.py").write_text(LOWER_TEST)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "AI_STUB_", "JOBS_", "TEST_DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = re.findall(r"^PASSED (\S+)", result.stdout, re.M)
    assert len(passed) == 5, result.stdout[-3000:]  # the README's four and the lower level's one
