"""The hot path's shape: on PostgreSQL a paid request is two statements (the hold, with the
session check and the paid rate limit folded in, and the close) and a balance read one (its
session check folded in), counted exactly at the driver; the session check stays exact; a
connection lost under them costs a repeat, never a second hold or a second count. Speed itself
is bench/'s job."""
import re
import threading

import psycopg
import pytest
from sqlalchemy import event, select

from creditapp import users
from creditapp.ai import set_provider
from creditapp.credits import credit_service
from creditapp.extensions import db
from creditapp.ledger import procedures
from creditapp.ledger.tables import CreditHold

from creditapp.testing.databases import terminate_connections
from .test_hold_expiry import AccountLock
from creditapp.testing import make_app
from .test_tokens import bearer, login

GENERATE = "/api/generate"


def only_postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite keeps the in-process path: there is no round trip to count")


class Statements:
    """Every statement the app's pool sends to PostgreSQL, counted in the driver's cursors (so
    SQLAlchemy's statements and the ledger's direct calls alike)."""

    def __init__(self, engine):
        self.engine, self.sent = engine, []

    def _count_on(self, dbapi_connection, _record):
        sent = self.sent

        class CountingCursor(psycopg.Cursor):
            def execute(self, query, *args, **kwargs):
                sent.append(str(query))
                return super().execute(query, *args, **kwargs)

        dbapi_connection.cursor_factory = CountingCursor

    def __enter__(self):
        self.engine.dispose()  # every connection from now on is a counted one
        event.listen(self.engine, "connect", self._count_on)
        with self.engine.connect():
            pass  # opened here: a connection's own setup is not a request's
        self.sent.clear()
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "connect", self._count_on)
        self.engine.dispose()


def count(request) -> tuple[object, list[str]]:
    with Statements(db.engine) as statements:
        response = request()
    return response, statements.sent


def test_a_job_submit_is_two_statements_too_and_its_key_one_more(app, client, make_user, stub, database_url):
    only_postgresql(database_url)
    user = make_user(credits=3)
    headers = {**user.headers, "Prefer": "respond-async", "Idempotency-Key": "job-1"}
    client.post(GENERATE, json={"prompt": "warm-up"}, headers={**user.headers, "Prefer": "respond-async"})
    response, sent = count(lambda: client.post(GENERATE, json={"prompt": "a"}, headers=headers))
    assert response.status_code == 202
    # The key's 202 is stored only after the broker has the job: one more statement, for
    # submits with a key only.
    assert len(sent) == 3 and "creditapp_paid_hold" in sent[0]
    assert sent[1].lstrip().startswith("INSERT INTO jobs")
    assert sent[2].lstrip().startswith("UPDATE idempotency_keys")
    _, sent = count(lambda: client.post(GENERATE, json={"prompt": "b"}, headers={**user.headers, "Prefer": "respond-async"}))
    assert len(sent) == 2
    replayed = client.post(GENERATE, json={"prompt": "a"}, headers=headers)
    assert replayed.json["job_id"] == response.json["job_id"]


def test_a_paid_request_is_two_statements_and_a_balance_read_one(app, client, make_user, stub, database_url):
    only_postgresql(database_url)
    assert db.engine.pool._pre_ping is False  # a ping would be one more round trip per checkout
    user = make_user(credits=3)
    client.post(GENERATE, json={"prompt": "warm-up"}, headers=user.headers)

    response, sent = count(lambda: client.post(GENERATE, json={"prompt": "a"}, headers=user.headers))
    assert response.status_code == 200
    assert [re.search(r"FROM\s+(\w+)", s).group(1) for s in sent] == ["creditapp_paid_hold", "creditapp_close"]
    assert int(response.headers["X-RateLimit-Remaining"]) == int(response.headers["X-RateLimit-Limit"]) - 2

    headers = {**user.headers, "Idempotency-Key": "k-1"}
    response, sent = count(lambda: client.post(GENERATE, json={"prompt": "b"}, headers=headers))
    assert response.status_code == 200 and len(sent) == 2
    replayed, sent = count(lambda: client.post(GENERATE, json={"prompt": "b"}, headers=headers))
    assert replayed.headers["Idempotent-Replayed"] == "true" and len(sent) == 1

    response, sent = count(lambda: client.post(GENERATE, json={"prompt": "c"}, headers=user.headers))
    assert (response.status_code, len(sent)) == (403, 1)  # nothing left: the hold call refused it
    # Every one of them counted, the replay and the refusal too, as Flask-Limiter counted them.
    assert int(response.headers["X-RateLimit-Remaining"]) == int(response.headers["X-RateLimit-Limit"]) - 5

    response, sent = count(lambda: client.get("/api/credits/balance", headers=user.headers))
    assert response.status_code == 200
    assert [s.split("(")[0] for s in sent] == ["SELECT * FROM creditapp_balance"]
    assert stub.calls == 3
    assert credit_service.verify() == []


