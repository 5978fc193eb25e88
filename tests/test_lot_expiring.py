"""lot.expiring: once per lot with credits left, LOT_EXPIRING_DAYS before it expires, written by
the webhooks' sweep (both databases)."""
import json
from datetime import timedelta

from sqlalchemy import select

from creditapp.ledger import CreditType, credit_service, team_wallet
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.testing.servers import fire_together
from creditapp.webhooks.expiring import emit_expiring
from creditapp.webhooks.queue import webhook_queue
from creditapp.webhooks.tables import EVENTS

from .test_wallets import make_team

GEN = CreditType.GENERATION_CREDITS
DAY = 86400


def notices() -> list[dict]:
    with atomic(write=False) as session:
        rows = session.execute(select(EVENTS).where(EVENTS.c.type == "lot.expiring").order_by(EVENTS.c.id)).all()
    return [json.loads(row.payload) for row in rows]


def test_each_lot_with_credits_left_is_told_once_days_before_it_expires(app, make_user, manual_clock):
    now = utcnow()
    user = make_user(credits=1)  # a signup lot that never expires: never told
    soon = credit_service.grant(user.id, 10, GEN, reason="soon", expires_at=now + timedelta(days=2))
    later = credit_service.grant(user.id, 4, GEN, reason="later", expires_at=now + timedelta(days=5), source="purchase",
                                 priority=60)
    spent = credit_service.grant(user.id, 2, GEN, reason="spent", expires_at=now + timedelta(days=1), priority=0)
    credit_service.deduct_credits(user.id, 2, GEN)  # the lowest priority first: `spent` has nothing left
    hold = credit_service.reserve(user.id, 3, GEN)  # 3 of `soon` held: 7 of it would lapse

    assert emit_expiring(3) == 1
    assert notices() == [{"lot_id": soon.lot_id, "wallet_id": user.id, "user_id": user.id, "team_id": None,
                          "credit_type": "generation_credits", "amount": 7,
                          "expires_at": soon.lot["expires_at"].isoformat().replace("+00:00", "Z"), "source": "admin"}]
    assert emit_expiring(3) == 0  # told once
    credit_service.close(hold, succeeded=False)
    manual_clock.advance(2.5 * DAY)  # `soon` has expired, `later` is 2.5 days away
    assert emit_expiring(3) == 1
    assert [(n["lot_id"], n["amount"], n["source"]) for n in notices()] == [(soon.lot_id, 7, "admin"),
                                                                            (later.lot_id, 4, "purchase")]
    manual_clock.advance(DAY)
    assert emit_expiring(3) == 0 and emit_expiring(0) == 0
    assert spent.lot_id not in [n["lot_id"] for n in notices()]


def test_sweeps_at_once_tell_each_lot_once_and_in_batches(app, make_user, manual_clock):
    user = make_user()
    team = team_wallet(make_team())
    at = utcnow() + timedelta(days=1)
    lots = [credit_service.grant(wallet, 1, GEN, reason=f"lot {i}", expires_at=at).lot_id
            for i, wallet in enumerate([user.id] * 7 + [team] * 5)]

    def sweep(_):
        with app.app_context():
            return emit_expiring(3, batch=2)

    assert sum(fire_together(4, sweep)) == 12
    told = notices()
    assert sorted(n["lot_id"] for n in told) == sorted(lots)
    assert {(n["wallet_id"], n["user_id"], n["team_id"]) for n in told} == {
        (user.id, user.id, None), (team, None, team - 2**31)}


def test_the_webhooks_sweep_writes_the_notices_that_are_due(app, make_user, manual_clock):
    user = make_user()
    credit_service.grant(user.id, 5, GEN, reason="plan", expires_at=utcnow() + timedelta(days=4))
    webhook_queue().sweep(inline=True)
    assert notices() == []
    manual_clock.advance(DAY + 1)  # 3 days (the default LOT_EXPIRING_DAYS) before it expires
    webhook_queue().sweep(inline=True)
    webhook_queue().sweep(inline=True)
    assert [n["amount"] for n in notices()] == [5]
