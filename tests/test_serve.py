"""`make serve`, the README's first command: gunicorn with gunicorn.conf.py, as in production."""
import os
import shutil
import subprocess
import time

import pytest
import requests

# The harness's own start and stop: the server is stopped by PID, its whole process group.
from creditapp.testing.servers import ROOT, free_port, stop, wait_until_up

pytestmark = pytest.mark.slow


def test_make_serve_migrates_and_serves_with_gunicorn(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if subprocess.run(["make", "-q", "install"], cwd=ROOT).returncode != 0:
        pytest.skip(".venv is missing or older than requirements.txt: run `make install` first")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDITAPP_", "GUNICORN_", "MAKE"))}
    # Its own database: the developer's instance/creditapp.db stays as it is.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'serve.db'}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["make", "serve", "HOST=127.0.0.1", f"PORT={port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_until_up(f"{url}/healthz", process, timeout=90)
        ready = requests.get(f"{url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text  # `db upgrade` ran first
        assert ready.headers["Server"].startswith("gunicorn")
        an_async_generation_runs_to_its_charge(url)
    finally:
        stop(process)
    log = log_path.read_text()
    assert "gunicorn.conf.py" in log and "Booting worker" in log, log
    assert "development server" not in log, log


def an_async_generation_runs_to_its_charge(url: str) -> None:
    """The README's job walkthrough: a job runs to its charge (with no broker configured, in the server itself)."""
    account = {"username": "newcomer", "password": "newcomer-password"}
    assert requests.post(f"{url}/api/auth/register", json=account, timeout=10).status_code == 201
    token = requests.post(f"{url}/api/auth/login", json=account, timeout=10).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    submitted = requests.post(f"{url}/api/generate", json={"prompt": "a lighthouse in the fog"},
                              headers={**auth, "Prefer": "respond-async"}, timeout=10)
    assert submitted.status_code == 202, submitted.text
    deadline, job = time.monotonic() + 30, {}
    while time.monotonic() < deadline and job.get("status") not in ("succeeded", "failed", "expired"):
        job = requests.get(url + submitted.headers["Location"], headers=auth, timeout=10).json()
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    assert job["charged"] == {"credit_type": "generation_credits", "amount": 1}
    balance = requests.get(f"{url}/api/credits/balance", headers=auth, timeout=10).json()
    assert balance["generation_credits"] == job["balance"]["generation_credits"] == 2
