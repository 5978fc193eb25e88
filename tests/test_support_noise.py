"""What operators see: one feature name in metrics and logs, log lines with their zone and the
client's address, one line (not a traceback per worker) for a database not migrated, for a
refused setting and for jobs without a broker in production, and /metrics on a port of its own."""
import io
import json
import logging
import re
import subprocess
import sys

import requests

from creditapp.ai import set_provider
from creditapp.testing import make_app
from creditapp.testing.servers import ROOT, free_port, gunicorn, server_env
from .test_observability import metric

GENERATE = "/api/generate"
CONFIG = ROOT / "gunicorn.conf.py"
PRODUCTION = {"CREDITAPP_ENV": "production", "JWT_SECRET_KEY": "p" * 40, "PAYMENTS_PROVIDER": ""}
ZONED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d\Z")


def test_a_feature_has_one_name_whether_it_ran_at_once_or_as_a_job(client, make_user, stub, job_queue):
    user = make_user(credits=5)
    assert client.post(GENERATE, json={"prompt": "now"}, headers=user.headers).status_code == 200
    queued = client.post(GENERATE, json={"prompt": "later"}, headers={**user.headers, "Prefer": "respond-async"})
    assert queued.status_code == 202 and queued.json["feature"] == "basic_generation"
    job_queue.drain()
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "creditapp_credits_total", event="charged", feature="basic_generation") == 2
    assert metric(text, "creditapp_credits_total", event="reserved", feature="basic_generation") == 2
    assert metric(text, "creditapp_jobs_total", feature="basic_generation", outcome="succeeded") == 1
    features = set(re.findall(r'feature="([^"]*)"', text))
    assert features <= {"basic_generation"}, features  # no endpoint name beside it


def _json_lines(app, send) -> list[dict]:
    stream = io.StringIO()
    for handler in logging.getLogger("creditapp.access").handlers:
        handler.setStream(stream)
    with app.app_context():
        send(app.test_client())
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_log_lines_carry_their_zone_and_the_clients_address(database_url, make_user, stub):
    user = make_user(credits=2)
    behind_proxy = make_app(database_url, LOG_FORMAT="json", TRUSTED_PROXIES=1)
    set_provider(behind_proxy, stub)
    lines = _json_lines(behind_proxy, lambda c: c.post(GENERATE, json={"prompt": "x"}, headers={
        **user.headers, "X-Forwarded-For": "198.51.100.4, 203.0.113.7"}))
    paid = next(line for line in lines if line.get("path") == GENERATE)
    # The one proxy trusted appended the address it saw; what the client wrote before is not trusted.
    assert (paid["client_ip"], paid["feature"], paid["outcome"]) == ("203.0.113.7", "basic_generation", "charged")
    assert ZONED.fullmatch(paid["time"]), paid["time"]

    direct = make_app(database_url, LOG_FORMAT="json")
    lines = _json_lines(direct, lambda c: c.get("/healthz", headers={"X-Forwarded-For": "203.0.113.7"},
                                                environ_base={"REMOTE_ADDR": "192.0.2.9"}))
    assert [(line["path"], line["client_ip"]) for line in lines] == [("/healthz", "192.0.2.9")]


def test_a_server_started_before_db_upgrade_says_so_in_one_line(tmp_path):
    """Production on an empty database: one line for the migrations, one for the jobs without a
    broker, and requests answer 503 migrations_pending without a traceback in any worker."""
    env = server_env(f"sqlite:///{tmp_path}/empty.db", **PRODUCTION)
    log = tmp_path / "gunicorn.log"
    with gunicorn(env, workers=2, config_file=CONFIG, log_path=log) as server:
        answers = [requests.get(server.url + "/readyz", timeout=10),
                   requests.post(server.url + "/api/auth/login", json={"username": "someone", "password": "p" * 12},
                                 timeout=10)]
        answers += [requests.get(server.url + "/api/credits/costs", timeout=10) for _ in range(4)]
        text = log.read_text()
    assert [a.json()["error"] for a in answers[:2]] == ["migrations_pending"] * 2
    assert "Traceback" not in text and '"level": "ERROR"' not in text, text
    assert [line for line in text.splitlines() if "db upgrade" in line] == [
        "creditapp: warning: the database is at migration none and this code needs "
        f"{_head()}: run `flask --app wsgi db upgrade`; until then /readyz answers 503 migrations_pending"]
    assert len([line for line in text.splitlines() if "JOBS_BROKER_URL is not set" in line]) == 1


def _head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ROOT / "creditapp" / "migrations")).get_current_head()


def test_a_refused_setting_is_one_line_naming_it_and_nothing_starts(tmp_path):
    env = server_env(f"sqlite:///{tmp_path}/x.db", GUNICORN_BIND=f"127.0.0.1:{free_port()}", GUNICORN_WORKERS=2)
    for setting, value in (("CREDIT_HOLD_TTL_SECONDS", "0"), ("JOB_MAX_ATTEMPTS", "three"), ("METRICS_PORT", "-1"),
                           ("GUNICORN_THREADS", "many")):
        started = subprocess.run([sys.executable, "-m", "gunicorn", "-c", str(CONFIG), "wsgi:app"], cwd=ROOT,
                                 env={**env, setting: value}, capture_output=True, text=True, timeout=60)
        output = started.stdout + started.stderr
        errors = [line for line in output.splitlines() if "error" in line.lower()]
        assert started.returncode == 4 and "Traceback" not in output and "Booting" not in output, output
        assert len(errors) == 1 and errors[0].startswith("creditapp: configuration error: " + setting), output
    cli = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "credits", "verify"], cwd=ROOT,
                         env={**env, "JOB_MAX_ATTEMPTS": "three"}, capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0
    assert cli.stderr.strip().splitlines() == ["creditapp: configuration error: JOB_MAX_ATTEMPTS must be an "
                                               "integer, got 'three'"]


def test_metrics_on_a_port_of_their_own_cover_every_worker_and_leave_the_api_port(app, make_user, database_url,
                                                                                   tmp_path):
    user = make_user(credits=20)
    port = free_port()
    env = server_env(database_url, METRICS_PORT=port)
    with gunicorn(env, workers=2, config_file=CONFIG, log_path=tmp_path / "gunicorn.log") as server:
        for i in range(6):
            assert requests.post(server.url + GENERATE, json={"prompt": str(i)}, headers=user.headers,
                                 timeout=30).status_code == 200
        on_api = requests.get(server.url + "/metrics", timeout=10)
        scraped = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert on_api.status_code == 404
    assert metric(scraped, "creditapp_credits_total", event="charged", feature="basic_generation") == 6
    assert metric(scraped, "creditapp_http_request_duration_seconds_count", endpoint="generate.generate_image",
                  status="200") == 6


def test_without_a_metrics_port_the_api_serves_them(client):
    assert client.get("/metrics").status_code == 200


def test_with_a_metrics_port_the_app_serves_none(database_url):
    app = make_app(database_url, METRICS_PORT=9999)
    with app.app_context():
        assert app.test_client().get("/metrics").status_code == 404
