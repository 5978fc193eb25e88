"""Recurring grants (a plan's allowance) at the ledger: granted by the write or read that needs
them, once per period, with rollover; a moving clock, never a sleep. Both databases."""
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from creditapp.extensions import db
from creditapp.ledger import CreditType, InsufficientCredits, credit_service
from creditapp.ledger import periods
from creditapp.ledger.tables import CreditLot
from creditapp.testing import ledger_is_clean

GEN, TOK = CreditType.GENERATION_CREDITS, CreditType.AI_TOKENS
LOTS = CreditLot.__table__


def plan_lots(wallet_id, credit_type=GEN):
    return db.session.execute(select(LOTS.c.source, LOTS.c.amount, LOTS.c.expires_at).where(
        LOTS.c.wallet_id == wallet_id, LOTS.c.credit_type == credit_type.value,
        LOTS.c.source.in_(("plan", "rollover"))).order_by(LOTS.c.id)).all()


def spend(wallet_id, amount, credit_type=GEN):
    hold = credit_service.reserve(wallet_id, amount, credit_type)
    hold.pending = amount
    credit_service.close(hold, succeeded=True)


def test_the_allowance_comes_with_the_first_read_and_rolls_over_up_to_its_cap(app, make_user, manual_clock):
    user = make_user(credits=0)
    credit_service.set_recurring(user.id, "plan:pro", {GEN.value: (100, 50), TOK.value: (10, 0)},
                                 period="seconds", period_seconds=60)
    assert credit_service.get_credit_balance(user.id).generation_credits == 100
    spend(user.id, 30)
    spend(user.id, 4, TOK)
    manual_clock.advance(60)
    balance = credit_service.get_credit_balance(user.id)
    assert (balance.generation_credits, balance.ai_tokens) == (150, 10)  # 70 left, 50 carried; tokens none
    spend(user.id, 140)
    manual_clock.advance(60)
    assert credit_service.get_credit_balance(user.id).generation_credits == 110  # 10 left carried
    assert [(row.source, row.amount) for row in plan_lots(user.id)] == [
        ("plan", 100), ("plan", 100), ("rollover", 50), ("plan", 100), ("rollover", 10)]
    ledger_is_clean()


def test_an_account_untouched_for_five_periods_gets_what_eager_refills_would_have_left(app, make_user,
                                                                                     manual_clock):
    user = make_user(credits=0)
    credit_service.set_recurring(user.id, "plan:pro", {GEN.value: (10, 25)}, period="seconds", period_seconds=60)
    spend(user.id, 10)  # the first period spent whole: nothing carries from it
    manual_clock.advance(5 * 60 + 1)
    # Eager: R1 = 0, R2 = min(25, 10 + 0) = 10, R3 = 20, R4 = 25, R5 = 25; now in period 5.
    assert credit_service.get_credit_balance(user.id).generation_credits == 10 + 25
    assert len(plan_lots(user.id)) == 3  # the first, and this period's allowance and rollover: no pile
    ledger_is_clean()


def test_the_period_boundary_is_decided_at_the_hold(app, make_user, manual_clock):
    user = make_user(credits=0)
    credit_service.set_recurring(user.id, "plan:tiny", {GEN.value: (1, 0)}, period="seconds", period_seconds=60)
    spend(user.id, 1)
    manual_clock.advance(59.999)
    with pytest.raises(InsufficientCredits):
        credit_service.reserve(user.id, 1, GEN)
    manual_clock.advance(0.001)  # exactly at the period's end: the new period
    spend(user.id, 1)
    assert len(plan_lots(user.id)) == 2
    ledger_is_clean()


def test_a_period_is_granted_once_however_many_ask(app, make_user, manual_clock):
    user = make_user(credits=0)
    credit_service.set_recurring(user.id, "plan:pro", {GEN.value: (5, 0)}, period="seconds", period_seconds=60)
    for _ in range(3):
        credit_service.refill(user.id)
        credit_service.get_credit_balance(user.id)
        credit_service.list_lots(user.id)
    assert [row.amount for row in plan_lots(user.id)] == [5]
    ledger_is_clean()


