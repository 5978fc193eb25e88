"""Rate limits (Flask-Limiter) and request size limits."""
import os
from dataclasses import dataclass

import pytest
import redis
from flask_jwt_extended import create_access_token

from creditapp import users
from creditapp.credits import credit_service
from creditapp.ledger import Balance

from creditapp.testing import make_app

# Flask-Limiter's settings belong to its one instance, so the users here are made inside the
# limited app (the make_user fixture would build a second, unlimited app).


@dataclass
class User:
    id: int
    username: str
    password: str = "correct-horse-battery"

    @property
    def headers(self):
        return {"Authorization": f"Bearer {create_access_token(identity=str(self.id))}"}


def make_user(app, name, credits=0):
    created = users.create_user(name, User.password, signup_grant=Balance(credits, 0),
                                hash_method=app.config["PASSWORD_HASH_METHOD"])
    return User(created["id"], name)


@pytest.fixture(params=["memory", "redis"])
def limited_app(request, database_url):
    storage = "memory://"
    if request.param == "redis":
        # A Redis database per pytest-xdist worker (gw0 10, gw1 9, ...), flushed: tests in
        # parallel repeat user ids (each has a database of its own), and the brokers' queues
        # live in database 14.
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
        storage = f"redis://127.0.0.1:6379/{10 - worker % 8}"
        try:
            redis.Redis.from_url(storage, socket_connect_timeout=1).flushdb()
        except redis.RedisError as exc:
            pytest.skip(f"no Redis for rate limits: {exc}")
    app = make_app(database_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI=storage,
                   AUTH_RATE_LIMIT="3 per minute", PAID_RATE_LIMIT="2 per minute")
    with app.app_context():
        yield app


def assert_429(response):
    assert response.status_code == 429
    assert response.json["error"] == "too_many_requests"
    assert int(response.headers["Retry-After"]) > 0


def test_login_is_limited_per_address(limited_app):
    client = limited_app.test_client()
    user = make_user(limited_app, "alice")
    wrong = {"username": user.username, "password": "wrong-password"}
    assert [client.post("/api/auth/login", json=wrong).status_code for _ in range(3)] == [401] * 3
    assert_429(client.post("/api/auth/login", json={"username": user.username, "password": user.password}))
    other_address = client.post("/api/auth/login", json=wrong, environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert other_address.status_code == 401


def test_register_is_limited_per_address(limited_app):
    client = limited_app.test_client()
    statuses = [client.post("/api/auth/register", json={"username": f"new{i}", "password": "long-password"}).status_code
                for i in range(4)]
    assert statuses == [201, 201, 201, 429]


def test_invalid_attempts_count_too(limited_app):
    client = limited_app.test_client()
    statuses = [client.post("/api/auth/register", json={"username": "x"}).status_code for _ in range(3)]
    assert statuses == [422] * 3
    assert_429(client.post("/api/auth/register", json={"username": "valid", "password": "long-password"}))


def test_paid_routes_are_limited_per_user_before_any_hold(limited_app):
    client = limited_app.test_client()
    alice, bob = make_user(limited_app, "alice", credits=10), make_user(limited_app, "bob", credits=10)
    for _ in range(2):
        assert client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code == 200
    assert_429(client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers))
    assert credit_service.get_credit_balance(alice.id).generation_credits == 8
    assert client.post("/api/generate", json={"prompt": "x"}, headers=bob.headers).status_code == 200
    assert credit_service.verify() == []


def test_limit_needs_authentication_first(limited_app):
    response = limited_app.test_client().post("/api/generate", json={"prompt": "x"})
    assert (response.status_code, response.json["error"]) == (401, "authorization_required")


def test_oversized_body_is_413_before_anything(client, make_user, stub):
    user = make_user(credits=1)
    response = client.post("/api/generate", data=b'{"prompt": "' + b"x" * 70_000 + b'"}',
                           content_type="application/json", headers=user.headers)
    assert (response.status_code, response.json["error"]) == (413, "payload_too_large")
    assert stub.calls == 0
    assert credit_service.get_credit_balance(user.id).generation_credits == 1


