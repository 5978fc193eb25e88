"""The README's plans walkthrough, verbatim: its `make serve` line's PLANS and DEFAULT_PLAN for a
real gunicorn server, and its curl block run by bash against it (the port aside). Slow: it waits
for a period of 20 seconds to end, as the README does."""
import re
import shlex
import subprocess

import pytest
import requests

from creditapp.testing.servers import ROOT

pytestmark = pytest.mark.slow


def walkthrough() -> tuple[dict, str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Plans on the test provider"):text.index("### Plans with Stripe")]
    serve, script = re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)
    words = shlex.split(serve)
    assert words[-2:] == ["make", "serve"], words
    env = dict(word.split("=", 1) for word in words[:-2])
    assert set(env) == {"PLANS", "DEFAULT_PLAN"}
    return env, script


def test_the_plans_walkthrough_works_as_written(live_server):
    env, script = walkthrough()
    with live_server(**env) as server:
        ran = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:5000", server.url)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert ran.returncode == 0, ran.stderr
        login = requests.post(f"{server.url}/api/auth/login", timeout=10,
                              json={"username": "carol", "password": "carol-password"}).json()
        described = requests.get(f"{server.url}/api/subscription", timeout=10,
                                 headers={"Authorization": f"Bearer {login['access_token']}"}).json()
    lines = ran.stdout.splitlines()
    assert '"plans"' in lines[0] and '"username":"carol"' in lines[1], ran.stdout
    free, pay, pro, following, canceled = (line.replace(" ", "") for line in lines[2:7])
    assert '"plan":"free"' in free and '"remaining":{"generation_credits":2}' in free, free
    assert pay == "303"
    assert '"plan":"pro"' in pro and '"status":"active"' in pro and '"remaining":{"generation_credits":10' in pro, pro
    assert '"remaining":{"generation_credits":15}' in following, following
    assert '"cancel_at_period_end":true' in canceled, canceled
    assert described["plan"] == "pro" and described["cancel_at_period_end"] is True
    assert described["remaining"] == {"generation_credits": 15}
