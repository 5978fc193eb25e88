"""Lots: the spending order, exact expiry, receipts, and the audit of it all, on both databases.

Time is a ManualClock; nothing waits for an expiry.
"""
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from creditapp.ledger import CreditType, InsufficientCredits, credit_service
from creditapp.ledger.lots import LOTS, RECEIPTS
from creditapp.ledger.tables import LedgerEntry
from creditapp.ledger.transactions import atomic

GEN = CreditType.GENERATION_CREDITS


def lots_of(user) -> dict[int, tuple[int, int]]:
    """lot id -> (remaining, held)"""
    with atomic(write=False) as session:
        rows = session.execute(select(LOTS.c.id, LOTS.c.remaining, LOTS.c.held)
                               .where(LOTS.c.wallet_id == user.id, LOTS.c.credit_type == GEN.value))
        return {row.id: (row.remaining, row.held) for row in rows}


def rows_of(user) -> list[tuple[str, int | None, int, int]]:
    with atomic(write=False) as session:
        return [tuple(r) for r in session.execute(
            select(LedgerEntry.kind, LedgerEntry.lot_id, LedgerEntry.amount, LedgerEntry.held_change)
            .where(LedgerEntry.wallet_id == user.id, LedgerEntry.credit_type == GEN.value)
            .order_by(LedgerEntry.id))]


def grant(user, amount, **lot):
    return credit_service.grant(user.id, amount, GEN, **lot).lot_id


def spend(user, amount):
    hold = credit_service.reserve(user.id, amount, GEN)
    credit_service.settle(hold, amount)
    return hold


def credits(user) -> int:
    return credit_service.get_credit_balance(user.id).generation_credits


def test_spending_order_is_priority_then_earliest_expiry_then_oldest(make_user, manual_clock):
    user = make_user()
    now = manual_clock()
    paid = grant(user, 5)  # priority 50, never expires
    month = grant(user, 5, expires_at=now + timedelta(days=30))
    week = grant(user, 5, expires_at=now + timedelta(days=7))
    goodwill = grant(user, 5, priority=10)  # spent before anything of priority 50
    older_paid_twin = paid
    newer_paid = grant(user, 5)
    spend(user, 7)  # goodwill 5, then 2 of the lot that expires first
    assert lots_of(user)[goodwill] == (0, 0)
    assert lots_of(user)[week] == (3, 0)
    spend(user, 9)  # week 3, month 5, then the oldest lot that never expires
    assert lots_of(user)[week] == (0, 0) and lots_of(user)[month] == (0, 0)
    assert lots_of(user)[older_paid_twin] == (4, 0)
    assert lots_of(user)[newer_paid] == (5, 0)
    assert credits(user) == 9
    assert credit_service.verify() == []


def test_a_lot_is_never_spendable_from_its_expiry_on_though_no_sweep_ran(make_user, manual_clock):
    user = make_user()
    lot = grant(user, 5, expires_at=manual_clock() + timedelta(hours=1))
    grant(user, 2)
    manual_clock.advance(3600 - 0.000001)
    assert credits(user) == 7
    manual_clock.advance(0.000001)  # exactly expires_at
    assert credits(user) == 2  # a read: nothing was written
    with pytest.raises(InsufficientCredits) as refused:
        credit_service.reserve(user.id, 3, GEN)
    assert refused.value.available == 2
    assert ("expire", lot, -5, 0) in rows_of(user)  # written by the write that needed it
    assert credit_service.verify() == []


def test_the_held_part_of_an_expiring_lot_settles_normally_and_the_rest_lapses(make_user, manual_clock):
    user = make_user()
    lot = grant(user, 10, expires_at=manual_clock() + timedelta(minutes=5))
    hold = credit_service.reserve(user.id, 6, GEN)
    manual_clock.advance(300)  # the lot expires while 6 of its credits are held
    assert credits(user) == 0
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 2, GEN)
    credit_service.close(hold, succeeded=True)
    assert lots_of(user)[lot] == (4, 0)  # 2 spent, 4 lapsed with the lot; 4 never held are due
    assert credits(user) == 0  # and count for nothing, before any write records their expiry
    credit_service.release_expired()  # the cron sweep records it
    assert lots_of(user)[lot] == (0, 0)
    kinds = [(kind, amount, held) for kind, lot_id, amount, held in rows_of(user) if lot_id == lot]
    assert ("settle", 0, -2) in kinds and ("expire", 0, -4) in kinds and ("expire", -4, 0) in kinds
    assert credit_service.verify() == []


