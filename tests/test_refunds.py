"""Refunds of charges and voids of lots, through the service, the API and the CLI, on both databases."""
from datetime import timedelta

import pytest
from sqlalchemy import select

from creditapp.ledger import (
    AlreadyRefunded, CreditType, LotAlreadyVoided, NotACharge, RefundExceedsCharge, UnknownCharge, credit_service,
)
from creditapp.ledger.tables import LedgerEntry
from creditapp.ledger.transactions import atomic

from creditapp.testing.servers import fire_together
from .test_lots import credits, grant, lots_of

GEN = CreditType.GENERATION_CREDITS


def kinds(user) -> list[str]:
    with atomic(write=False) as session:
        return list(session.execute(select(LedgerEntry.kind).where(
            LedgerEntry.wallet_id == user.id, LedgerEntry.credit_type == GEN.value).order_by(LedgerEntry.id)).scalars())


def charge(user, amount):
    hold = credit_service.reserve(user.id, amount, GEN)
    credit_service.settle(hold, amount)
    return hold.hold_id


# --- refunds -----------------------------------------------------------------------------------------

def test_a_full_refund_gives_the_charge_back_to_its_lots_and_a_second_adds_nothing(make_user):
    user = make_user()
    first, second = grant(user, 3, priority=1), grant(user, 10, priority=2)
    hold_id = charge(user, 5)  # 3 from the first lot, 2 from the second
    refund = credit_service.refund(hold_id, reason="customer complaint")
    assert (refund.amount, refund.refundable, credits(user)) == (5, 0, 13)
    assert lots_of(user) == {first: (3, 0), second: (10, 0)}
    assert sorted((p["lot_id"], p["amount"]) for p in refund.lots) == [(first, 3), (second, 2)]
    with pytest.raises(AlreadyRefunded):
        credit_service.refund(hold_id, reason="again")
    assert credits(user) == 13
    assert credit_service.verify() == []


def test_a_partial_refund_undoes_the_charge_from_its_end(make_user):
    user = make_user()
    first, second = grant(user, 3, priority=1), grant(user, 10, priority=2)
    hold_id = charge(user, 5)
    refund = credit_service.refund(hold_id, 3, reason="partial")
    assert [(p["lot_id"], p["amount"]) for p in refund.lots] == [(second, 2), (first, 1)]  # spent last, back first
    assert lots_of(user) == {first: (1, 0), second: (10, 0)}
    with pytest.raises(RefundExceedsCharge) as too_much:
        credit_service.refund(hold_id, 3, reason="more than is left")
    assert too_much.value.refundable == 2
    assert credit_service.refund(hold_id, 2, reason="the rest").refundable == 0
    assert credits(user) == 13
    assert credit_service.verify() == []


def test_a_refund_to_a_lot_that_has_expired_lapses_at_once(make_user, manual_clock):
    user = make_user()
    lot = grant(user, 5, expires_at=manual_clock() + timedelta(days=1))
    hold_id = charge(user, 4)
    manual_clock.advance(86400)
    refund = credit_service.refund(hold_id, reason="late")
    assert refund.lots == [{"lot_id": lot, "amount": 4, "lapsed": True}]
    assert credits(user) == 0
    assert kinds(user)[-2:] == ["refund", "expire"]
    assert credit_service.verify() == []


@pytest.mark.parametrize("state", ["open", "released", "unknown"])
def test_only_a_charge_can_be_refunded(make_user, state):
    user = make_user(credits=3)
    hold = credit_service.reserve(user.id, 1, GEN)
    if state == "released":
        credit_service.close(hold, succeeded=False)
    expected = UnknownCharge if state == "unknown" else NotACharge
    with pytest.raises(expected):
        credit_service.refund(hold.hold_id + (1000 if state == "unknown" else 0), reason="x")


def test_refunds_racing_each_other_refund_once(app, make_user):
    user = make_user(credits=10)
    hold_id = charge(user, 6)

    def refund(_):
        with app.app_context():
            try:
                return credit_service.refund(hold_id, reason="twice?").amount
            except AlreadyRefunded:
                return "already"

    results = fire_together(12, refund)
    assert sorted(results, key=str) == [6] + ["already"] * 11
    assert credits(user) == 10
    assert credit_service.verify() == []


# --- voids ---------------------------------------------------------------------------------------------

