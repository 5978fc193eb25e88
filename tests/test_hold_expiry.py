"""A hold ends exactly at its expiry, decided at the write that depends on it, on both databases.

Time is a ManualClock moved by the tests; races are forced into one order with events, and a row
held locked from a second connection; nothing sleeps past an expiry.
"""
import sqlite3
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from creditapp.ai import StubAIProvider, set_provider
from creditapp.credits import CreditType, credit_service
from creditapp.ledger import HoldExpired
from creditapp.ledger.clock import clock
from creditapp.ledger.tables import CreditHold, LedgerEntry
from creditapp.ledger.transactions import atomic

GEN = CreditType.GENERATION_CREDITS
GENERATE = "/api/generate"


@pytest.fixture
def ttl(app) -> int:
    return app.config["CREDIT_HOLD_TTL_SECONDS"]


def credits(user) -> int:
    return credit_service.get_credit_balance(user.id).generation_credits


def kinds(user) -> list[str]:
    with atomic(write=False) as session:
        return list(session.execute(
            select(LedgerEntry.kind).where(LedgerEntry.wallet_id == user.id).order_by(LedgerEntry.id)
        ).scalars())


def settled_holds(user) -> int:
    with atomic(write=False) as session:
        return session.execute(select(func.count()).select_from(CreditHold).where(
            CreditHold.wallet_id == user.id, CreditHold.status == "settled")).scalar_one()


def charged_hold(user):
    hold = credit_service.reserve(user.id, 1, GEN)
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 1, GEN)
    return hold


# --- the close decides by the clock, not by a sweep ---------------------------------------------

def test_from_its_expiry_on_a_hold_cannot_be_settled_though_no_sweep_ran(make_user, manual_clock, ttl):
    user = make_user(credits=2)
    hold = charged_hold(user)
    manual_clock.advance(ttl)  # exactly expires_at
    with pytest.raises(HoldExpired):
        credit_service.close(hold, succeeded=True)
    assert credits(user) == 2
    assert kinds(user) == ["grant", "hold", "expire"]
    assert credit_service.hold_status(hold.hold_id) == "expired"
    assert credit_service.verify() == []


def test_a_hold_settles_until_the_instant_before_its_expiry(make_user, manual_clock, ttl):
    user = make_user(credits=2)
    hold = charged_hold(user)
    manual_clock.advance(ttl - 0.000001)
    credit_service.close(hold, succeeded=True)
    assert (credits(user), kinds(user)) == (1, ["grant", "hold", "settle"])
    assert credit_service.verify() == []


class ClockMovingProvider(StubAIProvider):
    """An AI call during which `seconds` pass."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def generate_image(self, params, feature="basic_generation"):
        self.clock.advance(self.seconds)
        return super().generate_image(params, feature=feature)


def test_a_request_that_outlives_its_hold_answers_503_and_is_not_charged(app, client, make_user,
                                                                          manual_clock, ttl):
    user = make_user(credits=1)
    set_provider(app, ClockMovingProvider(manual_clock, ttl + 1))
    headers = {**user.headers, "Idempotency-Key": "slow-1"}
    response = client.post(GENERATE, json={"prompt": "a fox"}, headers=headers)
    assert (response.status_code, response.json["error"]) == (503, "reservation_expired")
    assert credits(user) == 1
    assert "settle" not in kinds(user)
    # The hold's end freed its key: the retry runs (it is not a replay) and is charged once.
    set_provider(app, StubAIProvider())
    retry = client.post(GENERATE, json={"prompt": "a fox"}, headers=headers)
    assert retry.status_code == 200, retry.json
    assert "Idempotent-Replayed" not in retry.headers
    assert (credits(user), settled_holds(user)) == (0, 1)
    assert credit_service.verify() == []


# --- one Idempotency-Key, one charge ------------------------------------------------------------

def test_a_retry_that_frees_the_key_ends_the_first_attempts_hold(make_user, manual_clock, ttl):
    """The order that charged twice on PostgreSQL: the retry's lookup, then the first attempt's
    close, then the retry's hold."""
    user = make_user(credits=3)
    first = credit_service.reserve(user.id, 1, GEN, key="k", fingerprint="f")
    with credit_service.activate(first):
        credit_service.deduct_credits(user.id, 1, GEN)
    manual_clock.advance(ttl + 1)
    assert credit_service.replay_or_free(user.id, "k", "f") is None  # the retry may run
    assert credit_service.hold_status(first.hold_id) == "expired"  # ended with the key's release
    with pytest.raises(HoldExpired):
        credit_service.close(first, succeeded=True, answer=(200, "{}"))
    retry = charged_hold_with_key(user, "k", "f")
    credit_service.close(retry, succeeded=True, answer=(200, "{}"))
    assert (credits(user), settled_holds(user)) == (2, 1)
    assert credit_service.verify() == []