def test_a_hold_across_lots_gives_back_to_the_lots_it_came_from(make_user, manual_clock):
    user = make_user()
    first = grant(user, 3, priority=1)
    second = grant(user, 10, priority=2)
    hold = credit_service.reserve(user.id, 8, GEN)
    assert lots_of(user) == {first: (3, 3), second: (10, 5)}
    later = grant(user, 4, priority=0)  # arrives while the hold is open: the receipt stays
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 4, GEN)
    credit_service.close(hold, succeeded=True)
    assert lots_of(user) == {first: (0, 0), second: (9, 0), later: (4, 0)}
    with atomic(write=False) as session:
        receipt = session.execute(select(RECEIPTS.c.lot_id, RECEIPTS.c.amount, RECEIPTS.c.settled)
                                  .where(RECEIPTS.c.hold_id == hold.hold_id).order_by(RECEIPTS.c.lot_id)).all()
    assert [tuple(r) for r in receipt] == [(first, 3, 3), (second, 5, 1)]
    assert credits(user) == 13
    assert credit_service.verify() == []


def test_a_failed_request_gives_every_credit_back_to_its_lot(make_user):
    user = make_user()
    a, b = grant(user, 2, priority=1), grant(user, 2, priority=2)
    hold = credit_service.reserve(user.id, 3, GEN)
    credit_service.close(hold, succeeded=False)
    assert lots_of(user) == {a: (2, 0), b: (2, 0)}
    assert [k for k, *_ in rows_of(user)] == ["grant", "grant", "hold", "hold", "release", "release"]
    assert credit_service.verify() == []


def test_signup_credits_are_a_lot(make_user):
    user = make_user(credits=3)
    with atomic(write=False) as session:
        lot = session.execute(select(LOTS).where(LOTS.c.wallet_id == user.id, LOTS.c.credit_type == GEN.value)).one()
    assert (lot.source, lot.amount, lot.remaining, lot.expires_at) == ("signup", 3, 3, None)


@pytest.mark.parametrize("tamper, field", [
    ("UPDATE credit_lots SET remaining = remaining - 1 WHERE id = :lot", "remaining"),
    ("UPDATE credit_lots SET held = 1 WHERE id = :lot", "held"),
])
def test_verify_finds_a_tampered_lot(make_user, tamper, field):
    user = make_user()
    lot = grant(user, 4)
    spend(user, 1)
    assert credit_service.verify() == []
    with atomic() as session:
        session.execute(text(tamper), {"lot": lot})
    fields = [p.field for p in credit_service.verify()]
    assert any(f"lot {lot} {field}" in f for f in fields), fields


# --- over HTTP and the CLI -------------------------------------------------------------------------

def admin_grant(client, admin, user, **body):
    return client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 5, **body}, headers=admin.headers)


def test_a_grant_takes_a_priority_and_an_expiry_and_answers_its_lot(client, make_user, manual_clock):
    admin, user = make_user(admin=True), make_user()
    response = admin_grant(client, admin, user, priority=10, expires_in_days=30)
    assert response.status_code == 201, response.json
    lot = response.json["lot"]
    assert (lot["granted"], lot["priority"], lot["source"], lot["status"]) == (5, 10, "admin", "active")
    assert lot["expires_at"].startswith((manual_clock() + timedelta(days=30)).date().isoformat())
    at = (manual_clock() + timedelta(hours=2)).isoformat()
    response = admin_grant(client, admin, user, expires_at=at)
    assert response.status_code == 201, response.json
    assert response.json["lot"]["expires_at"][:19] == at[:19]


@pytest.mark.parametrize("body", [
    {"priority": 101}, {"priority": -1}, {"priority": "5"}, {"priority": 5.0},
    {"expires_in_days": 0}, {"expires_at": "2020-01-01T00:00:00+00:00"}, {"expires_at": "2999-01-01T00:00:00"},
    {"expires_at": "٢٩٩٩-01-01T00:00:00+00:00"}, {"expires_at": "tomorrow"},
    {"expires_at": "2999-01-01T00:00:00+00:00", "expires_in_days": 3},
    {"expires_at": "9999-12-31T23:59:59-05:00"},  # past what a UTC date can hold
    {"expires_at": "9500-01-01T00:00:00+00:00"},
])
def test_an_invalid_priority_or_expiry_is_422_and_grants_nothing(client, make_user, body):
    admin, user = make_user(admin=True), make_user()
    response = admin_grant(client, admin, user, **body)
    assert (response.status_code, response.json["error"]) == (422, "validation_error"), response.json
    assert credits(user) == 0