def test_the_paid_limit_is_one_budget_per_user_across_every_paid_route(limited_app):
    """PAID_RATE_LIMIT is 2 per minute here: two requests on two different routes use it up."""
    client = limited_app.test_client()
    alice = make_user(limited_app, "alice", credits=10)
    image = "https://images.example.com/a.png"
    assert client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code == 200
    assert client.post("/api/generate/upscale", json={"image_url": image, "scale": 2},
                       headers=alice.headers).status_code == 200
    for path, body in (("/api/generate/hairstyle", {"image_url": image, "hairstyle": "bob"}),
                       ("/api/generate/professional-photo", {"image_url": image}),
                       ("/api/ai/complete", {"prompt": "hi", "max_tokens": 1}),
                       ("/api/generate", {"prompt": "x"})):
        assert_429(client.post(path, json=body, headers=alice.headers))
    assert credit_service.get_credit_balance(alice.id).generation_credits == 7
    assert credit_service.verify() == []


def test_a_paid_feature_added_on_another_blueprint_shares_the_budget(limited_app):
    """A developer's own paid route gets the per-user limit from require_credits itself."""
    from flask import Blueprint, jsonify

    from creditapp.credits import CreditType, require_credits

    extra = Blueprint("extra_feature", __name__)

    @extra.post("/api/sketch")
    @require_credits(1, CreditType.GENERATION_CREDITS)
    def sketch():
        return jsonify(ok=True)

    limited_app.register_blueprint(extra)
    client = limited_app.test_client()
    alice = make_user(limited_app, "alice", credits=10)
    assert client.post("/api/sketch", headers=alice.headers).status_code == 200
    assert client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code == 200
    assert_429(client.post("/api/sketch", headers=alice.headers))