def charged_hold_with_key(user, key, fingerprint):
    hold = credit_service.reserve(user.id, 1, GEN, key=key, fingerprint=fingerprint)
    with credit_service.activate(hold):
        credit_service.deduct_credits(user.id, 1, GEN)
    return hold


class GatedProvider(StubAIProvider):
    """The first call waits until the test opens the gate."""

    def __init__(self):
        super().__init__()
        self.started, self.gate = threading.Event(), threading.Event()

    def generate_image(self, params, feature="basic_generation"):
        if not self.started.is_set():
            self.started.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().generate_image(params, feature=feature)


def in_thread(target):
    result = {}

    def run():
        try:
            result["value"] = target()
        except BaseException as exc:  # reported by the test
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_a_retry_racing_its_slow_first_attempt_over_http_is_charged_once(app, make_user, manual_clock,
                                                                         ttl, monkeypatch, database_url):
    """A runs past its hold's expiry; the client retries with the same key and body; A's close
    runs after the retry looked its key up and before the retry holds credits. (On PostgreSQL
    the lookup and the hold are one call: A's close runs just before that call.)"""
    user = make_user(credits=3)
    provider = GatedProvider()
    set_provider(app, provider)
    headers = {**user.headers, "Idempotency-Key": "retry-me"}
    looked_up, go_on = threading.Event(), threading.Event()
    step = "hold_or_replay" if credit_service.checks_sessions else "reserve"
    take_hold = getattr(credit_service, step)

    def hold_after_the_first_close(*args, **kwargs):
        if provider.started.is_set() and not go_on.is_set():
            looked_up.set()
            assert go_on.wait(30)
        return take_hold(*args, **kwargs)

    monkeypatch.setattr(credit_service, step, hold_after_the_first_close)
    first, first_result = in_thread(lambda: app.test_client().post(GENERATE, json={"prompt": "x"}, headers=headers))
    assert provider.started.wait(30)
    manual_clock.advance(ttl + 1)
    retry, retry_result = in_thread(lambda: app.test_client().post(GENERATE, json={"prompt": "x"}, headers=headers))
    assert looked_up.wait(30)
    provider.gate.set()  # the first attempt finishes and closes
    first.join(30)
    go_on.set()  # then the retry holds, calls the AI and closes
    retry.join(30)
    a, b = first_result["value"], retry_result["value"]
    assert (a.status_code, a.json["error"]) == (503, "reservation_expired")
    assert b.status_code == 200, b.json
    assert "Idempotent-Replayed" not in b.headers
    assert provider.calls == 2
    assert (credits(user), settled_holds(user)) == (2, 1)
    assert credit_service.verify() == []


def test_a_retry_while_the_first_attempt_still_holds_is_409_then_replays(app, make_user, manual_clock, ttl):
    user = make_user(credits=3)
    provider = GatedProvider()
    set_provider(app, provider)
    headers = {**user.headers, "Idempotency-Key": "once"}
    client = app.test_client()
    first, result = in_thread(lambda: app.test_client().post(GENERATE, json={"prompt": "x"}, headers=headers))
    assert provider.started.wait(30)
    manual_clock.advance(ttl - 1)  # not yet expired: the key is still the first attempt's
    busy = client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert (busy.status_code, busy.json["error"]) == (409, "idempotency_key_in_use")
    provider.gate.set()
    first.join(30)
    assert result["value"].status_code == 200
    replayed = client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json == result["value"].json
    assert (provider.calls, credits(user)) == (1, 2)


# --- the time is read after the lock ---------------------------------------------------------------

