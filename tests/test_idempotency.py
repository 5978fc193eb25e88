"""Idempotency-Key on paid routes and admin grants, through the test client."""
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from creditapp.api import idempotency
from creditapp.ledger import keys
from creditapp.credits import CreditType, credit_service
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.ledger.tables import CreditHold, IdempotencyKey, LedgerEntry

GENERATE = "/api/generate"


def post(client, user, body=None, key="key-1", path=GENERATE):
    headers = {**user.headers, "Idempotency-Key": key} if key is not None else user.headers
    return client.post(path, json=body if body is not None else {"prompt": "a fox"}, headers=headers)


def generation_credits(user):
    return credit_service.get_credit_balance(user.id).generation_credits


def count(model, *where):
    with atomic(write=False) as session:
        return session.execute(select(func.count()).select_from(model).where(*where)).scalar()


def test_retry_replays_the_first_answer_without_charging_again(client, make_user, stub):
    user = make_user(credits=3)
    first = post(client, user)
    second = post(client, user)
    assert first.status_code == second.status_code == 200
    assert second.json == first.json
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert stub.calls == 1
    assert generation_credits(user) == 2
    assert credit_service.verify() == []


def test_same_json_in_another_key_order_or_spacing_is_the_same_request(client, make_user, stub):
    user = make_user(tokens=100)
    headers = {**user.headers, "Idempotency-Key": "k", "Content-Type": "application/json"}
    assert client.post("/api/ai/complete", data='{"prompt": "hi", "max_tokens": 5}', headers=headers).status_code == 200
    again = client.post("/api/ai/complete", data='{"max_tokens":5,"prompt":"hi"}', headers=headers)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert stub.calls == 1


@pytest.mark.parametrize("body, path", [
    ({"prompt": "another fox"}, GENERATE),
    ({"image_url": "https://example.com/a.png"}, "/api/generate/professional-photo"),
])
def test_key_reused_for_another_request_is_422(client, make_user, stub, body, path):
    user = make_user(credits=3)
    post(client, user)
    response = post(client, user, body=body, path=path)
    assert response.status_code == 422
    assert response.json["error"] == "idempotency_key_reused"
    assert stub.calls == 1
    assert generation_credits(user) == 2


def test_keys_are_scoped_per_user(client, make_user, stub):
    alice, bob = make_user(credits=1), make_user(credits=1)
    assert post(client, alice).status_code == 200
    bob_response = post(client, bob)
    assert bob_response.status_code == 200
    assert "Idempotent-Replayed" not in bob_response.headers
    assert (generation_credits(alice), generation_credits(bob), stub.calls) == (0, 0, 2)


def test_requests_that_failed_are_not_stored(client, make_user, stub):
    user = make_user(credits=0)
    assert post(client, user, body={"prompt": ""}).status_code == 422          # validation
    assert post(client, user).status_code == 403                               # too few credits
    credit_service.add_credits(user.id, 1, CreditType.GENERATION_CREDITS)
    stub.failure_rate = 1.0
    assert post(client, user).status_code == 502                               # the AI failed
    stub.failure_rate = 0.0
    response = post(client, user)
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert generation_credits(user) == 0
    assert credit_service.verify() == []


def _claim_in_flight(user, body, key="key-1", path=GENERATE):
    fingerprint = idempotency.fingerprint("POST", path, __import__("json").dumps(body).encode())
    return credit_service.reserve(user.id, 1, CreditType.GENERATION_CREDITS, key=key, fingerprint=fingerprint)


def test_key_in_flight_is_409_and_changes_nothing(client, make_user, stub):
    user = make_user(credits=3)
    _claim_in_flight(user, {"prompt": "a fox"})
    response = post(client, user)
    assert response.status_code == 409
    assert response.json["error"] == "idempotency_key_in_use"
    assert post(client, user, body={"prompt": "other"}).json["error"] == "idempotency_key_reused"
    assert (stub.calls, generation_credits(user)) == (0, 2)


def test_key_of_a_request_that_died_is_free_once_its_hold_expired(client, make_user, stub):
    user = make_user(credits=3)
    _claim_in_flight(user, {"prompt": "a fox"})
    with atomic() as session:
        session.execute(update(CreditHold).values(expires_at=utcnow() - timedelta(seconds=1)))
    response = post(client, user)
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert generation_credits(user) == 2  # the dead request's hold came back, this one paid
    assert credit_service.verify() == []


