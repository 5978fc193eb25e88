"""Random sequences of API calls against a model of the money.

A hypothesis RuleBasedStateMachine drives the real app through the Flask test client for two
users: an administrator grants generation credits and AI tokens (some with a payment reference,
some with an Idempotency-Key), the users call the paid routes (some of which fail in the AI),
/api/ai/complete with random prompts and max_tokens, retry with a used Idempotency-Key (same
request: the first answer is replayed and nothing is charged; another request: 422
idempotency_key_reused), ask for more than they have, and send invalid requests. The machine keeps
its own model of each user's two balances, of every stored Idempotency-Key and of every grant
reference, predicts each answer from it, and after every step checks that GET /api/credits/balance
equals the model, that the ledger agrees with every balance (credit_service.verify() == []) and
that no credit hold is left open.

The app and its database are the fixtures' (one per test and backend), so the machine class is
made inside the test. Every example gets fresh users (their keys and references start empty);
the administrator is shared, so its keys carry a per-example prefix.

A failure is reported with the whole sequence of steps that led to it. Shrinking that sequence
replays the app hundreds of times (up to hypothesis' 5-minute limit), so it is off unless
CREDITAPP_SHRINK=1.
"""
import os
import uuid
from dataclasses import dataclass

from hypothesis import HealthCheck, Phase, assume, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test,
)
from sqlalchemy import func, select

from creditapp.ai import count_tokens
from creditapp.credits import credit_service
from creditapp.extensions import db
from creditapp.ledger.tables import CreditHold

GEN, TOK = "generation_credits", "ai_tokens"
def valid_text(max_size: int):
    """Any text the API accepts: NUL characters and lone surrogates are refused (422) on purpose."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=max_size)


IMAGE_URLS = ["https://images.example.com/portrait.png", "http://photos.example.org/p/1.jpg"]

# Paid image routes: path -> (feature whose price it charges, strategy of a valid body)
IMAGE_ROUTES = {
    "/api/generate": (
        "basic_generation", st.fixed_dictionaries({"prompt": valid_text(40)})),
    "/api/generate/professional-photo": (
        "professional_photo", st.fixed_dictionaries({"image_url": st.sampled_from(IMAGE_URLS)})),
    "/api/generate/hairstyle": ("change_hairstyle", st.fixed_dictionaries({
        "image_url": st.sampled_from(IMAGE_URLS), "hairstyle": valid_text(20)})),
    "/api/generate/upscale": ("upscale", st.fixed_dictionaries({
        "image_url": st.sampled_from(IMAGE_URLS), "scale": st.sampled_from([2, 4])})),
}
COMPLETE = "/api/ai/complete"
FAILS = st.sampled_from([False, False, False, True])  # True: the AI fails on this step
COMPLETE_BODY = st.fixed_dictionaries({
    "prompt": valid_text(120),
    "max_tokens": st.one_of(st.integers(1, 64), st.integers(1, 4096)),
})

URL = IMAGE_URLS[0]
# (path, raw body or JSON body, expected status, expected error code); nothing may be charged.
INVALID_REQUESTS = [
    ("/api/generate", {}, 422, "validation_error"),
    ("/api/generate", {"prompt": ""}, 422, "validation_error"),
    ("/api/generate", {"prompt": 5}, 422, "validation_error"),
    ("/api/generate", {"prompt": "x", "unknown": 1}, 422, "validation_error"),
    ("/api/generate", {"prompt": "x" * 2001}, 422, "validation_error"),
    ("/api/generate", [], 422, "validation_error"),
    ("/api/generate", b'{"prompt": "x",', 400, "bad_request"),
    ("/api/generate/professional-photo", {"image_url": "not a url"}, 422, "validation_error"),
    ("/api/generate/professional-photo", {"image_url": "ftp://images.example.com/a.png"}, 422,
     "validation_error"),
    ("/api/generate/hairstyle", {"image_url": URL}, 422, "validation_error"),
    ("/api/generate/hairstyle", {"image_url": URL, "hairstyle": ""}, 422, "validation_error"),
    ("/api/generate/upscale", {"image_url": URL, "scale": 3}, 422, "validation_error"),
    ("/api/generate/upscale", {"image_url": URL, "scale": "2"}, 422, "validation_error"),
    ("/api/generate/upscale", {"image_url": URL, "scale": 2.0}, 422, "validation_error"),
    ("/api/generate/upscale", {"image_url": URL, "scale": True}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello"}, 422, "validation_error"),
    (COMPLETE, {"max_tokens": 5}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello", "max_tokens": 0}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello", "max_tokens": 4097}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello", "max_tokens": "10"}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello", "max_tokens": 10.0}, 422, "validation_error"),
    (COMPLETE, {"prompt": "hello", "max_tokens": True}, 422, "validation_error"),
    (COMPLETE, {"prompt": "", "max_tokens": 10}, 422, "validation_error"),
]
INVALID_GRANTS = [
    {}, {"amount": 0}, {"amount": -5}, {"amount": "5"}, {"amount": 5.0}, {"amount": True},
    {"amount": 10**12 + 1}, {"amount": 5, "credit_type": "gold"}, {"amount": 5, "reason": ""},
    {"amount": 5, "reference": ""}, {"amount": 5, "unknown": 1},
]
INVALID_KEYS = ["", "has space", "x" * 256, "tab\there"]


@dataclass(frozen=True)
class Stored:
    """An Idempotency-Key's first request and the answer a retry must get back."""

    path: str
    body: dict
    status: int
    answer: dict