def test_a_revoked_session_gets_nothing_on_any_route(client, make_user, stub):
    """A logged-out token gets no hold, no AI call, no replay of an answer stored for its key,
    and no balance (whose call checks the session itself on PostgreSQL)."""
    user = make_user(credits=3)
    tokens = login(client, user)
    headers = {**bearer(tokens["access_token"]), "Idempotency-Key": "paid-once"}
    assert client.post(GENERATE, json={"prompt": "x"}, headers=headers).status_code == 200
    assert client.post("/api/auth/logout", headers=bearer(tokens["access_token"])).status_code == 200

    replay = client.post(GENERATE, json={"prompt": "x"}, headers=headers)
    assert (replay.status_code, replay.json["error"]) == (401, "token_revoked")
    assert "Idempotent-Replayed" not in replay.headers and "result" not in replay.json
    fresh = client.post(GENERATE, json={"prompt": "y"}, headers=bearer(tokens["access_token"]))
    assert (fresh.status_code, fresh.json["error"]) == (401, "token_revoked")
    for path in ("/api/credits/balance", "/api/credits/lots", "/api/credits/transactions"):
        response = client.get(path, headers=bearer(tokens["access_token"]))
        assert (response.status_code, response.json["error"]) == (401, "token_revoked"), path
    assert (stub.calls, credit_service.get_credit_balance(user.id).generation_credits) == (1, 2)
    assert client.post(GENERATE, json={"prompt": "z"}, headers=user.headers).status_code == 200  # other session
    assert credit_service.verify() == []


def test_a_hold_call_repeated_with_its_request_reference_holds_once(app, make_user, database_url):
    """What a retry after a lost answer does: the same call again, with the same reference."""
    only_postgresql(database_url)
    user = make_user(credits=5)
    call = (user.id, "generation_credits", 2, 60, None, user.id, None, None, "r" * 32, True, user.id, None, [], None,
            None)
    first = procedures.call(procedures.HOLD, call)
    again = procedures.call(procedures.HOLD, call)
    assert (first.outcome, again.outcome) == ("held", "held")
    assert again.hold_id == first.hold_id and again.expires_at == first.expires_at
    assert credit_service.get_credit_balance(user.id).generation_credits == 3
    assert db.session.execute(select(CreditHold.id).where(CreditHold.wallet_id == user.id)).all() == [(first.hold_id,)]
    assert credit_service.verify() == []


def test_requests_after_every_connection_was_cut_are_served(app, client, make_user, stub, database_url):
    """No pre-ping: the first call on each dead pooled connection runs once more on a new one."""
    only_postgresql(database_url)
    admin, user = make_user(admin=True), make_user(credits=2)
    assert client.post(GENERATE, json={"prompt": "x"}, headers=user.headers).status_code == 200
    assert client.get("/api/credits/lots", headers=user.headers).status_code == 200
    checks = [
        lambda: client.post(GENERATE, json={"prompt": "y"}, headers=user.headers),  # hold and close
        lambda: client.get("/api/credits/balance", headers=user.headers),  # one read call
        lambda: client.get("/api/credits/lots", headers=user.headers),  # a session check, then a transaction
        lambda: client.post(f"/api/admin/users/{user.id}/credits", json={"amount": 1}, headers=admin.headers),
    ]
    for check in checks:
        _fill_pool(5)  # what a busy worker has: several idle connections, all cut at once
        assert terminate_connections(database_url) >= 5
        response = check()
        assert response.status_code in (200, 201), response.json
    assert credit_service.get_credit_balance(user.id).generation_credits == 1
    assert len(db.session.execute(select(CreditHold.id).where(CreditHold.wallet_id == user.id)).all()) == 2
    assert credit_service.verify() == []


def _fill_pool(n: int) -> None:
    connections = [db.engine.raw_connection() for _ in range(n)]
    for connection in connections:
        connection.close()


