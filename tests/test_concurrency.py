"""Many requests at once, from real threads and real worker processes: the balance can never be
overdrawn, every success is paid for exactly once, and every failure is free."""
import time
from pathlib import Path

import pytest
import requests

from creditapp.credits import CreditType, InsufficientCredits, credit_service

from creditapp.testing.servers import fire_together, flask_cli, gunicorn, server_env

GEN = CreditType.GENERATION_CREDITS


def test_threads_cannot_reserve_more_than_the_balance(app, make_user):
    user = make_user(credits=15)

    def spend(_):
        with app.app_context():
            try:
                hold = credit_service.reserve(user.id, 1, GEN)
            except InsufficientCredits:
                return "refused"
            credit_service.settle(hold, 1)
            credit_service.close(hold, succeeded=True)
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


def _lots(user_id: int):
    from sqlalchemy import select

    from creditapp.ledger.lots import LOTS
    from creditapp.ledger.transactions import atomic

    with atomic(write=False) as session:
        return session.execute(select(LOTS).where(LOTS.c.wallet_id == user_id, LOTS.c.credit_type == GEN.value)
                               .order_by(LOTS.c.id)).all()


@pytest.mark.slow
def test_parallel_spends_across_lots_never_take_more_than_a_lot_had(app, make_user, database_url, tmp_path: Path):
    """Five lots of 10 in different orders of priority and expiry; 80 requests at once."""
    from datetime import timedelta

    from creditapp.ledger.clock import utcnow

    user = make_user(credits=0)
    now = utcnow()
    for priority, days in ((50, None), (10, 30), (10, 5), (90, None), (50, 2)):
        credit_service.grant(user.id, 10, GEN, priority=priority,
                             expires_at=now + timedelta(days=days) if days else None)
    env = server_env(database_url, AI_STUB_LATENCY_MS=10)
    with gunicorn(env, workers=4, threads=2) as server:
        def generate(i):
            with requests.Session() as http:
                return http.post(f"{server.url}/api/generate", json={"prompt": f"{i}"},
                                 headers=user.headers, timeout=60).status_code

        statuses = fire_together(80, generate)
    print(f"\n[figures] 80 requests on five lots of 10: {statuses.count(200)} x 200, {statuses.count(403)} x 403")
    assert (statuses.count(200), statuses.count(403)) == (50, 30)
    assert [(lot.remaining, lot.held) for lot in _lots(user.id)] == [(0, 0)] * 5
    assert credit_service.verify() == []


@pytest.mark.slow
def test_spends_racing_a_lots_expiry_never_spend_an_expired_credit(app, make_user, database_url):
    """A lot of 500 that expires 1.5 s into a stream of requests, and a lot of 5 that never does:
    no hold may take a credit of the first lot from its expiry on."""
    from datetime import timedelta

    from sqlalchemy import select

    from creditapp.ledger.clock import utcnow
    from creditapp.ledger.tables import CreditHold, CreditHoldLot
    from creditapp.ledger.transactions import atomic

    user = make_user(credits=0)
    lasting = credit_service.grant(user.id, 5, GEN, priority=2).lot_id
    env = server_env(database_url, AI_STUB_LATENCY_MS=5)
    statuses = []
    with gunicorn(env, workers=4, threads=2) as server:
        # Granted once the server is up, so that it expires in the middle of the stream.
        expiring = credit_service.grant(user.id, 500, GEN, priority=1,
                                        expires_at=utcnow() + timedelta(seconds=1.5)).lot_id
        def stream(_):
            deadline = time.monotonic() + 3
            with requests.Session() as http:
                while time.monotonic() < deadline:
                    statuses.append(http.post(f"{server.url}/api/generate", json={"prompt": "x"},
                                              headers=user.headers, timeout=30).status_code)

        fire_together(8, stream)
    with atomic(write=False) as session:
        drawn = session.execute(
            select(CreditHold.created_at, CreditHoldLot.lot_id)
            .join(CreditHoldLot, CreditHoldLot.hold_id == CreditHold.id)
            .where(CreditHold.wallet_id == user.id)
        ).all()
    lots = {lot.id: lot for lot in _lots(user.id)}
    late = [row for row in drawn if row.lot_id == expiring and row.created_at >= lots[expiring].expires_at]
    print(f"\n[figures] spends racing an expiry: {statuses.count(200)} x 200, {statuses.count(403)} x 403, "
          f"{sum(1 for r in drawn if r.lot_id == expiring)} holds on the expiring lot, {len(late)} after its expiry")
    assert late == []
    assert any(row.lot_id == expiring for row in drawn), "nothing spent the lot before it expired: no race"
    assert set(statuses) <= {200, 403} and statuses.count(403) > 0
    assert lots[lasting].remaining == 0  # after the expiry, only the lasting lot paid
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    credit_service.release_expired()
    assert credit_service.verify() == []


@pytest.mark.slow
def test_refunds_racing_each_other_over_http_refund_once(app, make_user, database_url):
    """20 full refunds of one charge at once, and 20 partial refunds of 2 of a charge of 7."""
    admin, user = make_user(admin=True), make_user(credits=20)
    hold = credit_service.reserve(user.id, 7, GEN)
    credit_service.settle(hold, 7)
    other = credit_service.reserve(user.id, 7, GEN)
    credit_service.settle(other, 7)
    env = server_env(database_url)
    with gunicorn(env, workers=4, threads=2) as server:
        def refund(i, hold_id, body):
            with requests.Session() as http:
                response = http.post(f"{server.url}/api/admin/charges/{hold_id}/refund", json=body,
                                     headers=admin.headers, timeout=60)
                return response.status_code, response.json().get("error")

        full = fire_together(20, lambda i: refund(i, hold.hold_id, {"reason": "race"}))
        partial = fire_together(20, lambda i: refund(i, other.hold_id, {"reason": "race", "amount": 2}))
    print(f"\n[figures] 20 full refunds at once: {full.count((200, None))} x 200; "
          f"20 partial refunds of 2 from 7: {partial.count((200, None))} x 200")
    assert full.count((200, None)) == 1 and full.count((409, "already_refunded")) == 19
    assert partial.count((200, None)) == 3  # 2 + 2 + 2; the last 1 cannot take 2
    assert set(partial) == {(200, None), (409, "refund_exceeds_charge")}
    assert credit_service.get_credit_balance(user.id).generation_credits == 6 + 7 + 6
    assert credit_service.verify() == []
