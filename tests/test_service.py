"""The credit service alone: no HTTP, every call one transaction."""
from datetime import timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DatabaseError, IntegrityError

from creditapp.credits import CreditType, InsufficientCredits, credit_service
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.ledger import HoldExpired, UnknownUser
from creditapp.ledger.tables import CreditHold, LedgerEntry

GEN, TOK = CreditType.GENERATION_CREDITS, CreditType.AI_TOKENS


def ledger(user_id):
    with atomic(write=False) as session:
        return session.execute(
            select(LedgerEntry.kind, LedgerEntry.credit_type, LedgerEntry.amount, LedgerEntry.held_change)
            .where(LedgerEntry.wallet_id == user_id)
            .order_by(LedgerEntry.id)
        ).all()


def holds(user_id):
    with atomic(write=False) as session:
        return session.execute(
            select(CreditHold.status, CreditHold.amount, CreditHold.settled_amount)
            .where(CreditHold.wallet_id == user_id).order_by(CreditHold.id)
        ).all()


def test_signup_grant_is_in_the_ledger(make_user):
    user = make_user(credits=3, tokens=100)
    balance = credit_service.get_credit_balance(user.id)
    assert (balance.generation_credits, balance.ai_tokens) == (3, 100)
    assert ledger(user.id) == [("grant", "generation_credits", 3, 0), ("grant", "ai_tokens", 100, 0)]
    assert credit_service.verify() == []


def test_add_then_deduct_without_a_hold(make_user):
    user = make_user()
    assert credit_service.add_credits(user.id, 5, GEN, reason="test").generation_credits == 5
    assert credit_service.deduct_credits(user.id, 2, "generation_credits").generation_credits == 3
    assert ledger(user.id)[-2:] == [("grant", "generation_credits", 5, 0), ("charge", "generation_credits", -2, 0)]
    assert credit_service.verify() == []


@pytest.mark.parametrize("amount", [0, -1, 1.5, True, "1", None, 10**13])
def test_bad_amounts_raise_value_error_and_change_nothing(make_user, amount):
    user = make_user(credits=5)
    before = ledger(user.id)
    # Charging 0 is work that used nothing: it charges nothing (and is no error).
    nothing = type(amount) is int and amount == 0
    for call in (credit_service.add_credits, credit_service.reserve,
                 *(() if nothing else (credit_service.deduct_credits,))):
        with pytest.raises(ValueError):
            call(user.id, amount, GEN)
    if nothing:
        assert credit_service.deduct_credits(user.id, 0, GEN).generation_credits == 5
    assert ledger(user.id) == before
    assert credit_service.get_credit_balance(user.id).generation_credits == 5


def test_unknown_credit_type_is_a_value_error(make_user):
    user = make_user(credits=5)
    with pytest.raises(ValueError):
        credit_service.add_credits(user.id, 1, "gold")


def test_unknown_user(app):
    with pytest.raises(UnknownUser):
        credit_service.add_credits(999, 1, GEN)
    with pytest.raises(UnknownUser):
        credit_service.get_credit_balance(999)
    with pytest.raises(UnknownUser):
        credit_service.reserve(999, 1, GEN)


def test_deduct_more_than_balance_raises_and_changes_nothing(make_user):
    user = make_user(credits=2)
    with pytest.raises(InsufficientCredits) as info:
        credit_service.deduct_credits(user.id, 3, GEN)
    assert (info.value.required, info.value.available, info.value.credit_type) == (3, 2, "generation_credits")
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert len(ledger(user.id)) == 1


def test_reserve_holds_credits_and_settle_consumes_them(make_user):
    user = make_user(credits=3)
    hold = credit_service.reserve(user.id, 2, GEN)
    assert (hold.available_before, hold.available_after) == (3, 1)
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    with credit_service.activate(hold):
        balance = credit_service.deduct_credits(user.id, 2, GEN)
    assert balance.generation_credits == 1
    credit_service.close(hold, succeeded=True)
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    assert holds(user.id) == [("settled", 2, 2)]
    assert ledger(user.id)[1:] == [("hold", "generation_credits", -2, 2), ("settle", "generation_credits", 0, -2)]
    assert credit_service.verify() == []


def test_settle_less_than_reserved_gives_back_the_rest(make_user):
    user = make_user(tokens=100)
    hold = credit_service.reserve(user.id, 60, TOK)
    balance = credit_service.settle(hold, 25)
    assert balance.ai_tokens == 75
    assert ledger(user.id)[1:] == [
        ("hold", "ai_tokens", -60, 60), ("settle", "ai_tokens", 0, -25), ("release", "ai_tokens", 35, -35),
    ]
    assert credit_service.verify() == []