def test_the_memory_storage_restarts_its_expiry_timer_once_under_many_threads(database_url):
    """limits 5.8.0 restarts the memory storage's expiry timer with a check-then-start that two
    of gunicorn's threads can run at once ("threads can only be started once": a 500). The
    window is widened here, the attribute taking a moment to set, so the race is met every run."""
    import threading
    import time

    from creditapp.extensions import limiter

    app = make_app(database_url, RATELIMIT_STORAGE_URI="memory://")
    storage_class = type(limiter.storage)

    class Widened(storage_class):
        @property
        def timer(self):
            return self.__dict__["_timer"]

        @timer.setter
        def timer(self, timer):
            self.__dict__["_timer"] = timer
            time.sleep(0.001)

    storage = Widened("memory://")
    time.sleep(0.05)  # its first expiry timer has run out: the next hits restart it
    threads, errors = 8, []
    start = threading.Barrier(threads)

    def hit(n):
        start.wait()
        try:
            storage.incr(f"paid/user:{n}", 60)
        except Exception as exc:  # the 500 gunicorn answered
            errors.append(exc)

    workers = [threading.Thread(target=hit, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert [storage.get(f"paid/user:{n}") for n in range(threads)] == [1] * threads
    assert app.config["RATELIMIT_STORAGE_URI"] == "memory://"


@pytest.mark.slow
def test_a_burst_over_the_paid_limit_on_two_workers_gets_exactly_the_limit(database_url, make_user, live_server):
    """The paid limit is counted by the hold's database call: 30 requests at once, on two
    worker processes of four threads each, a token's and a key's of one user mixed (a key
    shares its user's budget), get exactly the 12 the limit allows, with today's 429."""
    import requests

    from creditapp.testing.servers import fire_together

    user = make_user(credits=100)
    with live_server(PAID_RATE_LIMIT="12 per minute", AI_STUB_LATENCY_MS=20) as server:
        key = requests.post(f"{server.url}/api/keys", json={"name": "burst"}, headers=user.headers,
                            timeout=30).json()["key"]

        def send(i):
            headers = user.headers if i % 2 else {"X-API-Key": key}
            return requests.post(f"{server.url}/api/generate", json={"prompt": str(i)}, headers=headers, timeout=60)

        answers = fire_together(30, send)
    statuses = [answer.status_code for answer in answers]
    assert sorted(statuses) == [200] * 12 + [429] * 18
    limited = [answer for answer in answers if answer.status_code == 429]
    assert {answer.json()["error"] for answer in limited} == {"too_many_requests"}
    assert all(answer.headers["X-RateLimit-Remaining"] == "0" and int(answer.headers["Retry-After"]) > 0
               and answer.headers["X-RateLimit-Limit"] == "12" for answer in limited)
    assert credit_service.get_credit_balance(user.id).generation_credits == 88
    assert credit_service.verify() == []


def test_a_refused_request_counts_and_a_body_refused_before_the_guard_does_not(limited_app):
    """As with Flask-Limiter in front of the guard: a 422 of the body (checked before) is not
    counted, a request the guard or the hold refuses (403, a bad Idempotency-Key) is; HEAD is
    not. The 429 wins over what would have refused it."""
    client = limited_app.test_client()
    alice = make_user(limited_app, "alice", credits=0)
    assert client.post("/api/generate", json={}, headers=alice.headers).status_code == 422
    refused = client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers)
    assert (refused.status_code, refused.headers["X-RateLimit-Remaining"]) == (403, "1")
    assert client.head("/api/generate", headers=alice.headers).status_code == 405
    bad_key = client.post("/api/generate", json={"prompt": "x"}, headers={**alice.headers, "Idempotency-Key": ""})
    assert (bad_key.status_code, bad_key.headers["X-RateLimit-Remaining"]) == (422, "0")
    assert_429(client.post("/api/generate", json={"prompt": "x"}, headers={**alice.headers, "Idempotency-Key": ""}))
    assert client.post("/api/generate", json={}, headers=alice.headers).status_code == 422


def test_the_paid_limit_windows_restart_at_their_first_hit_after_they_end(limited_app):
    """Fixed windows as Flask-Limiter's fixed-window storage keeps them: a window begins at the
    first hit after the last one ended."""
    from datetime import timedelta

    from creditapp.ledger.clock import utcnow
    from creditapp.ledger.admission import COUNTERS
    from creditapp.extensions import db

    client = limited_app.test_client()
    alice = make_user(limited_app, "alice", credits=10)
    for _ in range(2):
        assert client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code == 200
    assert_429(client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers))
    with db.engine.begin() as connection:  # the window ended a moment ago
        connection.execute(COUNTERS.update().where(COUNTERS.c.user_id == alice.id)
                           .values(window_ends_at=utcnow() - timedelta(seconds=1)))
    again = client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers)
    assert (again.status_code, again.headers["X-RateLimit-Remaining"]) == (200, "1")
    assert 58 <= int(again.headers["Retry-After"]) <= 61


def test_a_request_its_key_budget_refuses_is_counted_against_its_users_limit(limited_app):
    """A cap's refusal undoes the hold's transaction, and the request stays counted; the key
    and its user's login token share one budget."""
    client = limited_app.test_client()
    alice = make_user(limited_app, "alice", credits=10)
    key = client.post("/api/keys", json={"name": "k", "budget": {"generation_credits": 1}},
                      headers=alice.headers).json["key"]
    assert client.post("/api/generate", json={"prompt": "x"}, headers={"X-API-Key": key}).status_code == 200
    refused = client.post("/api/generate", json={"prompt": "x"}, headers={"X-API-Key": key})
    assert (refused.status_code, refused.json["error"]) == (403, "key_budget_exceeded")
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    assert_429(client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers))
    assert_429(client.post("/api/generate", json={"prompt": "x"}, headers={"X-API-Key": key}))
    assert credit_service.get_credit_balance(alice.id).generation_credits == 9


