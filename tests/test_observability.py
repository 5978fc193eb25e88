"""Metrics, structured logs and request ids."""
import io
import json
import logging
import re
from pathlib import Path

import requests

from creditapp.testing import make_app
from creditapp.testing.servers import fire_together, gunicorn, server_env


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_credit_metrics_move(client, make_user, stub):
    user = make_user(credits=1)
    # The feature's declared name, as a job of it is labelled (tests/test_support_noise.py).
    feature = {"feature": "basic_generation", "credit_type": "generation_credits"}
    assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
    assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 403
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "creditapp_credits_total", event="reserved", **feature) == 1
    assert metric(text, "creditapp_credits_total", event="charged", **feature) == 1
    assert metric(text, "creditapp_insufficient_credits_total", **feature) == 1
    assert metric(text, "creditapp_open_holds") == 0
    assert metric(text, "creditapp_ai_call_seconds_count", feature="basic_generation", outcome="ok") == 1
    assert metric(text, "creditapp_http_request_duration_seconds_count", endpoint="generate.generate_image",
                  status="403") == 1


def test_ai_failures_and_released_credits_are_counted(client, make_user, stub):
    user = make_user(tokens=100)
    stub.failure_rate = 1.0
    response = client.post("/api/ai/complete", json={"prompt": "hi there", "max_tokens": 10}, headers=user.headers)
    assert response.status_code == 502
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "creditapp_ai_failures_total", feature="ai_complete") == 1
    assert metric(text, "creditapp_credits_total", event="released", feature="ai_complete") == 12
    assert metric(text, "creditapp_credits_total", event="charged") == 0


def test_request_id_is_echoed_or_made(client):
    assert client.get("/healthz", headers={"X-Request-ID": "edge-42"}).headers["X-Request-ID"] == "edge-42"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id; drop table"}).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)


def test_json_log_line_per_request_without_secrets(database_url, stub):
    app = make_app(database_url, LOG_FORMAT="json")
    stream = io.StringIO()
    for name in ("creditapp.access", "creditapp"):
        for handler in logging.getLogger(name).handlers:
            handler.setStream(stream)
    with app.app_context():
        from creditapp.ai import set_provider

        set_provider(app, stub)
        client = app.test_client()
        password = "a-very-secret-password"
        client.post("/api/auth/register", json={"username": "logged", "password": password})
        token = client.post("/api/auth/login", json={"username": "logged", "password": password}).json["access_token"]
        client.post("/api/generate", json={"prompt": "x"},
                    headers={"Authorization": f"Bearer {token}", "X-Request-ID": "trace-1"})
        key = client.post("/api/keys", json={"name": "script"}, headers={"Authorization": f"Bearer {token}"}).json
        client.post("/api/generate", json={"prompt": "y"}, headers={"X-API-Key": key["key"], "X-Request-ID": "trace-2"})
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_key = next(line for line in lines if line.get("request_id") == "trace-2")
    # A key acts as the user who made it: its requests are that user's in the log, with the key.
    assert (by_key["status"], by_key["api_key_id"]) == (200, key["id"])
    assert by_key["user_id"] == next(line for line in lines if line.get("request_id") == "trace-1")["user_id"]
    assert key["key"] not in stream.getvalue()
    paid = next(line for line in lines if line.get("request_id") == "trace-1")
    assert paid["path"] == "/api/generate" and paid["status"] == 200
    assert (paid["feature"], paid["credit_type"], paid["reserved"], paid["charged"], paid["outcome"]) == (
        "basic_generation", "generation_credits", 1, 1, "charged")
    assert paid["user_id"] is not None and paid["level"] == "INFO"
    assert password not in stream.getvalue() and token not in stream.getvalue()


def test_metrics_add_up_across_gunicorn_workers(app, make_user, database_url, tmp_path: Path):
    user = make_user(credits=1000)
    env = server_env(database_url, PROMETHEUS_MULTIPROC_DIR=tmp_path / "metrics")
    (tmp_path / "metrics").mkdir()
    with gunicorn(env, workers=4) as server:
        fire_together(40, lambda i: requests.post(f"{server.url}/api/generate", json={"prompt": str(i)},
                                                  headers=user.headers, timeout=30).status_code)
        scrapes = [requests.get(f"{server.url}/metrics", timeout=10).text for _ in range(4)]
    for text in scrapes:  # whichever worker answered, it reports the whole server
        assert metric(text, "creditapp_credits_total", event="charged") == 40
        assert metric(text, "creditapp_http_request_duration_seconds_count", endpoint="generate.generate_image",
                      status="200") == 40


class OverrunningProvider:
    """A provider whose usage comes out larger than any estimate (another tokenizer, say)."""

    def __init__(self, extra_tokens: int):
        self.extra_tokens, self.calls = extra_tokens, 0

    def generate_image(self, params, feature="basic_generation"):
        raise AssertionError("not used")

    def complete(self, prompt, max_tokens):
        from creditapp.ai import Completion, count_tokens
        self.calls += 1
        return Completion("lorem " * max_tokens, count_tokens(prompt), max_tokens + self.extra_tokens)


def test_usage_beyond_the_hold_and_the_balance_is_its_own_outcome(app, client, make_user, caplog):
    """The AI was already called: the answer is a 403 and nothing is charged, counted and logged
    as usage_exceeded_hold (not as a plain insufficient_credits refusal)."""
    from creditapp.ai import set_provider
    from creditapp.credits import credit_service

    provider = OverrunningProvider(extra_tokens=5)
    set_provider(app, provider)
    user = make_user(tokens=12)  # "hi there" is 2 tokens: the hold of 2 + 10 is the whole balance
    with caplog.at_level(logging.INFO, logger="creditapp.access"):
        response = client.post("/api/ai/complete", json={"prompt": "hi there", "max_tokens": 10},
                               headers=user.headers)
    assert response.status_code == 403, response.json
    assert (response.json["error"], response.json["required"], response.json["available"]) == (
        "insufficient_credits", 17, 12)
    assert provider.calls == 1
    assert credit_service.get_credit_balance(user.id).ai_tokens == 12  # nothing charged
    labels = {"feature": "ai_complete", "credit_type": "ai_tokens"}
    text = client.get("/metrics").get_data(as_text=True)
    assert metric(text, "creditapp_usage_exceeded_hold_total", **labels) == 1
    assert metric(text, "creditapp_insufficient_credits_total", **labels) == 0
    outcomes = [getattr(r, "outcome", None) for r in caplog.records if r.name == "creditapp.access"]
    assert outcomes[-1] == "usage_exceeded_hold"
    assert credit_service.verify() == []
