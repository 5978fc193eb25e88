"""Streams against real gunicorn, under both worker classes (gthread and gevent): a client that
hangs up after k events is charged the prompt and what it received; 50 streams at once for a user
whose tokens cover only some; keep-alive with the recommended gunicorn.conf.py."""
import http.client
import os
import signal
import json
import random
import time
from urllib.parse import urlsplit

import pytest

from creditapp.ai import count_tokens
from creditapp.ledger import credit_service
from creditapp.testing import ledger_is_clean
from creditapp.testing.servers import ROOT, fire_together, gunicorn, server_env

pytestmark = pytest.mark.slow
WORKERS = pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
PROMPT = "write a short poem about the sea"
HELD = count_tokens(PROMPT) + 10  # max_tokens 10
STUB_COMPLETION = min(10, 8 + count_tokens(PROMPT) // 2)  # what the stub completes


def open_stream(url: str, user, max_tokens: int = 10) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", "/api/ai/complete", body=json.dumps({"prompt": PROMPT, "max_tokens": max_tokens,
                                                               "stream": True}),
                 headers={**user.headers, "Content-Type": "application/json"})
    return conn, conn.getresponse()


def read_events(response, limit: int | None = None) -> list:
    """Events as they come (pings left out), `limit` of them at most."""
    events, block = [], b""
    while limit is None or len(events) < limit:
        line = response.readline()
        if not line:
            break
        if line in (b"\n", b"\r\n"):
            if block.startswith(b"data: "):
                events.append(json.loads(block[len(b"data: "):]))
                if events[-1]["type"] != "delta":
                    break
            block = b""
        else:
            block += line.rstrip(b"\r\n")
    return events


def hang_up(conn, response) -> None:
    response.close()  # the response's file holds the socket open too
    conn.close()


def settled(user, expected: int, seconds: float = 10) -> int:
    """The user's tokens once nothing is held for them any more."""
    deadline = time.monotonic() + seconds
    while True:
        balance = credit_service.get_credit_balance(user.id)
        if balance.ai_tokens == expected or time.monotonic() > deadline:
            return balance.ai_tokens
        time.sleep(0.05)


@WORKERS
def test_a_client_that_hangs_up_after_k_events_is_charged_the_prompt_and_what_it_received(
        app, make_user, live_server, worker_class):
    user = make_user(tokens=100)
    with live_server(worker_class=worker_class, AI_STUB_TOKEN_MS=150) as server:
        for k in (1, 3):
            before = credit_service.get_credit_balance(user.id).ai_tokens
            conn, response = open_stream(server.url, user)
            assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
            assert len(read_events(response, limit=k)) == k
            hang_up(conn, response)
            expected = before - (count_tokens(PROMPT) + k)
            assert settled(user, expected) == expected, k
        conn, response = open_stream(server.url, user)  # one read to its end: charged the stub's usage
        events = read_events(response)
        hang_up(conn, response)
        assert events[-1]["type"] == "done" and events[-1]["charged"]["amount"] == count_tokens(PROMPT) + STUB_COMPLETION
    ledger_is_clean()


@WORKERS
def test_fifty_streams_at_once_for_tokens_that_cover_some_never_overdraw_and_each_pays_what_it_got(
        app, make_user, live_server, worker_class):
    covered = 20
    user = make_user(tokens=covered * HELD + 5)
    start = credit_service.get_credit_balance(user.id).ai_tokens
    leaving = {i: random.Random(i).randint(1, 4) for i in range(0, 50, 3)}  # these leave after k events

    def one(i):
        conn, response = open_stream(server.url, user)
        if response.status != 200:
            body = json.loads(response.read())
            hang_up(conn, response)
            return response.status, body["error"], 0
        events = read_events(response, limit=leaving.get(i))
        hang_up(conn, response)
        if i in leaving:
            return 200, "hung_up", count_tokens(PROMPT) + leaving[i]
        assert events[-1]["type"] == "done", events[-1]
        assert events[-1]["charged"]["amount"] == events[-1]["usage"]["total_tokens"]
        return 200, "done", events[-1]["charged"]["amount"]

    # Pieces 200 ms apart: a client that leaves after k events is gone before the next is written.
    with live_server(worker_class=worker_class, threads=30, AI_STUB_TOKEN_MS=200) as server:
        answers = fire_together(50, one)
        charged = sum(amount for _, _, amount in answers)
        assert settled(user, start - charged) == start - charged
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) >= covered and set(statuses) <= {200, 403}, answers
    assert {error for status, error, _ in answers if status == 403} <= {"insufficient_credits"}
    assert credit_service.get_credit_balance(user.id).ai_tokens >= 0
    ledger_is_clean()


@WORKERS
def test_the_recommended_config_keeps_connections_alive(database_url, tmp_path, worker_class):
    env = server_env(database_url, GUNICORN_WORKER_CLASS=worker_class, GUNICORN_THREADS=4)
    log = tmp_path / "gunicorn.log"
    with gunicorn(env, workers=1, config_file=ROOT / "gunicorn.conf.py", log_path=log) as server:
        parts = urlsplit(server.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        sockets = []
        for _ in range(3):
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and response.getheader("Connection", "").lower() != "close"
            sockets.append(conn.sock)
        assert sockets[0] is not None and sockets.count(sockets[0]) == 3  # one connection for all three
        conn.close()
    assert "No keepalived connections" not in log.read_text()


def test_a_worker_killed_mid_stream_leaves_a_hold_that_expires_and_charges_nothing(app, make_user, live_server):
    user = make_user(tokens=100)
    with live_server(workers=1, CREDIT_HOLD_TTL_SECONDS=3, AI_STUB_TOKEN_MS=500) as server:
        conn, response = open_stream(server.url, user)
        assert read_events(response, limit=1)[0]["type"] == "delta"
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        hang_up(conn, response)
        assert credit_service.get_credit_balance(user.id).ai_tokens == 100 - HELD  # held, not charged
        time.sleep(3.5)
        assert credit_service.release_expired() == 1
    assert credit_service.get_credit_balance(user.id).ai_tokens == 100
    ledger_is_clean()