def test_the_balance_says_what_is_about_to_lapse(client, make_user, manual_clock):
    admin, user = make_user(admin=True), make_user(credits=1)
    admin_grant(client, admin, user, expires_in_days=2)
    admin_grant(client, admin, user, amount=3, expires_in_days=1)
    admin_grant(client, admin, user, amount=7)
    body = client.get("/api/credits/balance", headers=user.headers).json
    assert body["generation_credits"] == 16
    assert [(e["credit_type"], e["amount"]) for e in body["expiring"]] == [
        ("generation_credits", 3), ("generation_credits", 5)]
    manual_clock.advance(86400)
    body = client.get("/api/credits/balance", headers=user.headers).json
    assert (body["generation_credits"], len(body["expiring"])) == (13, 1)


def test_the_lots_are_listed_in_spending_order_page_by_page(client, make_user, manual_clock):
    admin, user = make_user(admin=True), make_user(credits=2)
    admin_grant(client, admin, user, priority=80)
    admin_grant(client, admin, user, priority=10, expires_in_days=9)
    admin_grant(client, admin, user, priority=10, expires_in_days=3)
    first = client.get("/api/credits/lots?credit_type=generation_credits&limit=2", headers=user.headers).json
    rest = client.get(f"/api/credits/lots?credit_type=generation_credits&limit=2&cursor={first['next_cursor']}",
                      headers=user.headers).json
    order = [(lot["priority"], lot["source"]) for lot in first["items"] + rest["items"]]
    assert order == [(10, "admin"), (10, "admin"), (50, "signup"), (80, "admin")]
    assert first["items"][0]["expires_at"] < first["items"][1]["expires_at"]
    assert rest["next_cursor"] is None
    assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
    listed = client.get("/api/credits/lots?credit_type=generation_credits", headers=user.headers).json["items"]
    assert listed[0]["remaining"] == 4  # the first lot in the order paid
    manual_clock.advance(3 * 86400)
    active = client.get("/api/credits/lots?credit_type=generation_credits", headers=user.headers).json["items"]
    every = client.get("/api/credits/lots?include_spent=true&credit_type=generation_credits",
                       headers=user.headers).json["items"]
    assert len(active) == 3 and len(every) == 4
    assert [lot["status"] for lot in every if lot["expires_at"] and lot["remaining"] == 4] == ["expired"]


def test_lots_are_private_and_need_a_token(client, make_user):
    assert client.get("/api/credits/lots").status_code == 401
    response = client.get("/api/credits/lots?limit=０", headers=make_user().headers)
    assert response.status_code == 422


def test_the_cli_grants_a_lot_with_a_priority_and_an_expiry(app, make_user, manual_clock):
    user = make_user()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["credits", "grant", user.username, "4", "--priority", "5", "--expires-in-days", "7"])
    assert result.exit_code == 0, result.output
    assert "priority 5" in result.output and "expires " in result.output
    for bad in (["--priority", "101"], ["--expires-in-days", "0"], ["--expires-at", "2020-01-01T00:00:00+00:00"],
                ["--priority", "٥"]):
        refused = runner.invoke(args=["credits", "grant", user.username, "4", *bad])
        assert refused.exit_code != 0 and "Traceback" not in refused.output, refused.output
    assert credits(user) == 4


def test_signup_credits_can_expire(database_url, manual_clock):
    from creditapp.testing import make_app

    app = make_app(database_url, SIGNUP_GRANT_EXPIRES_DAYS=30)
    with app.app_context():
        client = app.test_client()
        assert client.post("/api/auth/register", json={"username": "newbie", "password": "long-enough-pw"}).status_code == 201
        token = client.post("/api/auth/login", json={"username": "newbie", "password": "long-enough-pw"}).json["access_token"]
        body = client.get("/api/credits/balance", headers={"Authorization": f"Bearer {token}"}).json
        assert {e["credit_type"] for e in body["expiring"]} == {"generation_credits", "ai_tokens"}
        manual_clock.advance(30 * 86400)
        body = client.get("/api/credits/balance", headers={"Authorization": f"Bearer {token}"}).json
        assert (body["generation_credits"], body["ai_tokens"]) == (0, 0)


def test_an_expiry_the_clock_passes_between_the_check_and_the_grant_is_422(client, make_user):
    """The schema and the ledger both check that expires_at is ahead; time moves between them."""
    from datetime import datetime, timezone

    from creditapp.ledger.clock import clock

    admin, user = make_user(admin=True), make_user()
    start = datetime.now(timezone.utc)
    ticks = iter(range(10_000))
    with clock.use(lambda: start + timedelta(seconds=next(ticks))):  # one second per reading
        response = admin_grant(client, admin, user, expires_at=(start + timedelta(seconds=0.5)).isoformat())
    assert (response.status_code, response.json["error"]) == (422, "validation_error"), response.json
    assert response.json["errors"] == {"expires_at": ["Must be in the future."]}
    assert credits(user) == 0