class AccountLock:
    """Holds a user's account row (PostgreSQL) or the database's write lock (SQLite) from a
    second connection, as another transaction would."""

    def __init__(self, database_url: str, user_id: int):
        self.url, self.user_id = make_url(database_url), user_id

    def __enter__(self):
        if self.url.get_backend_name() == "sqlite":
            self.connection = sqlite3.connect(self.url.database, isolation_level=None)
            self.connection.execute("BEGIN IMMEDIATE")
        else:
            self.engine = create_engine(self.url)
            self.connection = self.engine.connect()
            self.connection.execute(text(
                "SELECT 1 FROM credit_accounts WHERE wallet_id = :u FOR UPDATE"), {"u": self.user_id})
        return self

    def wait_for_a_waiter(self, waiters: int = 1) -> None:
        """Until `waiters` other connections wait for a lock (PostgreSQL says so; SQLite cannot)."""
        if self.url.get_backend_name() == "sqlite":
            time.sleep(0.3)
            return
        deadline = time.monotonic() + 10
        # Autocommit: within one transaction PostgreSQL keeps answering from its first snapshot
        # of pg_stat_activity.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as probe:
            while time.monotonic() < deadline:
                waiting = probe.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")).scalar_one()
                if waiting >= waiters:
                    return
                time.sleep(0.02)
            activity = probe.execute(text(
                "SELECT state, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity "
                "WHERE datname = current_database()")).all()
        raise AssertionError(f"fewer than {waiters} connection(s) waited for a lock: {activity}")

    def __exit__(self, *exc):
        self.connection.rollback()
        self.connection.close()
        if hasattr(self, "engine"):
            self.engine.dispose()


def test_a_close_that_waited_for_the_account_lock_past_the_expiry_charges_nothing(
        app, make_user, manual_clock, ttl, database_url):
    user = make_user(credits=1)
    hold = charged_hold(user)
    released, early_reads, closer = threading.Event(), [], []

    def watched_clock():
        # A close that read the time before the lock would read it here, while the lock is held.
        # Only the closing thread's reads count: other tests' daemon threads (a job queue's, a
        # webhook sweep's) may read the clock meanwhile in the same process.
        if threading.get_ident() in closer and not released.is_set():
            early_reads.append(manual_clock())
        return manual_clock()

    def close():
        closer.append(threading.get_ident())
        with app.app_context():
            credit_service.close(hold, succeeded=True)

    with clock.use(watched_clock), AccountLock(database_url, user.id) as lock:
        closing, result = in_thread(close)
        lock.wait_for_a_waiter()
        manual_clock.advance(ttl)  # the hold ends while its close waits
        released.set()
    closing.join(30)
    assert early_reads == [], "the close read the clock before it had the account lock"
    assert isinstance(result.get("error"), HoldExpired), result
    assert credits(user) == 1
    assert credit_service.verify() == []


# --- verify finds one key charged twice -------------------------------------------------------------

def test_verify_reports_one_key_charged_twice(app, client, make_user, stub, database_url):
    user = make_user(credits=3)
    for key in ("pay-1", "pay-2"):
        response = client.post(GENERATE, json={"prompt": key}, headers={**user.headers, "Idempotency-Key": key})
        assert response.status_code == 200
    assert credit_service.verify() == []
    with atomic() as session:  # what a double charge leaves behind
        session.execute(text("UPDATE credit_holds SET idempotency_key = 'pay-1' WHERE idempotency_key = 'pay-2'"))
    problems = credit_service.verify()
    assert len(problems) == 1 and problems[0].wallet_id == user.id
    assert "'pay-1'" in str(problems[0])
    result = CliRunner().invoke(app.cli, ["credits", "verify"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "pay-1" in result.output


def test_a_key_used_again_after_its_answer_expired_is_not_a_double_charge(app, client, make_user, stub,
                                                                          manual_clock):
    user = make_user(credits=3)
    headers = {**user.headers, "Idempotency-Key": "monthly"}
    assert client.post(GENERATE, json={"prompt": "x"}, headers=headers).status_code == 200
    manual_clock.advance(app.config["IDEMPOTENCY_TTL_SECONDS"])
    again = client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert credits(user) == 1
    assert credit_service.verify() == []