def test_the_template_applies_to_every_user_wallet_without_grants_of_its_own(app, make_user, manual_clock):
    before = make_user(credits=0)
    credit_service.set_recurring(None, "plan:free", {GEN.value: (3, 0)}, period="day")
    after = make_user(credits=1)
    assert credit_service.get_credit_balance(before.id).generation_credits == 3
    assert credit_service.get_credit_balance(after.id).generation_credits == 4
    credit_service.set_recurring(after.id, "plan:pro", {GEN.value: (50, 0)}, period="day")
    assert credit_service.get_credit_balance(after.id).generation_credits == 4 + 50
    credit_service.end_recurring(after.id, "plan:pro", manual_clock.current + timedelta(days=1))  # at its period's end
    manual_clock.advance(86400)  # the plan ended: the template again, from the end of the plan
    assert credit_service.get_credit_balance(after.id).generation_credits == 1 + 3
    ledger_is_clean()


def test_explicit_periods_come_only_when_told_and_once(app, make_user, manual_clock):
    user = make_user(credits=0)
    start = manual_clock.current
    credit_service.set_recurring(user.id, "subscription:1", {GEN.value: (20, 5)}, period="month", anchor=start,
                                 explicit=True)
    assert credit_service.get_credit_balance(user.id).generation_credits == 0  # no invoice, no allowance
    end = periods.add_months(start, 1)
    assert credit_service.grant_period(user.id, "subscription:1", start, end) is True
    assert credit_service.grant_period(user.id, "subscription:1", start, end) is False
    spend(user.id, 12)
    manual_clock.advance((end - start).total_seconds())
    assert credit_service.get_credit_balance(user.id).generation_credits == 0  # the renewal is not paid yet
    assert credit_service.grant_period(user.id, "subscription:1", end, periods.add_months(start, 2)) is True
    assert credit_service.get_credit_balance(user.id).generation_credits == 20 + 5
    ledger_is_clean()


def test_months_keep_the_anchor_day_clamped_to_the_month_end():
    anchor = datetime(2026, 1, 31, 12, 0, tzinfo=timezone.utc)
    starts = [periods.nth_start(anchor, "month", None, n).date().isoformat() for n in range(4)]
    assert starts == ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
    assert periods.period_at(anchor, "month", None, datetime(2026, 3, 30, tzinfo=timezone.utc))[0].day == 28
    assert periods.period_at(anchor, "year", None, datetime(2028, 2, 29, 13, tzinfo=timezone.utc))[0] == \
        datetime(2028, 1, 31, 12, 0, tzinfo=timezone.utc)


def test_the_database_computes_the_same_periods_as_python(app, database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("the PostgreSQL functions' own period arithmetic")
    chance = random.Random(7)
    cases = []
    for _ in range(300):
        anchor = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=chance.randrange(0, 3 * 365 * 86400),
                                                                       microseconds=chance.randrange(10**6))
        period = chance.choice(["day", "week", "month", "year", "seconds", None])
        seconds = chance.randrange(1, 100_000) if period == "seconds" else None
        now = anchor + timedelta(seconds=chance.randrange(-1000, 3 * 365 * 86400))
        cases.append((anchor, period, seconds, now))
    # the exact edges: at a period's start, and a microsecond before
    anchor = datetime(2026, 1, 31, 8, tzinfo=timezone.utc)
    edge = periods.nth_start(anchor, "month", None, 3)
    cases += [(anchor, "month", None, edge), (anchor, "month", None, edge - timedelta(microseconds=1))]
    with db.engine.connect() as conn:
        for anchor, period, seconds, now in cases:
            found = conn.execute(text("SELECT creditapp_period_start(:a, :p, :s, :n)"),
                                 {"a": anchor, "p": period, "s": seconds, "n": now}).scalar_one()
            assert found == periods.period_at(anchor, period, seconds, now)[0], (anchor, period, seconds, now)