def test_a_void_removes_what_nobody_holds_and_voids_the_rest_when_it_comes_back(make_user):
    user = make_user()
    lot, other = grant(user, 10, priority=1), grant(user, 4, priority=2)
    hold = credit_service.reserve(user.id, 6, GEN)
    result = credit_service.void_lot(lot, reason="chargeback")
    assert (result["voided"], result["lot"]["status"], result["lot"]["held"]) == (4, "voided", 6)
    assert credits(user) == 4
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 2, GEN)
    credit_service.close(hold, succeeded=True)  # 2 spent normally, 4 voided on their way back
    assert lots_of(user) == {lot: (0, 0), other: (4, 0)}
    assert kinds(user) == ["grant", "grant", "hold", "void", "settle", "void"]
    assert credits(user) == 4
    with pytest.raises(LotAlreadyVoided):
        credit_service.void_lot(lot, reason="again")
    refund = credit_service.refund(hold.hold_id, reason="after the void")
    assert refund.lots == [{"lot_id": lot, "amount": 2, "lapsed": True}] and credits(user) == 4
    assert kinds(user)[-2:] == ["refund", "void"]
    assert credit_service.verify() == []


# --- over HTTP and the CLI -----------------------------------------------------------------------------

def test_refund_and_void_over_http(client, make_user, stub):
    admin, user = make_user(admin=True), make_user(credits=3)
    assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
    hold_id = client.get("/api/credits/transactions?limit=1", headers=user.headers).json["items"][0]["hold_id"]
    path = f"/api/admin/charges/{hold_id}/refund"
    headers = {**admin.headers, "Idempotency-Key": "refund-1"}
    first = client.post(path, json={"reason": "bad image"}, headers=headers)
    assert first.status_code == 200, first.json
    assert (first.json["refund"]["amount"], first.json["generation_credits"]) == (1, 3)
    again = client.post(path, json={"reason": "bad image"}, headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true" and again.json == first.json
    twice = client.post(path, json={"reason": "bad image"}, headers=admin.headers)
    assert (twice.status_code, twice.json["error"]) == (409, "already_refunded")
    assert client.post(path, json={"reason": "x"}, headers=user.headers).status_code == 403
    for body in ({}, {"reason": ""}, {"reason": "x", "amount": 0}, {"reason": "x", "amount": "1"}):
        assert client.post(path, json=body, headers=admin.headers).status_code == 422
    missing = client.post("/api/admin/charges/999999/refund", json={"reason": "x"}, headers=admin.headers)
    assert (missing.status_code, missing.json["error"]) == (404, "unknown_charge")
    lot_id = client.get("/api/credits/lots", headers=user.headers).json["items"][0]["id"]
    void = client.post(f"/api/admin/lots/{lot_id}/void", json={"reason": "reversed"}, headers=admin.headers)
    assert void.status_code == 200, void.json
    assert (void.json["voided"], void.json["lot"]["status"], void.json["generation_credits"]) == (3, "voided", 0)
    again = client.post(f"/api/admin/lots/{lot_id}/void", json={"reason": "reversed"}, headers=admin.headers)
    assert (again.status_code, again.json["error"]) == (409, "lot_voided")
    assert client.post("/api/admin/lots/999999/void", json={"reason": "x"}, headers=admin.headers).json["error"] == "unknown_lot"
    assert credit_service.verify() == []


def test_refund_and_void_from_the_cli(app, make_user):
    user = make_user(credits=5)
    hold_id = charge(user, 3)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["credits", "refund", str(hold_id), "--amount", "2"])
    assert result.exit_code == 0 and "refunded 2 generation_credits" in result.output, result.output
    refused = runner.invoke(args=["credits", "refund", str(hold_id), "--amount", "2"])
    assert refused.exit_code != 0 and "1 left to refund" in refused.output
    lot = lots_of(user)
    result = runner.invoke(args=["credits", "void", str(next(iter(lot))), "--reason", "reversed"])
    assert result.exit_code == 0 and "removed" in result.output, result.output
    assert credits(user) == 0
    assert credit_service.verify() == []


def test_one_idempotency_key_sent_many_times_at_once_refunds_once_and_replays(app, make_user):
    admin, user = make_user(admin=True), make_user(credits=10)
    hold_id = charge(user, 6)

    def refund(_):
        response = app.test_client().post(f"/api/admin/charges/{hold_id}/refund", json={"reason": "dup"},
                                          headers={**admin.headers, "Idempotency-Key": "once"})
        return response.status_code, response.get_json()

    results = fire_together(12, refund)
    assert {status for status, _ in results} <= {200, 409}
    answers = [body for status, body in results if status == 200]
    assert answers and all(body == answers[0] for body in answers)  # the first answer, replayed
    assert all(body["error"] == "idempotency_key_in_use" for status, body in results if status == 409)
    assert credits(user) == 10
    assert credit_service.verify() == []