@pytest.fixture
def windows_app(database_url, manual_clock):
    """Two windows, given longest first: Flask-Limiter counted them shortest first (it sorts a
    route's limits), whatever order the setting lists them in."""
    app = make_app(database_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                   PAID_RATE_LIMIT="3 per minute;1 per second")
    with app.app_context():
        yield app


def test_several_windows_are_counted_shortest_first_as_flask_limiter_counted_them(windows_app, manual_clock):
    """A request refused by the 1/second window stops there and is not counted in the minute's:
    with the minute counted first, two refused requests used up the minute's budget and the
    next second's request was refused too."""
    client = windows_app.test_client()
    alice = make_user(windows_app, "alice", credits=10)

    def statuses(n):
        return [client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code
                for _ in range(n)]

    assert statuses(3) == [200, 429, 429]
    manual_clock.advance(1)
    assert statuses(2) == [200, 429]
    manual_clock.advance(1)
    assert statuses(1) == [200]
    manual_clock.advance(1)
    assert statuses(1) == [429]  # the minute's 4th
    assert credit_service.get_credit_balance(alice.id).generation_credits == 7


def test_two_windows_of_one_length_count_a_request_once(database_url):
    """Two limits over one length share a counter row: each request is one hit, the smaller
    amount decides (Flask-Limiter kept a counter per limit; both counted every request)."""
    app = make_app(database_url, RATELIMIT_ENABLED=True, RATELIMIT_STORAGE_URI="memory://",
                   PAID_RATE_LIMIT="5 per minute;10 per minute")
    with app.app_context():
        client = app.test_client()
        alice = make_user(app, "alice", credits=10)
        statuses = [client.post("/api/generate", json={"prompt": "x"}, headers=alice.headers).status_code
                    for _ in range(6)]
        assert statuses == [200] * 5 + [429]


@pytest.mark.slow
def test_bursts_on_two_workers_meet_every_window_exactly(database_url, make_user, live_server, request):
    """"5/second;12/minute" as Flask-Limiter counted it, under bursts of 20 on two worker
    processes, a token's and a key's requests of one user mixed: 5 a second until the minute's
    12, and the minute's window starts again at its end to the instant (PostgreSQL: the test's
    clock is the functions' creditapp_now(), in every worker)."""
    import requests

    from creditapp.testing.servers import fire_together

    postgres = database_url.startswith("postgresql")
    clock = request.getfixturevalue("manual_clock") if postgres else None
    user = make_user(credits=100)
    with live_server(PAID_RATE_LIMIT="12/minute;5/second", AI_STUB_LATENCY_MS=0) as server:
        key = requests.post(f"{server.url}/api/keys", json={"name": "burst"}, headers=user.headers,
                            timeout=30).json()["key"]

        def burst():
            def send(i):
                headers = user.headers if i % 2 else {"X-API-Key": key}
                return requests.post(f"{server.url}/api/generate", json={"prompt": str(i)}, headers=headers,
                                     timeout=60)
            answers = fire_together(20, send)
            limited = [a for a in answers if a.status_code == 429]
            assert all(a.headers["X-RateLimit-Remaining"] == "0" for a in limited)
            return sorted(a.status_code for a in answers).count(200), len(limited)

        served = [burst()]
        if postgres:
            for seconds in (1, 1, 57.999, 1):
                clock.advance(seconds)
                served.append(burst())
    if postgres:
        # the minute's 12th at the third second; just before its end a new second admits none;
        # a second later, to the instant, both that second's window and the minute have ended
        assert served == [(5, 15), (5, 15), (2, 18), (0, 20), (5, 15)]
    else:
        assert served == [(5, 15)]
    assert credit_service.get_credit_balance(user.id).generation_credits == 100 - sum(s for s, _ in served)
    assert credit_service.verify() == []
