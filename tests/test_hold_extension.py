"""Extending a hold (the heartbeat of work that outlives a request): it keeps the hold settleable
past its first expiry, never revives a hold that has already ended, and is decided with the
close on the same lock, by the clock read after it. Time is a ManualClock; nothing sleeps."""
from datetime import timedelta

import pytest

from creditapp.credits import credit_service
from creditapp.ledger import HoldExpired

from .test_hold_expiry import AccountLock, charged_hold, credits, in_thread, settled_holds, ttl  # noqa: F401 (ttl is a fixture)


def test_an_extended_hold_settles_after_its_first_expiry(make_user, manual_clock, ttl):
    user = make_user(credits=3)
    hold = charged_hold(user)
    first_expiry = hold.expires_at
    manual_clock.advance(ttl - 1)
    extended = credit_service.extend(hold)
    assert extended == manual_clock() + timedelta(seconds=ttl) == hold.expires_at
    assert extended > first_expiry
    manual_clock.advance(ttl - 1)  # past the first expiry, before the new one
    credit_service.close(hold, succeeded=True)
    assert (credits(user), settled_holds(user)) == (2, 1)
    assert credit_service.verify() == []


def test_an_extension_never_shortens_a_hold(make_user, manual_clock, ttl):
    user = make_user(credits=1)
    hold = charged_hold(user)
    assert credit_service.extend(hold, seconds=1) == hold.expires_at
    manual_clock.advance(ttl - 1)
    credit_service.close(hold, succeeded=True)
    assert credits(user) == 0


def test_a_hold_past_its_expiry_is_not_revived_but_ended(make_user, manual_clock, ttl):
    user = make_user(credits=2)
    hold = charged_hold(user)
    manual_clock.advance(ttl)  # exactly its expiry: too late
    with pytest.raises(HoldExpired):
        credit_service.extend(hold)
    assert credit_service.hold_status(hold.hold_id) == "expired"
    assert credits(user) == 2  # given back by the extension, not by a sweep
    credit_service.close(hold, succeeded=True)  # the late close charges nothing
    assert (credits(user), settled_holds(user)) == (2, 0)
    assert credit_service.verify() == []


def test_a_hold_that_ended_cannot_be_extended(make_user, manual_clock):
    user = make_user(credits=2)
    hold = charged_hold(user)
    credit_service.close(hold, succeeded=True)
    with pytest.raises(HoldExpired):
        credit_service.extend(hold)
    released = charged_hold(user)
    credit_service.close(released, succeeded=False)
    with pytest.raises(HoldExpired):
        credit_service.extend(released)
    assert credits(user) == 1


def test_an_extension_that_waited_for_the_lock_past_the_expiry_refuses(app, make_user, manual_clock, ttl,
                                                                       database_url):
    """The heartbeat arrives in time but waits behind another transaction while the hold
    expires: the clock read after the lock decides, so the work may not be charged."""
    user = make_user(credits=1)
    hold = charged_hold(user)
    manual_clock.advance(ttl - 1)

    def extend():
        with app.app_context():
            return credit_service.extend(hold)

    with AccountLock(database_url, user.id) as lock:
        extending, result = in_thread(extend)
        lock.wait_for_a_waiter()
        manual_clock.advance(1)  # the hold reaches its expiry while the extension waits
    extending.join(30)
    assert isinstance(result.get("error"), HoldExpired), result
    assert credit_service.hold_status(hold.hold_id) == "expired"
    assert credits(user) == 1
    assert credit_service.verify() == []


def test_an_extension_and_a_close_queued_on_one_lock_end_the_hold_once(app, make_user, manual_clock,
                                                                       database_url):
    user = make_user(credits=1)
    hold = charged_hold(user)

    def run(step):
        def go():
            with app.app_context():
                return step()
        return go

    with AccountLock(database_url, user.id) as lock:
        closing, closed = in_thread(run(lambda: credit_service.close(hold, succeeded=True)))
        lock.wait_for_a_waiter()
        extending, extended = in_thread(run(lambda: credit_service.extend(hold)))
        lock.wait_for_a_waiter(waiters=1 if database_url.startswith("sqlite") else 2)
    closing.join(30)
    extending.join(30)
    assert "error" not in closed, closed
    # On PostgreSQL the close queued first and goes first: the extension finds the hold settled.
    # (SQLite's writers take turns in no set order: an extension first extends an open hold that
    # the close then settles.) Either way one charge, decided once.
    assert isinstance(extended.get("error"), HoldExpired) or "value" in extended
    assert (credits(user), settled_holds(user)) == (0, 1)
    assert credit_service.verify() == []


@pytest.mark.parametrize("seconds", [0, -5, -0.5, float("nan"), True, "60"])
def test_an_extension_takes_a_positive_number_of_seconds(make_user, seconds):
    hold = charged_hold(make_user(credits=1))
    with pytest.raises(ValueError):
        credit_service.extend(hold, seconds=seconds)


def test_an_extension_may_be_a_fraction_of_a_second(make_user, manual_clock):
    hold = charged_hold(make_user(credits=1))
    assert credit_service.extend(hold, seconds=900.5) == manual_clock() + timedelta(seconds=900.5)