def test_expired_key_runs_again(client, make_user, stub):
    user = make_user(credits=3)
    post(client, user)
    with atomic() as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert "Idempotent-Replayed" not in post(client, user).headers
    assert (stub.calls, generation_credits(user)) == (2, 1)


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve", "tab\there"])
def test_malformed_key_is_422_before_anything(client, make_user, stub, key):
    user = make_user(credits=3)
    response = client.post(GENERATE, json={"prompt": "a fox"},
                           headers={**user.headers, "Idempotency-Key": key.encode().decode("latin-1")})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["errors"]
    assert (stub.calls, generation_credits(user), count(CreditHold)) == (0, 3, 0)


def test_longest_key_is_accepted(client, make_user, stub):
    user = make_user(credits=1)
    assert post(client, user, key="k" * 255).status_code == 200


BROKEN_STORE = """
CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'disk full'; END $$;
CREATE TRIGGER test_disk_full BEFORE UPDATE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION test_disk_full();
"""


@contextmanager
def answers_cannot_be_stored(monkeypatch):
    """Storing a key's answer fails: in Python on SQLite, in the database's function on PostgreSQL."""
    if not credit_service.checks_sessions:
        def broken_store(*args, **kwargs):
            raise RuntimeError("disk full")

        with monkeypatch.context() as patch:
            patch.setattr(keys, "complete_for_hold", broken_store)
            yield
        return
    with atomic() as session:
        session.execute(text(BROKEN_STORE))
    try:
        yield
    finally:
        with atomic() as session:
            session.execute(text("DROP TRIGGER test_disk_full ON idempotency_keys; DROP FUNCTION test_disk_full()"))


def test_answer_and_charge_commit_together(client, make_user, stub, monkeypatch):
    user = make_user(credits=1)
    with answers_cannot_be_stored(monkeypatch):
        response = post(client, user)
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"
    # No charge committed and no answer stored; the hold was given back at once.
    assert count(LedgerEntry, LedgerEntry.kind == "settle") == 0
    assert count(IdempotencyKey) == 0
    assert count(CreditHold, CreditHold.status == "released") == 1
    assert generation_credits(user) == 1
    assert credit_service.verify() == []
    assert post(client, user).status_code == 200  # the key is free for the retry


def test_prune_deletes_only_expired_keys(app, client, make_user, stub):
    user = make_user(credits=3)
    post(client, user, key="old")
    post(client, user, key="new")
    with atomic() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old")
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    result = app.test_cli_runner().invoke(args=["credits", "prune-idempotency"])
    assert result.exit_code == 0
    assert "pruned 1 " in result.output
    assert count(IdempotencyKey) == 1


def grant(client, admin, user_id, body, key=None):
    headers = {**admin.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"/api/admin/users/{user_id}/credits", json=body, headers=headers)


def test_admin_grant_with_a_key_grants_once(client, make_user):
    admin, user = make_user(admin=True), make_user()
    first = grant(client, admin, user.id, {"amount": 5}, key="grant-1")
    second = grant(client, admin, user.id, {"amount": 5}, key="grant-1")
    assert first.status_code == second.status_code == 201
    assert second.json == first.json
    assert second.headers["Idempotent-Replayed"] == "true"
    assert generation_credits(user) == 5
    assert grant(client, admin, user.id, {"amount": 6}, key="grant-1").json["error"] == "idempotency_key_reused"


def test_admin_grant_reference_is_granted_once(client, make_user):
    admin, user, other = make_user(admin=True), make_user(), make_user()
    body = {"amount": 10, "reference": "evt_123"}
    first = grant(client, admin, user.id, body)
    again = grant(client, admin, user.id, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["grant"] == first.json["grant"]
    assert generation_credits(user) == 10
    conflict = grant(client, admin, user.id, {"amount": 11, "reference": "evt_123"})
    assert (conflict.status_code, conflict.json["error"]) == (409, "reference_conflict")
    assert grant(client, admin, other.id, body).status_code == 201  # references are per user
    assert (generation_credits(user), generation_credits(other)) == (10, 10)
    assert credit_service.verify() == []


def test_cli_grant_reference(app, make_user):
    user = make_user()
    runner = app.test_cli_runner()
    args = ["credits", "grant", user.username, "4", "--reference", "invoice-9"]
    assert runner.invoke(args=args).exit_code == 0
    repeat = runner.invoke(args=args)
    assert repeat.exit_code == 0 and "nothing added" in repeat.output
    assert generation_credits(user) == 4
    conflict = runner.invoke(args=["credits", "grant", user.username, "5", "--reference", "invoice-9"])
    assert conflict.exit_code != 0 and "invoice-9" in conflict.output
