"""The ledger's wallets: team wallets, caps counted by holds, debt, frozen lots (service level,
both databases)."""
import threading
from datetime import timedelta

import pytest
from sqlalchemy import insert, text

from creditapp.access.tables import Team
from creditapp.extensions import db
from creditapp.ledger import (
    CapClosed, CapExceeded, CapExpired, CreditType, FeatureNotAllowed, InsufficientCredits, LotFrozen, Spender,
    UnknownWallet, credit_service, team_wallet,
)
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.testing import ledger_is_clean

GEN = CreditType.GENERATION_CREDITS


def make_team(name: str = "acme") -> int:
    with atomic() as session:
        team_id = session.execute(insert(Team.__table__).values(name=name, created_at=utcnow())
                                  .returning(Team.__table__.c.id)).scalar_one()
        credit_service.open_wallet(session, team_wallet(team_id))
    return team_id


def spend(spender: Spender, amount: int, charge: int | None = None, feature: str | None = "basic_generation"):
    hold = credit_service.reserve(spender.wallet_id, amount, GEN, spender=spender, feature=feature)
    hold.pending = amount if charge is None else charge
    credit_service.close(hold, succeeded=True)
    return hold


def test_a_team_wallet_holds_its_own_balance_and_its_members_spend_from_it(app, make_user):
    alice = make_user(credits=2)
    wallet = team_wallet(make_team())
    credit_service.grant(wallet, 10, GEN, reason="team credits")
    spend(Spender(wallet_id=wallet, user_id=alice.id, client_id=alice.id), 3)
    assert credit_service.get_credit_balance(wallet).generation_credits == 7
    assert credit_service.get_credit_balance(alice.id).generation_credits == 2  # hers are untouched
    with pytest.raises(UnknownWallet):
        credit_service.get_credit_balance(team_wallet(999))
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT user_id, feature FROM credit_holds WHERE wallet_id = :w"),
                            {"w": wallet}).one() == (alice.id, "basic_generation")
    ledger_is_clean()


def test_a_cap_counts_held_charged_and_refunded_credits_in_its_period(app, make_user, manual_clock):
    user = make_user(credits=20)
    cap = credit_service.create_cap(user.id, {GEN.value: 3}, period_seconds=60)
    spender = Spender(wallet_id=user.id, user_id=user.id, client_id=user.id, caps=(cap,))
    first = credit_service.reserve(user.id, 2, GEN, spender=spender)
    with pytest.raises(CapExceeded) as refused:
        credit_service.reserve(user.id, 2, GEN, spender=spender)
    assert (refused.value.limit, refused.value.spent, refused.value.required) == (3, 2, 2)
    first.pending = 1  # charged less than held: the rest goes back to the cap
    credit_service.close(first, succeeded=True)
    assert credit_service.describe_cap(cap)["spent"] == {GEN.value: 1}
    second = spend(spender, 2)
    assert credit_service.describe_cap(cap)["spent"] == {GEN.value: 3}
    credit_service.refund(second.hold_id, reason="sorry")
    assert credit_service.describe_cap(cap)["spent"] == {GEN.value: 1}
    manual_clock.advance(60)  # a new period, decided at the hold
    spend(spender, 3)
    assert credit_service.describe_cap(cap)["spent"] == {GEN.value: 3}
    # A refund gives back to the period the hold was taken in, not the one it is now.
    manual_clock.advance(60)
    assert credit_service.describe_cap(cap)["spent"] == {}
    assert credit_service.get_credit_balance(user.id).generation_credits == 20 - 1 - 3
    ledger_is_clean()


def test_a_closed_or_expired_cap_or_a_feature_outside_it_refuses_and_changes_nothing(app, make_user,
                                                                                    manual_clock):
    user = make_user(credits=5)
    later = utcnow() + timedelta(seconds=30)
    cap = credit_service.create_cap(user.id, {}, expires_at=later, features=["upscale"])
    spender = Spender(wallet_id=user.id, user_id=user.id, client_id=user.id, caps=(cap,))
    with pytest.raises(FeatureNotAllowed):
        credit_service.reserve(user.id, 1, GEN, spender=spender, feature="basic_generation")
    spend(spender, 1, feature="upscale")
    manual_clock.advance(31)
    with pytest.raises(CapExpired):
        credit_service.reserve(user.id, 1, GEN, spender=spender, feature="upscale")
    other = credit_service.create_cap(user.id, {})
    credit_service.close_cap(other)
    with pytest.raises(CapClosed):
        credit_service.reserve(user.id, 1, GEN, spender=Spender(user.id, user.id, user.id, caps=(other,)))
    assert credit_service.get_credit_balance(user.id).generation_credits == 4
    ledger_is_clean()


