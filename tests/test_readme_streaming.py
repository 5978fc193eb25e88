"""The README's streamed completion, verbatim: its `curl -N` against a real gunicorn server, and
the events it shows are the events the server sends (the balance aside: the README's follows
its walkthrough)."""
import json
import re
import shutil
import subprocess

import pytest

from creditapp.testing.servers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]


def section() -> tuple[str, list]:
    text = (ROOT / "README.md").read_text()
    part = text[text.index("### Streamed completions"):text.index("### A real AI provider")]
    (script,) = re.findall(r"^```sh\n(.*?)^```", part, re.S | re.M)
    (shown,) = re.findall(r"^```text\n(.*?)^```", part, re.S | re.M)
    events = [json.loads(line[len("data: "):]) for line in shown.splitlines() if line.startswith("data: ")]
    return script, events


def test_the_readme_stream_works_as_written(make_user, live_server):
    script, shown = section()
    assert "curl -N" in script
    user = make_user(tokens=100)
    with live_server(AI_STUB_TOKEN_MS=20) as server:
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:5000", server.url)],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env={"TOKEN": user.token,
                                                                                      "PATH": "/usr/bin:/bin"})
    assert ran.returncode == 0, ran.stderr
    got = [json.loads(line[len("data: "):]) for line in ran.stdout.splitlines() if line.startswith("data: ")]
    assert got[:2] == shown[:2] and len(got) == 6
    done, readme_done = got[-1], shown[-1]
    assert list(done) == list(readme_done) and list(done["balance"]) == list(readme_done["balance"])
    assert (done["charged"], done["usage"]) == (readme_done["charged"], readme_done["usage"])
    assert done["balance"]["ai_tokens"] == 100 - done["charged"]["amount"]
