"""gunicorn's gevent worker (GUNICORN_WORKER_CLASS=gevent), the recommended one for slow
generations: the paid path with psycopg and the pool, the per-user rate limit, job submits on the
embedded queue and streams from an OpenAI-compatible provider all work under its monkey-patching."""
import http.client
import json
import time
import uuid
from urllib.parse import urlsplit

import pytest
import redis
import requests

from creditapp.ai import count_tokens
from creditapp.ledger import credit_service
from creditapp.testing import ledger_is_clean
from creditapp.testing.brokers import broker_queue
from creditapp.testing.servers import job_workers, server_env

pytestmark = pytest.mark.slow
PROMPT = "write a short poem about the sea"


def test_parallel_paid_requests_spend_exactly_the_balance(app, make_user, live_server):
    user = make_user(credits=7)
    with live_server(worker_class="gevent", threads=100, AI_STUB_LATENCY_MS=300) as server:
        answers = server.fire(30, "POST", "/api/generate", json={"prompt": "a lighthouse"}, headers=user.headers)
    assert sorted(a.status for a in answers) == [200] * 7 + [403] * 23, [a.json for a in answers]
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    ledger_is_clean()


def test_the_paid_rate_limit_counts_exactly(app, make_user, live_server):
    user = make_user(credits=20)
    with live_server(workers=1, worker_class="gevent", PAID_RATE_LIMIT="4 per minute") as server:
        answers = server.fire(10, "POST", "/api/generate", json={"prompt": "a lighthouse"}, headers=user.headers)
    assert sorted(a.status for a in answers) == [200] * 4 + [429] * 6
    assert credit_service.get_credit_balance(user.id).generation_credits == 16
    ledger_is_clean()


def test_a_job_submitted_under_gevent_runs_on_a_worker(app, database_url, make_user, live_server, tmp_path):
    user = make_user(credits=2)
    with broker_queue("redis") as queue, job_workers(server_env(database_url, **queue), 1, tmp_path), \
            live_server(worker_class="gevent", AI_STUB_LATENCY_MS=200, **queue) as server:
        submitted = requests.post(f"{server.url}/api/generate", json={"prompt": "a lighthouse"}, timeout=30,
                                  headers={**user.headers, "Prefer": "respond-async"})
        assert submitted.status_code == 202, submitted.text
        deadline = time.monotonic() + 30
        while True:
            job = requests.get(server.url + submitted.headers["Location"], headers=user.headers, timeout=30).json()
            if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert job["status"] == "succeeded" and job["charged"]["amount"] == 1, job
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    ledger_is_clean()


def test_streams_from_an_openai_compatible_provider(app, make_user, live_server, fake_openai):
    user = make_user(tokens=100)
    fake_openai.tokens_per_second = 10
    with live_server(worker_class="gevent", **fake_openai.settings) as server:
        parts = urlsplit(server.url)
        for leave_after in (None, 3):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request("POST", "/api/ai/complete", headers={**user.headers, "Content-Type": "application/json"},
                         body=json.dumps({"prompt": PROMPT, "max_tokens": 20, "stream": True}))
            response = conn.getresponse()
            events = []
            while leave_after is None or len(events) < leave_after:
                line = response.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    events.append(json.loads(line[len(b"data: "):]))
            response.close()
            conn.close()
            if leave_after is None:
                assert events[-1]["type"] == "done" and events[-1]["usage"]["total_tokens"] == 18, events[-1]
    expected = 100 - 18 - (count_tokens(PROMPT) + 3)
    deadline = time.monotonic() + 10
    while credit_service.get_credit_balance(user.id).ai_tokens != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert credit_service.get_credit_balance(user.id).ai_tokens == expected
    ledger_is_clean()


def test_hundreds_in_flight_share_the_rate_limiters_redis_without_errors(app, make_user, live_server):
    """redis-py's default pool fails past 100 connections (MaxConnectionsError, a 500); the
    limiter's and the blocklist's pools wait for a free connection instead."""
    from creditapp.testing.brokers import BROKERS
    from creditapp.testing.databases import missing

    try:
        redis.Redis.from_url(BROKERS["redis"], socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        missing("CREDITAPP_REQUIRE_BROKERS", "redis", str(exc))
    user = make_user(credits=1000)
    with live_server(workers=1, worker_class="gevent", threads=400, AI_STUB_LATENCY_MS=1000,
                     RATELIMIT_STORAGE_URI=BROKERS["redis"], RATELIMIT_KEY_PREFIX=f"gevent-{uuid.uuid4().hex}-",
                     TOKEN_BLOCKLIST_URL=BROKERS["redis"]) as server:
        answers = server.fire(300, "POST", "/api/generate", json={"prompt": "a lighthouse"}, headers=user.headers)
    assert [a.status for a in answers] == [200] * 300, sorted({(a.status, str(a.json)[:80]) for a in answers})
    assert credit_service.get_credit_balance(user.id).generation_credits == 700
    ledger_is_clean()