def test_parallel_holds_never_take_a_cap_past_its_limit(app, make_user):
    user = make_user(credits=100)
    cap = credit_service.create_cap(user.id, {GEN.value: 7})
    spender = Spender(wallet_id=user.id, user_id=user.id, client_id=user.id, caps=(cap,))
    results, barrier = [], threading.Barrier(20)

    def take():
        with app.app_context():
            barrier.wait()
            try:
                results.append(credit_service.reserve(user.id, 1, GEN, spender=spender))
            except CapExceeded:
                results.append("refused")
            finally:
                db.session.remove()

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(result != "refused" for result in results) == 7 and len(results) == 20
    assert credit_service.describe_cap(cap)["spent"] == {GEN.value: 7}
    ledger_is_clean()


def test_a_take_back_takes_the_lot_first_records_debt_for_the_rest_and_grants_repay_it(app, make_user):
    user = make_user(credits=0)
    bought = credit_service.grant(user.id, 10, GEN, reason="pack", source="purchase", priority=80)
    credit_service.grant(user.id, 2, GEN, reason="gift")
    spend(Spender.of_user(user.id), 9)  # the gift first (priority 50), then 7 of the pack
    taken = credit_service.take_back(user.id, 10, GEN, reason="refund", first_lot=bought.lot_id, reference="r1")
    assert (taken.taken, taken.debt) == (3, 7)
    again = credit_service.take_back(user.id, 10, GEN, reason="refund", first_lot=bought.lot_id, reference="r1")
    assert (again.taken, again.debt) == (0, 0)  # the same reference takes nothing more
    overview = credit_service.overview(user.id)
    assert (overview.balance.generation_credits, overview.debt[GEN.value]) == (0, 7)
    repaid = credit_service.grant(user.id, 5, GEN, reason="more")
    assert repaid.repaid == 5 and credit_service.overview(user.id).debt[GEN.value] == 2
    credit_service.grant(user.id, 4, GEN, reason="more")
    overview = credit_service.overview(user.id)
    assert (overview.balance.generation_credits, overview.debt[GEN.value]) == (2, 0)
    with pytest.raises(InsufficientCredits):
        credit_service.reserve(user.id, 3, GEN)
    ledger_is_clean()


def test_a_frozen_lot_is_not_spendable_and_what_holds_give_back_stays_frozen(app, make_user):
    user = make_user(credits=1)
    lot = credit_service.grant(user.id, 10, GEN, reason="pack", source="purchase", priority=10).lot_id
    running = credit_service.reserve(user.id, 4, GEN)  # from the pack (priority 10)
    credit_service.freeze_lot(lot, reason="dispute")
    with pytest.raises(LotFrozen):
        credit_service.freeze_lot(lot, reason="dispute")
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    running.pending = 1
    credit_service.close(running, succeeded=True)  # 3 come back to the frozen lot, frozen
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    ledger_is_clean()
    credit_service.unfreeze_lot(lot, reason="dispute won")
    assert credit_service.get_credit_balance(user.id).generation_credits == 1 + 9
    ledger_is_clean()


def test_a_refund_to_a_frozen_lot_stays_frozen(app, make_user):
    user = make_user(credits=0)
    lot = credit_service.grant(user.id, 5, GEN, reason="pack", source="purchase").lot_id
    charge = spend(Spender.of_user(user.id), 2)
    credit_service.freeze_lot(lot, reason="dispute")
    credit_service.refund(charge.hold_id, reason="sorry")
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    ledger_is_clean()
    credit_service.void_lot(lot, reason="lost")
    assert credit_service.get_credit_balance(user.id).generation_credits == 0
    ledger_is_clean()


def test_a_hold_of_a_closed_cap_keeps_what_it_holds_and_grows_no_more(app, make_user):
    user = make_user(credits=10)
    cap = credit_service.create_cap(user.id, {GEN.value: 8})
    hold = credit_service.reserve(user.id, 2, GEN, spender=Spender(user.id, user.id, user.id, caps=(cap,)))
    credit_service.close_cap(cap)  # the key revoked while its request runs
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 2, GEN)
        with pytest.raises(InsufficientCredits):
            credit_service.deduct_credits(user.id, 1, GEN)  # more than it held: refused
    credit_service.close(hold, succeeded=True)
    assert credit_service.get_credit_balance(user.id).generation_credits == 8
    assert credit_service.verify() == []