def _open_holds(user_ids) -> int:
    return db.session.execute(
        select(func.count()).select_from(CreditHold)
        .where(CreditHold.status == "open", CreditHold.wallet_id.in_(list(user_ids)))
    ).scalar_one()


def ledger_machine(client, stub, make_user, costs: dict) -> type[RuleBasedStateMachine]:
    admin = make_user(admin=True)

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.nonce = uuid.uuid4().hex[:8]
            self.users = []
            self.model = {}  # user id -> {GEN: n, TOK: n}
            self.keys = {}  # (caller id, key) -> Stored
            self.references = {}  # (user id, reference) -> (amount, credit type, grant id)

        # --- set-up --------------------------------------------------------------------------

        @initialize(balances=st.lists(st.tuples(
            st.integers(0, 8), st.sampled_from([0, 1, 60, 400, 5000, 20000])), min_size=2, max_size=2))
        def make_users(self, balances):
            for credits, tokens in balances:
                user = make_user(credits=credits, tokens=tokens)
                self.users.append(user)
                self.model[user.id] = {GEN: credits, TOK: tokens}

        # --- helpers -------------------------------------------------------------------------

        def key(self, index):
            return None if index is None else f"{self.nonce}-k{index}"

        def post(self, path, body, caller, key=None, extra_headers=None):
            headers = {**caller.headers, **(extra_headers or {})}
            if key is not None:
                headers["Idempotency-Key"] = key
            if isinstance(body, bytes):
                return client.post(path, data=body, headers=headers, content_type="application/json")
            return client.post(path, json=body, headers=headers)

        def expect_stored(self, caller, key, path, body, response) -> bool:
            """When the key was used before: check the replay or the refusal; True if it was."""
            stored = self.keys.get((caller.id, key)) if key is not None else None
            if stored is None:
                return False
            if (stored.path, stored.body) == (path, body):
                event("replayed")
                assert response.status_code == stored.status, response.json
                assert response.json == stored.answer
                assert response.headers.get("Idempotent-Replayed") == "true"
            else:
                event("idempotency_key_reused")
                assert response.status_code == 422, response.json
                assert response.json["error"] == "idempotency_key_reused", response.json
            return True

        def paid(self, user, path, body, key, fail, required, credit_type):
            """Send a paid request and check it against the model; returns the answer's JSON."""
            calls = stub.calls
            stub.failure_rate = 1.0 if fail else 0.0
            try:
                response = self.post(path, body, user, key)
            finally:
                stub.failure_rate = 0.0
            event(f"{path} -> {response.status_code}")
            balance = self.model[user.id]
            if self.expect_stored(user, key, path, body, response):
                assert stub.calls == calls, "a replayed or refused request called the AI"
                return None
            if balance[credit_type] < required:
                assert response.status_code == 403, response.json
                assert response.json == {
                    "error": "insufficient_credits", "message": response.json["message"],
                    "required": required, "available": balance[credit_type], "credit_type": credit_type,
                }
                assert stub.calls == calls
                return None
            assert stub.calls == calls + 1
            if fail:
                assert response.status_code == 502, response.json
                assert response.json["error"] == "generation_failed"
                return None
            assert response.status_code == 200, response.json
            answer = response.json
            charged = answer["charged"]
            assert charged["credit_type"] == credit_type
            assert 0 < charged["amount"] <= required
            balance[credit_type] -= charged["amount"]
            assert answer["balance"] == balance
            if key is not None:
                self.keys[(user.id, key)] = Stored(path, body, 200, answer)
            return answer

        # --- rules ---------------------------------------------------------------------------

        @rule(data=st.data(), credit_type=st.sampled_from([GEN, TOK]),
              amount=st.one_of(st.sampled_from([3, 500]), st.integers(1, 10), st.integers(1, 5000)),
              reference=st.sampled_from([None, None, "pay-1", "pay-2"]),
              key=st.sampled_from([None, None, 0, 1]))
        def grant(self, data, credit_type, amount, reference, key):
            user = data.draw(st.sampled_from(self.users))
            self.grant_as_admin(user, credit_type, amount, reference, self.key(key))

        @precondition(lambda self: self.references)
        @rule(data=st.data(), same=st.booleans())
        def grant_again_with_a_reference(self, data, same):
            """A re-sent payment: the same grant adds nothing (200); another one is a 409."""
            (user_id, reference), (amount, credit_type, _) = data.draw(
                st.sampled_from(sorted(self.references.items())))
            user = next(u for u in self.users if u.id == user_id)
            if not same:
                other_type = GEN if credit_type == TOK else TOK
                amount, credit_type = data.draw(
                    st.sampled_from([(amount + 1, credit_type), (amount, other_type)]))
            self.grant_as_admin(user, credit_type, amount, reference, None)

        def grant_as_admin(self, user, credit_type, amount, reference, key):
            path = f"/api/admin/users/{user.id}/credits"
            body = {"amount": amount, "credit_type": credit_type}
            if reference is not None:
                body["reference"] = reference
            response = self.post(path, body, admin, key)
            event(f"grant -> {response.status_code}")
            if self.expect_stored(admin, key, path, body, response):
                return
            original = self.references.get((user.id, reference)) if reference else None
            balance = self.model[user.id]
            if original is not None and original[:2] != (amount, credit_type):
                assert response.status_code == 409, response.json
                assert response.json["error"] == "reference_conflict"
                return
            if original is not None:
                assert response.status_code == 200, response.json  # already granted: nothing added
                assert response.json["grant"]["id"] == original[2]
            else:
                assert response.status_code == 201, response.json
                balance[credit_type] += amount
                if reference is not None:
                    grant_id = response.json["grant"]["id"]
                    self.references[(user.id, reference)] = (amount, credit_type, grant_id)
            answer = response.json
            assert answer["user_id"] == user.id
            assert {GEN: answer[GEN], TOK: answer[TOK]} == balance
            assert (answer["grant"]["amount"], answer["grant"]["credit_type"]) == (amount, credit_type)
            if key is not None:
                self.keys[(admin.id, key)] = Stored(path, body, response.status_code, answer)

        @rule(data=st.data(), path=st.sampled_from(sorted(IMAGE_ROUTES)), fail=FAILS,
              key=st.sampled_from([None, None, 0, 1, 2]))
        def generate(self, data, path, fail, key):
            user = data.draw(st.sampled_from(self.users))
            feature, bodies = IMAGE_ROUTES[path]
            body = data.draw(bodies)
            answer = self.paid(user, path, body, self.key(key), fail, costs[feature], GEN)
            if answer is not None:
                assert answer["charged"]["amount"] == costs[feature]
                assert answer["result"]["feature"] == feature

        @rule(data=st.data(), body=COMPLETE_BODY, fail=FAILS,
              key=st.sampled_from([None, None, 0, 1, 2]))
        def complete(self, data, body, fail, key):
            user = data.draw(st.sampled_from(self.users))
            self.complete_as(user, body, fail, self.key(key))

        def complete_as(self, user, body, fail, key):
            prompt_tokens = count_tokens(body["prompt"])
            required = (prompt_tokens + body["max_tokens"]) * costs["ai_complete"]  # the worst case
            answer = self.paid(user, COMPLETE, body, key, fail, required, TOK)
            if answer is not None:
                usage = answer["usage"]
                assert usage["prompt_tokens"] == prompt_tokens
                assert 0 <= usage["completion_tokens"] <= body["max_tokens"]
                assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
                assert answer["charged"]["amount"] == usage["total_tokens"] * costs["ai_complete"]

        @precondition(lambda self: self.keys)
        @rule(data=st.data(), fail=FAILS)
        def retry_same_request(self, data, fail):
            """A stored key with its own request: the first answer again, and no charge."""
            (caller_id, key), stored = data.draw(st.sampled_from(sorted(self.keys.items())))
            caller = admin if caller_id == admin.id else next(u for u in self.users if u.id == caller_id)
            calls = stub.calls
            stub.failure_rate = 1.0 if fail else 0.0  # the AI must not even be asked
            try:
                response = self.post(stored.path, stored.body, caller, key)
            finally:
                stub.failure_rate = 0.0
            assert self.expect_stored(caller, key, stored.path, stored.body, response)
            assert stub.calls == calls

        @precondition(lambda self: any(caller_id != admin.id for caller_id, _ in self.keys))
        @rule(data=st.data())
        def reuse_key_for_another_request(self, data):
            """A stored key with a different (valid) request: 422, nothing charged."""
            (user_id, key), stored = data.draw(st.sampled_from(
                sorted(item for item in self.keys.items() if item[0][0] != admin.id)))
            user = next(u for u in self.users if u.id == user_id)
            path = data.draw(st.sampled_from(sorted(IMAGE_ROUTES) + [COMPLETE]))
            body = data.draw(COMPLETE_BODY if path == COMPLETE else IMAGE_ROUTES[path][1])
            assume((path, body) != (stored.path, stored.body))
            calls = stub.calls
            response = self.post(path, body, user, key)
            assert response.status_code == 422, response.json
            assert response.json["error"] == "idempotency_key_reused"
            assert stub.calls == calls

        @rule(data=st.data(), prompt=valid_text(30), by=st.integers(1, 100))
        def ask_for_more_tokens_than_available(self, data, prompt, by):
            user = data.draw(st.sampled_from(self.users))
            needed = self.model[user.id][TOK] // costs["ai_complete"] + by
            max_tokens = needed - count_tokens(prompt)
            if not 1 <= max_tokens <= 4096:
                return  # this balance cannot be overdrawn by one request of this prompt
            self.complete_as(user, {"prompt": prompt, "max_tokens": max_tokens}, False, None)

        @rule(data=st.data(), request=st.sampled_from(INVALID_REQUESTS),
              key=st.sampled_from([None, 0, 1, 2]))
        def invalid_request(self, data, request, key):
            user = data.draw(st.sampled_from(self.users))
            path, body, status, error = request
            calls = stub.calls
            response = self.post(path, body, user, self.key(key))
            # Validated before the key is looked up: a used key changes nothing here.
            assert response.status_code == status, response.get_data(as_text=True)
            assert response.json["error"] == error
            assert stub.calls == calls

        @rule(data=st.data(), bad_key=st.sampled_from(INVALID_KEYS),
              path=st.sampled_from(sorted(IMAGE_ROUTES)))
        def invalid_idempotency_key(self, data, bad_key, path):
            user = data.draw(st.sampled_from(self.users))
            body = data.draw(IMAGE_ROUTES[path][1])
            calls = stub.calls
            response = self.post(path, body, user, extra_headers={"Idempotency-Key": bad_key})
            assert response.status_code == 422, response.json
            assert response.json["error"] == "validation_error"
            assert stub.calls == calls

        @rule(data=st.data(), body=st.sampled_from(INVALID_GRANTS))
        def invalid_grant(self, data, body):
            user = data.draw(st.sampled_from(self.users))
            response = self.post(f"/api/admin/users/{user.id}/credits", body, admin)
            assert response.status_code == 422, response.json
            assert response.json["error"] == "validation_error"

        @rule(data=st.data(), amount=st.integers(1, 100))
        def user_cannot_grant(self, data, amount):
            user = data.draw(st.sampled_from(self.users))
            response = self.post(f"/api/admin/users/{user.id}/credits", {"amount": amount}, user)
            assert response.status_code == 403, response.json
            assert response.json["error"] == "forbidden"

        # --- after every step ----------------------------------------------------------------

        @invariant()
        def balances_are_the_model(self):
            for user in self.users:
                response = client.get("/api/credits/balance", headers=user.headers)
                assert response.status_code == 200, response.json
                assert {GEN: response.json[GEN], TOK: response.json[TOK]} == self.model[user.id], (
                    f"user {user.id}: the API says {response.json}, the model {self.model[user.id]}")

        @invariant()
        def ledger_agrees(self):
            # Only this example's users: an earlier example's damage must not make this one fail
            # at another step (hypothesis replays a failure and needs it to happen the same way).
            assert [d for d in credit_service.verify() if d.wallet_id in self.model] == []
            assert _open_holds(self.model) == 0, "a request left its credit hold open"

    return LedgerMachine


def test_ledger_follows_the_model(app, client, stub, make_user):
    stub.failure_rate = 0.0
    machine = ledger_machine(client, stub, make_user, dict(app.config["CREDIT_COSTS"]))
    phases = list(Phase) if os.environ.get("CREDITAPP_SHRINK") == "1" else [
        phase for phase in Phase if phase not in (Phase.shrink, Phase.explain)]
    run_state_machine_as_test(machine, settings=settings(
        max_examples=30, stateful_step_count=25, deadline=None, database=None, phases=phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    ))
    assert credit_service.verify() == []