def test_settle_more_than_reserved_takes_the_difference(make_user):
    user = make_user(tokens=100)
    hold = credit_service.reserve(user.id, 30, TOK)
    assert credit_service.settle(hold, 50).ai_tokens == 50
    assert holds(user.id) == [("settled", 50, 50)]
    assert [row.kind for row in ledger(user.id)] == ["grant", "hold", "hold", "settle"]
    assert credit_service.verify() == []


def test_settle_more_than_can_be_paid_raises_and_keeps_the_hold(make_user):
    user = make_user(tokens=40)
    hold = credit_service.reserve(user.id, 30, TOK)
    with pytest.raises(InsufficientCredits) as info:
        credit_service.settle(hold, 50)
    assert (info.value.required, info.value.available) == (50, 40)
    assert holds(user.id) == [("open", 30, 0)]
    credit_service.close(hold, succeeded=False)
    assert credit_service.get_credit_balance(user.id).ai_tokens == 40
    assert credit_service.verify() == []


def test_reserve_refuses_more_than_available_and_holds_nothing(make_user):
    user = make_user(credits=1)
    credit_service.reserve(user.id, 1, GEN)
    with pytest.raises(InsufficientCredits) as info:
        credit_service.reserve(user.id, 1, GEN)
    assert (info.value.required, info.value.available) == (1, 0)
    assert [h.status for h in holds(user.id)] == ["open"]


def test_close_without_settle_releases(make_user):
    user = make_user(credits=2)
    hold = credit_service.reserve(user.id, 2, GEN)
    credit_service.close(hold, succeeded=True)
    credit_service.close(hold, succeeded=True)  # closing twice gives back once
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert holds(user.id) == [("released", 2, 0)]
    assert credit_service.verify() == []


def test_charge_inside_a_hold_commits_only_on_success(make_user):
    user = make_user(tokens=100)
    hold = credit_service.reserve(user.id, 60, TOK)
    with credit_service.activate(hold):
        # The balance answered already counts the 35 that the close will give back.
        assert credit_service.deduct_credits(user.id, 25, TOK).ai_tokens == 75
    assert credit_service.get_credit_balance(user.id).ai_tokens == 40
    assert holds(user.id) == [("open", 60, 0)]
    credit_service.close(hold, succeeded=True)
    assert credit_service.get_credit_balance(user.id).ai_tokens == 75
    assert holds(user.id) == [("settled", 60, 25)]
    assert credit_service.verify() == []


def test_charge_inside_a_failed_hold_is_never_committed(make_user):
    user = make_user(credits=2)
    hold = credit_service.reserve(user.id, 1, GEN)
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 1, GEN)
    credit_service.close(hold, succeeded=False)
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert holds(user.id) == [("released", 1, 0)]
    assert [row.kind for row in ledger(user.id)] == ["grant", "hold", "release"]
    assert credit_service.verify() == []


def test_two_charges_in_one_hold_add_up(make_user):
    user = make_user(tokens=100)
    hold = credit_service.reserve(user.id, 10, TOK)
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 6, TOK)
        assert credit_service.deduct_credits(user.id, 6, TOK).ai_tokens == 88
    credit_service.close(hold, succeeded=True)
    assert credit_service.get_credit_balance(user.id).ai_tokens == 88
    assert credit_service.verify() == []


def test_deduct_settles_only_the_matching_hold(make_user):
    user = make_user(credits=5, tokens=50)
    tokens = credit_service.reserve(user.id, 10, TOK)
    with credit_service.activate(tokens):
        credit_service.deduct_credits(user.id, 1, GEN)  # another balance: a direct charge
    assert holds(user.id) == [("open", 10, 0)]
    assert credit_service.get_credit_balance(user.id).generation_credits == 4


def _age_holds(user_id, seconds):
    with atomic() as session:
        session.execute(
            CreditHold.__table__.update()
            .where(CreditHold.wallet_id == user_id)
            .values(expires_at=utcnow() - timedelta(seconds=seconds))
        )


def test_release_expired_gives_back_abandoned_holds(make_user):
    user, other = make_user(credits=3), make_user(credits=3)
    credit_service.reserve(user.id, 2, GEN)
    fresh = credit_service.reserve(other.id, 1, GEN)
    _age_holds(user.id, 1)
    assert credit_service.release_expired() == 1
    assert credit_service.get_credit_balance(user.id).generation_credits == 3
    assert holds(user.id) == [("expired", 2, 0)]
    assert holds(other.id) == [("open", 1, 0)]
    assert fresh.hold_id
    assert credit_service.verify() == []


def test_next_hold_sweeps_expired_holds_of_its_account(make_user):
    user = make_user(credits=1)
    credit_service.reserve(user.id, 1, GEN)
    _age_holds(user.id, 1)
    credit_service.reserve(user.id, 1, GEN)  # would be refused if the stale hold still counted
    assert [h.status for h in holds(user.id)] == ["expired", "open"]
    assert credit_service.verify() == []


