"""The README's code for apps that extend creditapp is examples/sketch, as it is on disk: every
block of "Adding a paid feature" and "Testing your paid feature" is, after its first line (its file
name), that file of the example (whose tests tests/test_package.py runs from the wheel); and the
lower-level module, which the example has not, passes a test of its own beside the example."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from creditapp.testing.servers import ROOT

pytestmark = pytest.mark.slow
SECTIONS = ("## Adding a paid feature", "## Command line")
BLOCK = re.compile(r"^```(python|ini)\n(.*?)^```", re.S | re.M)
EXAMPLE = ROOT / "examples" / "sketch"
# What the README's blocks are, by the name each one's first line gives.
FILES = {"sketch.py", "config.py", "migrations/sketch_0001_sketches.py", "wsgi_sketch.py", "conftest.py",
         "pytest.ini", "test_sketch.py", "sketch_lower.py"}
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


def test_the_readmes_app_is_the_example_app_on_disk():
    for name, code in readme_blocks().items():
        if name != "sketch_lower.py":
            assert code.split("\n", 1)[1] == (EXAMPLE / name).read_text(), name


def test_the_lower_level_module_works_beside_the_example(tmp_path):
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    (app / "sketch_lower.py").write_text(readme_blocks()["sketch_lower.py"])
    lower = app / "lower"
    lower.mkdir()
    (lower / "conftest.py").write_text(LOWER_CONFTEST)
    (lower / "test_lower.py").write_text(LOWER_TEST)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "AI_STUB_", "JOBS_", "TEST_DATABASE_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "lower"],
                            cwd=app, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.findall(r"^PASSED (\S+)", result.stdout, re.M) == ["lower/test_lower.py::test_the_lower_level_sketch[sqlite]"]