def test_a_hold_repeated_while_the_first_attempt_waits_for_the_lock_holds_once(app, make_user, database_url):
    """The first attempt's connection broke while it waited for the account lock, but it goes on
    and commits; its repetition (same reference) queued behind it finds its hold after the lock."""
    only_postgresql(database_url)
    user = make_user(credits=5)
    call = (user.id, "generation_credits", 2, 60, None, user.id, "k", "f", "s" * 32, True, user.id, None, [], None,
            None)
    results = []
    with AccountLock(database_url, user.id) as lock:
        attempts = [threading.Thread(target=lambda: results.append(_call_in_app(app, call))) for _ in range(2)]
        for waiting, attempt in enumerate(attempts, start=1):
            attempt.start()
            lock.wait_for_a_waiter(waiters=waiting)
    for attempt in attempts:
        attempt.join(30)
    assert [r.outcome for r in results] == ["held", "held"]
    assert results[0].hold_id == results[1].hold_id
    assert credit_service.get_credit_balance(user.id).generation_credits == 3
    assert credit_service.verify() == []


def _call_in_app(app, call):
    with app.app_context():
        return procedures.call(procedures.HOLD, call)


def test_the_balance_read_and_the_paid_routes_fold_the_session_check(app):
    assert credit_service.checks_sessions is (db.engine.dialect.name == "postgresql")
    for endpoint in ("credits.balance", "generate.generate_image", "generate.complete"):
        assert getattr(app.view_functions[endpoint], "creditapp_checks_session", False), endpoint
    assert not getattr(app.view_functions["credits.lots"], "creditapp_checks_session", False)
    if not credit_service.checks_sessions:  # SQLite: the web layer checked the session before
        with pytest.raises(ValueError):
            credit_service.balance_overview(1, session_id="0" * 32)


def test_a_logged_out_token_is_401_before_validation_and_never_uses_the_paid_limit(database_url, make_user, stub):
    app = make_app(database_url, PAID_RATE_LIMIT="3 per minute")
    with app.app_context():
        set_provider(app, stub)
        client = app.test_client()
        user = make_user(credits=10)
        gone, live = login(client, user), login(client, user)
        assert client.post("/api/auth/logout", headers=bearer(gone["access_token"])).status_code == 200
        for body in ({"prompt": "x"},) * 4 + ({},):
            response = client.post(GENERATE, json=body, headers=bearer(gone["access_token"]))
            assert (response.status_code, response.json["error"]) == (401, "token_revoked"), response.json
        answers = [client.post(GENERATE, json={"prompt": str(i)}, headers=bearer(live["access_token"])).status_code
                   for i in range(4)]
        assert answers == [200, 200, 200, 429]
        assert stub.calls == 3


def test_a_paid_request_with_an_api_key_is_its_lookup_and_two_statements(app, client, make_user, stub,
                                                                         database_url):
    """The key's lookup takes the place of the session check; its budget and its user's paid
    rate limit are counted in the hold."""
    only_postgresql(database_url)
    user = make_user(credits=3)
    key = client.post("/api/keys", json={"name": "k", "budget": {"generation_credits": 5}},
                      headers=user.headers).json["key"]
    headers = {"Authorization": f"Bearer {key}"}
    client.post(GENERATE, json={"prompt": "warm-up"}, headers=headers)
    response, sent = count(lambda: client.post(GENERATE, json={"prompt": "a"}, headers=headers))
    assert response.status_code == 200
    assert [re.search(r"FROM\s+(\w+)", s).group(1) for s in sent] == ["api_keys", "creditapp_paid_hold", "creditapp_close"]


def test_a_disabled_account_is_refused_by_the_statement_that_checks_the_caller(app, client, make_user, stub,
                                                                                database_url):
    """Disabling is read where the caller is checked anyway: one statement refuses a token's
    paid request, its balance read or a key's request, and the paid path keeps its two."""
    only_postgresql(database_url)
    admin, user = make_user(admin=True), make_user(credits=3)
    key = client.post("/api/keys", json={"name": "k"}, headers=user.headers).json["key"]
    client.post(GENERATE, json={"prompt": "warm-up"}, headers=user.headers)
    users.set_access(admin.id, user.id, disabled=True)
    for request, first in [
        (lambda: client.post(GENERATE, json={"prompt": "a"}, headers=user.headers), "creditapp_paid_hold"),
        (lambda: client.get("/api/credits/balance", headers=user.headers), "creditapp_balance"),
        (lambda: client.post(GENERATE, json={"prompt": "a"}, headers=bearer(key)), "api_keys"),
    ]:
        response, sent = count(request)
        assert (response.status_code, response.json["error"]) == (403, "account_disabled")
        assert len(sent) == 1 and re.search(r"FROM\s+(\w+)", sent[0]).group(1) == first, sent
    assert stub.calls == 1