def test_every_ledger_row_records_the_state_it_left(make_user):
    user = make_user(credits=3)
    credit_service.reserve(user.id, 2, GEN)
    _age_holds(user.id, 1)
    hold = credit_service.reserve(user.id, 1, GEN)  # sweeps the expired hold on the way
    assert (hold.available_before, hold.available_after) == (3, 2)
    with atomic(write=False) as session:
        rows = session.execute(
            select(LedgerEntry.kind, LedgerEntry.balance_after, LedgerEntry.held_after)
            .where(LedgerEntry.wallet_id == user.id).order_by(LedgerEntry.id)
        ).all()
    assert rows == [("grant", 3, 0), ("hold", 1, 2), ("hold", 0, 3), ("expire", 2, 1)]
    assert credit_service.verify() == []


def test_settle_after_expiry_charges_nothing(make_user):
    user = make_user(credits=2)
    hold = credit_service.reserve(user.id, 1, GEN)
    _age_holds(user.id, 1)
    credit_service.release_expired()
    with pytest.raises(HoldExpired):
        credit_service.settle(hold, 1)
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert [row.kind for row in ledger(user.id)] == ["grant", "hold", "expire"]
    assert credit_service.verify() == []


def test_work_that_outlived_its_hold_is_not_charged_beside_its_retry(make_user):
    """The retry of a slow request finds its key free once the hold expired; when the slow one
    finishes it must not be charged too (one key, one charge)."""
    user = make_user(credits=3)
    slow = credit_service.reserve(user.id, 1, GEN, key="key-1", fingerprint="fingerprint")
    _age_holds(user.id, 1)
    assert credit_service.replay_or_free(user.id, "key-1", "fingerprint") is None  # the retry may run
    retry = credit_service.reserve(user.id, 1, GEN, key="key-1", fingerprint="fingerprint")
    with credit_service.activate(retry):
        credit_service.deduct_credits(user.id, 1, GEN)
    credit_service.close(retry, succeeded=True, answer=(200, "{}"))
    with credit_service.activate(slow):
        credit_service.deduct_credits(user.id, 1, GEN)
    with pytest.raises(HoldExpired):
        credit_service.close(slow, succeeded=True, answer=(200, "{}"))
    assert credit_service.get_credit_balance(user.id).generation_credits == 2
    assert credit_service.verify() == []


def test_verify_finds_a_tampered_balance(make_user):
    user = make_user(credits=3)
    with atomic() as session:
        session.execute(text("UPDATE credit_accounts SET available = 7 WHERE wallet_id = :u "
                             "AND credit_type = 'generation_credits'"), {"u": user.id})
    problems = credit_service.verify()
    assert [(p.wallet_id, p.field, p.recorded, p.expected) for p in problems] == [
        (user.id, "available", 7, 3), (user.id, "available (last ledger row)", 7, 3),
        (user.id, "available (sum of lots)", 7, 3)]
    assert "ledger says 3" in str(problems[0])


def test_verify_finds_a_tampered_hold(make_user):
    user = make_user(credits=3)
    credit_service.reserve(user.id, 1, GEN)
    with atomic() as session:
        session.execute(text("UPDATE credit_holds SET status = 'released' WHERE wallet_id = :u"), {"u": user.id})
    assert sorted(p.field for p in credit_service.verify()) == [
        "held (open holds)", "lot 1 held (open holds' receipts)"]


def test_ledger_is_append_only(make_user):
    user = make_user(credits=3)
    for statement in ("UPDATE ledger_entries SET amount = 100", "DELETE FROM ledger_entries"):
        with pytest.raises(DatabaseError, match="append-only"):
            with atomic() as session:
                session.execute(text(statement))
    assert len(ledger(user.id)) == 1


def test_database_refuses_a_negative_balance(make_user):
    user = make_user(credits=1)
    with pytest.raises(IntegrityError):
        with atomic() as session:
            session.execute(text("UPDATE credit_accounts SET available = -1 WHERE wallet_id = :u"), {"u": user.id})


def test_transactions_page_newest_first(make_user):
    user = make_user(credits=1)
    for amount in range(1, 6):
        credit_service.add_credits(user.id, amount, GEN)
    first = credit_service.list_transactions(user.id, limit=4)
    assert [item["amount"] for item in first.items] == [5, 4, 3, 2]
    second = credit_service.list_transactions(user.id, limit=4, before_id=first.next_cursor)
    assert [item["amount"] for item in second.items] == [1, 1]
    assert second.next_cursor is None
    assert [i["balance_after"] for i in first.items] == [16, 11, 7, 4]

