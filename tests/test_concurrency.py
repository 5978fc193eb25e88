"""Many requests at once, from real threads and real worker processes: the balance can never be
overdrawn, every success is paid for exactly once, and every failure is free."""
from pathlib import Path

import pytest
import requests

from creditapp.credits import CreditType, InsufficientCredits, credit_service

from .server import fire_together, flask_cli, gunicorn, server_env

GEN = CreditType.GENERATION_CREDITS


def test_threads_cannot_reserve_more_than_the_balance(app, make_user):
    user = make_user(credits=15)

    def spend(_):
        with app.app_context():
            try:
                reservation = credit_service.reserve(user.id, 1, GEN)
            except InsufficientCredits:
                return "refused"
            credit_service.settle(reservation, 1)
            credit_service.close(reservation, succeeded=True)
            return "paid"

    results = fire_together(40, spend)
    assert results.count("paid") == 15
    assert results.count("refused") == 25
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    assert credit_service.verify() == []


def test_grants_and_spends_together_add_up(app, make_user):
    user = make_user(credits=0)

    def act(i):
        with app.app_context():
            if i % 2:
                credit_service.add_credits(user.id, 1, GEN)
                return "granted"
            try:
                credit_service.deduct_credits(user.id, 1, GEN)
                return "spent"
            except InsufficientCredits:
                return "refused"

    results = fire_together(60, act)
    expected = results.count("granted") - results.count("spent")
    assert credit_service.get_credit_balance(user.id).generation_credits == expected >= 0
    assert credit_service.verify() == []


@pytest.mark.slow
def test_gunicorn_workers_sell_exactly_the_balance(app, make_user, database_url, tmp_path: Path):
    """200 simultaneous 1-credit generations against a balance of 50, from 4 gunicorn workers."""
    user = make_user(credits=50)
    calls = tmp_path / "ai-calls.log"
    env = server_env(database_url, AI_STUB_CALL_LOG=calls, AI_STUB_LATENCY_MS=20)
    with gunicorn(env, workers=4, log_path=tmp_path / "gunicorn.log") as server:
        def generate(i):
            with requests.Session() as http:
                response = http.post(f"{server.url}/api/generate", json={"prompt": f"image {i}"},
                                     headers=user.headers, timeout=60)
                return response.status_code, response.json()

        results = fire_together(200, generate)
    statuses = [status for status, _ in results]
    print(f"\n[figures] 4 workers, {database_url.split(':')[0]}: 200 requests on a balance of 50 -> "
          f"{statuses.count(200)} x 200, {statuses.count(403)} x 403, "
          f"{calls.read_text().count(chr(10))} AI calls")
    assert statuses.count(200) == 50, sorted(set(statuses))
    assert statuses.count(403) == 150
    refused = [body for status, body in results if status == 403]
    assert all(body["error"] == "insufficient_credits" and body["required"] == 1 for body in refused)
    assert calls.read_text().count("\n") == 50
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    verify = flask_cli(env, "credits", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "ledger ok" in verify.stdout
    assert "database is locked" not in (tmp_path / "gunicorn.log").read_text()