# The statements of the code before migration 0016 (14 and 8 arguments): during a rolling deploy
# servers still running it meet the upgraded database.
HOLD_BEFORE_0016 = ("SELECT * FROM creditapp_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[], %s)")
CLOSE_BEFORE_0016 = "SELECT outcome FROM creditapp_close(%s, %s, %s, %s, %s, %s, %s, %s)"


def test_servers_of_the_previous_release_still_hold_and_close_after_the_upgrade(app, make_user, database_url):
    only_postgresql(database_url)
    user = make_user(credits=5)
    held = procedures.call(HOLD_BEFORE_0016, (user.id, "generation_credits", 2, 60, None, user.id, None, None,
                                              "o" * 32, False, user.id, None, [], "basic_generation"))
    assert held.outcome == "held"
    closed = procedures.call(CLOSE_BEFORE_0016, (held.hold_id, user.id, "generation_credits", 1, None, None, 60, None))
    assert closed.outcome == "settled"
    assert credit_service.get_credit_balance(user.id).generation_credits == 4
    assert credit_service.verify() == []


def test_a_logout_between_two_requests_is_refused_by_the_next_hold_call(database_url, make_user, stub):
    """The session check folded into the hold stays exact: the request right after the logout
    is refused by that one call, holds nothing, and uses none of the paid limit; a body the
    guard refuses (a malformed Idempotency-Key) or a team it cannot use still answers 401 first."""
    only_postgresql(database_url)
    app = make_app(database_url, PAID_RATE_LIMIT="5 per minute")
    with app.app_context():
        set_provider(app, stub)
        client = app.test_client()
        user = make_user(credits=10)
        tokens = login(client, user)
        first = client.post(GENERATE, json={"prompt": "a"}, headers=bearer(tokens["access_token"]))
        assert (first.status_code, first.headers["X-RateLimit-Remaining"]) == (200, "4")
        assert client.post("/api/auth/logout", headers=bearer(tokens["access_token"])).status_code == 200
        response, sent = count(lambda: client.post(GENERATE, json={"prompt": "b"},
                                                   headers=bearer(tokens["access_token"])))
        assert (response.status_code, response.json["error"]) == (401, "token_revoked")
        assert [re.search(r"FROM\s+(\w+)", s).group(1) for s in sent] == ["creditapp_paid_hold"]
        for headers in ({"Idempotency-Key": ""}, {"X-Team": "999999"}):
            refused = client.post(GENERATE, json={"prompt": "c"}, headers={**bearer(tokens["access_token"]), **headers})
            assert (refused.status_code, refused.json["error"]) == (401, "token_revoked"), headers
        live = client.post(GENERATE, json={"prompt": "d"}, headers=user.headers)
        assert (live.status_code, live.headers["X-RateLimit-Remaining"]) == (200, "3")
        assert (stub.calls, credit_service.get_credit_balance(user.id).generation_credits) == (2, 8)


def test_an_admission_repeated_with_its_request_reference_counts_once(app, make_user, database_url):
    """What a retry after a lost answer does: the same call again, with the same reference."""
    only_postgresql(database_url)
    user = make_user(credits=5)
    first = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "q" * 32))
    again = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "q" * 32))
    other = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "p" * 32))
    assert [(r.outcome, r.rate_hits) for r in (first, again, other)] == [("admitted", 1), ("admitted", 1),
                                                                          ("admitted", 2)]


@pytest.mark.xfail(strict=True, reason="last_ref remembers one request only: a repetition after another "
                                       "request of the same user counts twice (review hotreview)")
def test_an_admission_repeated_after_another_request_of_its_user_still_counts_once(app, make_user, database_url):
    """A lost answer's repetition comes a moment later, and the user's other requests (other
    workers) may have been counted in between."""
    only_postgresql(database_url)
    user = make_user(credits=5)
    first = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "q" * 32))
    other = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "p" * 32))
    again = procedures.call(procedures.ADMIT, (None, user.id, [3, 60], "q" * 32))
    assert [r.rate_hits for r in (first, other, again)] == [1, 2, 2]
