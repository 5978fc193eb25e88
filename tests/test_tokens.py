"""Refresh, logout and revocation (database and Redis), and cookie mode for browsers."""
import pytest
import redis

from creditapp import settings as config
from creditapp.credits import credit_service

from creditapp.testing import make_app
from creditapp.testing.servers import fire_together

REDIS_URL = "redis://127.0.0.1:6379/15"


def login(client, user):
    response = client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    assert response.status_code == 200
    return response.json


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(params=["database", "redis"])
def blocklist_app(request, database_url):
    overrides = {}
    if request.param == "redis":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        except redis.RedisError as exc:
            pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
        overrides["TOKEN_BLOCKLIST_URL"] = REDIS_URL
    app = make_app(database_url, **overrides)
    with app.app_context():
        yield app


def test_refresh_gives_a_new_access_token(client, make_user):
    user = make_user(credits=1)
    tokens = login(client, user)
    response = client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
    assert response.status_code == 200
    assert set(response.json) == {"access_token", "token_type", "expires_in"}
    assert client.get("/api/credits/balance", headers=bearer(response.json["access_token"])).status_code == 200


def test_access_token_cannot_refresh(client, make_user):
    tokens = login(client, make_user())
    response = client.post("/api/auth/refresh", headers=bearer(tokens["access_token"]))
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")


def test_refresh_token_is_refused_on_paid_routes(client, make_user, stub):
    user = make_user(credits=1)
    tokens = login(client, user)
    response = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(tokens["refresh_token"]))
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")
    assert stub.calls == 0


def test_logout_revokes_every_token_of_the_session_everywhere(blocklist_app, database_url, make_user):
    client = blocklist_app.test_client()
    user = make_user(credits=2)
    tokens = login(client, user)
    refreshed = client.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"])).json["access_token"]
    other_session = login(client, user)
    assert client.post("/api/auth/logout", headers=bearer(tokens["access_token"])).json == {"status": "logged_out"}

    # Another worker or host: a separate app on the same database (and the same Redis).
    other_host = make_app(database_url, TOKEN_BLOCKLIST_URL=blocklist_app.config["TOKEN_BLOCKLIST_URL"])
    for app in (blocklist_app, other_host):
        with app.app_context():
            http = app.test_client()
            for token in (tokens["access_token"], refreshed):
                response = http.post("/api/generate", json={"prompt": "x"}, headers=bearer(token))
                assert (response.status_code, response.json["error"]) == (401, "token_revoked")
                assert http.get("/api/credits/balance", headers=bearer(token)).status_code == 401
            response = http.post("/api/auth/refresh", headers=bearer(tokens["refresh_token"]))
            assert (response.status_code, response.json["error"]) == (401, "token_revoked")
            # Logging out one session leaves the user's other sessions alone.
            assert http.get("/api/credits/balance", headers=bearer(other_session["access_token"])).status_code == 200
    assert credit_service.get_credit_balance(user.id).generation_credits == 2


def test_logout_with_the_refresh_token_also_works(client, make_user):
    tokens = login(client, make_user())
    assert client.post("/api/auth/logout", headers=bearer(tokens["refresh_token"])).status_code == 200
    assert client.get("/api/credits/balance", headers=bearer(tokens["access_token"])).status_code == 401


def test_logout_with_a_token_of_a_user_that_no_longer_exists_is_401(blocklist_app):
    from flask_jwt_extended import create_access_token

    token = create_access_token(identity="4242", additional_claims={"sid": "gone"})
    response = blocklist_app.test_client().post("/api/auth/logout", headers=bearer(token))
    assert (response.status_code, response.json["error"]) == (401, "invalid_token")


def test_logout_needs_a_token(client):
    response = client.post("/api/auth/logout")
    assert (response.status_code, response.json["error"]) == (401, "authorization_required")


@pytest.fixture
def cookie_app(database_url):
    app = make_app(database_url, JWT_TOKEN_LOCATION=["cookies"], CORS_ORIGINS=["https://app.example"])
    with app.app_context():
        yield app


def test_cookie_mode_needs_the_csrf_token(cookie_app, make_user):
    client = cookie_app.test_client()
    user = make_user(credits=2)
    response = client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    cookies = {c.key: c.value for c in (client.get_cookie(name) for name in
               ("access_token_cookie", "csrf_access_token", "refresh_token_cookie")) if c}
    assert set(cookies) == {"access_token_cookie", "csrf_access_token", "refresh_token_cookie"}
    assert client.get_cookie("access_token_cookie").http_only
    assert response.status_code == 200

    refused = client.post("/api/generate", json={"prompt": "x"})
    assert (refused.status_code, refused.json["error"]) == (401, "authorization_required")
    assert "CSRF" in refused.json["message"]
    accepted = client.post("/api/generate", json={"prompt": "x"},
                           headers={"X-CSRF-TOKEN": cookies["csrf_access_token"]})
    assert accepted.status_code == 200
    assert client.get("/api/credits/balance").json["generation_credits"] == 1  # GET needs no CSRF token

    client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": cookies["csrf_access_token"]})
    assert client.get_cookie("access_token_cookie") is None


def test_cors_allows_only_configured_origins(cookie_app, client):
    allowed = cookie_app.test_client().options("/api/credits/costs", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = cookie_app.test_client().get("/api/credits/costs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_by_default(database_url):
    app = make_app(database_url, CORS_ORIGINS=config.Config.CORS_ORIGINS)
    with app.app_context():
        assert app.config["CORS_ORIGINS"] == []  # nothing set in the environment
        response = app.test_client().get("/api/credits/costs", headers={"Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_the_tests_run_with_cors_on(client):
    """TestingConfig keeps CORS on, so every route test passes through Flask-CORS."""
    response = client.get("/api/credits/costs", headers={"Origin": "http://web.test"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://web.test"


def test_cookie_logout_with_only_the_refresh_cookie(cookie_app, make_user):
    client = cookie_app.test_client()
    user = make_user(credits=1)
    client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    refresh_csrf = client.get_cookie("csrf_refresh_token").value
    client.delete_cookie("access_token_cookie")  # expired and gone; the refresh cookie remains
    response = client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": refresh_csrf})
    assert response.status_code == 200, response.json
    assert client.get_cookie("refresh_token_cookie") is None
    # The session is over: a copy of the refresh token kept elsewhere is refused too.
    again = cookie_app.test_client()
    again.post("/api/auth/login", json={"username": user.username, "password": user.password})
    assert again.post("/api/auth/refresh", headers={
        "X-CSRF-TOKEN": again.get_cookie("csrf_refresh_token").value}).status_code == 200


def test_cookie_logout_with_the_refresh_cookie_revokes_its_session(cookie_app, make_user):
    client = cookie_app.test_client()
    user = make_user()
    client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    refresh_cookie = client.get_cookie("refresh_token_cookie").value
    refresh_csrf = client.get_cookie("csrf_refresh_token").value
    client.delete_cookie("access_token_cookie")
    assert client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": refresh_csrf}).status_code == 200
    thief = cookie_app.test_client()
    thief.set_cookie("refresh_token_cookie", refresh_cookie)
    thief.set_cookie("csrf_refresh_token", refresh_csrf)
    response = thief.post("/api/auth/refresh", headers={"X-CSRF-TOKEN": refresh_csrf})
    assert (response.status_code, response.json["error"]) == (401, "token_revoked")


def test_cookie_logout_with_the_refresh_cookie_needs_its_csrf_token(cookie_app, make_user):
    client = cookie_app.test_client()
    user = make_user()
    client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    client.delete_cookie("access_token_cookie")
    response = client.post("/api/auth/logout")
    assert response.status_code == 401 and "CSRF" in response.json["message"]


def test_cookie_logout_with_an_expired_access_cookie_uses_the_refresh_cookie(cookie_app, make_user):
    """The access cookie is a session cookie: a browser still sends it after its token expired."""
    from datetime import timedelta

    from flask_jwt_extended import create_access_token, decode_token

    client = cookie_app.test_client()
    user = make_user()
    client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    refresh_csrf = client.get_cookie("csrf_refresh_token").value
    sid = decode_token(client.get_cookie("refresh_token_cookie").value)["sid"]
    client.set_cookie("access_token_cookie", create_access_token(
        identity=str(user.id), additional_claims={"sid": sid}, expires_delta=timedelta(seconds=-60)))
    assert client.get("/api/credits/balance").json["error"] == "token_expired"
    response = client.post("/api/auth/logout", headers={"X-CSRF-TOKEN": refresh_csrf})
    assert response.status_code == 200, response.json
    assert client.post("/api/auth/refresh", headers={"X-CSRF-TOKEN": refresh_csrf}).status_code == 401


def test_a_token_verified_once_is_not_decoded_again_until_it_expires(app, client, make_user, stub, monkeypatch):
    """The cache of verified tokens (creditapp/token_cache.py): the same string is verified
    once; one byte changed is verified afresh (and refused); past its exp it is refused however
    often it was accepted; a logout still refuses it at the next request."""
    import time
    from datetime import timedelta

    import jwt as pyjwt
    from flask_jwt_extended import create_access_token

    decoded = []
    real_decode = pyjwt.decode
    monkeypatch.setattr(pyjwt, "decode", lambda *a, **kw: decoded.append(1) or real_decode(*a, **kw))
    user = make_user(credits=5)
    tokens = login(client, user)
    decoded.clear()
    for _ in range(3):
        assert client.get("/api/credits/balance", headers=bearer(tokens["access_token"])).status_code == 200
    assert len(decoded) == 2  # flask-jwt-extended's unverified and verified decodes, the first time only

    token = tokens["access_token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    refused = client.get("/api/credits/balance", headers=bearer(forged))
    assert (refused.status_code, refused.json["error"]) == (401, "invalid_token")

    short = create_access_token(identity=str(user.id), expires_delta=timedelta(seconds=1))
    assert client.get("/api/credits/balance", headers=bearer(short)).status_code == 200
    time.sleep(1.1 + app.config.get("JWT_DECODE_LEEWAY", 0))
    expired = client.get("/api/credits/balance", headers=bearer(short))
    assert (expired.status_code, expired.json["error"]) == (401, "token_expired")

    assert client.post("/api/auth/logout", headers=bearer(token)).status_code == 200
    revoked = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(token))
    assert (revoked.status_code, revoked.json["error"]) == (401, "token_revoked")
    assert stub.calls == 0


def test_two_apps_in_one_process_each_verify_and_revoke_with_their_own_settings(database_url, stub):
    """One JWTManager (and its cache of verified tokens) serves every app of the process: a
    token of one app's key is refused by an app of another key however often the first
    accepted it, and each app's logout is checked in its own blocklist, not in the one of
    the app made last."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    first = make_app(database_url, JWT_SECRET_KEY="first-secret-that-is-long-enough-0123456789")
    second = make_app(database_url, JWT_SECRET_KEY="second-secret-that-is-long-enough-012345678",
                      TOKEN_BLOCKLIST_URL=REDIS_URL)
    with first.app_context():
        from creditapp import users
        from creditapp.ledger import Balance
        created = users.create_user("twoapps", "correct-horse-battery", signup_grant=Balance(5, 0),
                                    hash_method=first.config["PASSWORD_HASH_METHOD"])
    client, other = first.test_client(), second.test_client()
    tokens = client.post("/api/auth/login", json={"username": "twoapps", "password": "correct-horse-battery"}).json
    for _ in range(2):
        assert client.get("/api/credits/lots", headers=bearer(tokens["access_token"])).status_code == 200
    refused = other.get("/api/credits/lots", headers=bearer(tokens["access_token"]))
    assert (refused.status_code, refused.json["error"]) == (401, "invalid_token")
    assert client.post("/api/auth/logout", headers=bearer(tokens["access_token"])).status_code == 200
    for path in ("/api/credits/lots", "/api/credits/balance"):
        revoked = client.get(path, headers=bearer(tokens["access_token"]))
        assert (revoked.status_code, revoked.json["error"]) == (401, "token_revoked"), path
    assert created["id"]


@pytest.mark.slow
@pytest.mark.parametrize("blocklist", ["database", "redis"])
def test_right_after_a_logout_no_worker_serves_the_token_anything(blocklist, database_url, make_user, live_server):
    """On a real server of two workers: the requests sent at once right after a logout, on
    whichever worker, are all 401 (a paid request, its Idempotency-Key's replay, a stream, a
    job, a body that is invalid too, the balance); then, the account disabled, the user's other
    session gets 403 everywhere. No AI call, nothing charged."""
    import requests

    from creditapp import users

    settings = {}
    if blocklist == "redis":
        url = "redis://127.0.0.1:6379/11"
        try:
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        except redis.RedisError as exc:
            pytest.skip(f"no Redis at {url}: {exc}")
        settings["TOKEN_BLOCKLIST_URL"] = url
    admin, user = make_user(admin=True), make_user(credits=10, tokens=1000)
    with live_server(**settings) as server:
        def log_in():
            return requests.post(f"{server.url}/api/auth/login", timeout=30,
                                 json={"username": user.username, "password": user.password}).json()["access_token"]

        gone, other = log_in(), log_in()
        paid = {"Authorization": f"Bearer {gone}", "Idempotency-Key": "before-logout"}
        first = requests.post(f"{server.url}/api/generate", json={"prompt": "x"}, headers=paid, timeout=30)
        assert first.status_code == 200
        assert requests.post(f"{server.url}/api/auth/logout", headers=bearer(gone), timeout=30).status_code == 200
        stream = {"prompt": "a poem", "max_tokens": 10, "stream": True}
        attempts = [
            ("POST", "/api/generate", {"prompt": "y"}, bearer(gone)),
            ("POST", "/api/generate", {"prompt": "x"}, paid),
            ("POST", "/api/ai/complete", stream, bearer(gone)),
            ("POST", "/api/generate", {"prompt": "z"}, {**bearer(gone), "Prefer": "respond-async"}),
            ("POST", "/api/generate", {}, bearer(gone)),
            ("GET", "/api/credits/balance", None, bearer(gone)),
        ] * 2

        def send(i):
            method, path, body, headers = attempts[i]
            return requests.request(method, server.url + path, json=body, headers=headers, timeout=30)

        answers = fire_together(len(attempts), send)
        assert [(a.status_code, a.json()["error"]) for a in answers] == [(401, "token_revoked")] * len(attempts)
        assert all("Idempotent-Replayed" not in a.headers for a in answers)

        users.set_access(admin.id, user.id, disabled=True)
        attempts = [(method, path, body, {**headers, **bearer(other)}) for method, path, body, headers in attempts]
        answers = fire_together(len(attempts), send)
        assert [(a.status_code, a.json()["error"]) for a in answers] == [(403, "account_disabled")] * len(attempts)
        assert server.ai_calls() == 1
    assert credit_service.get_credit_balance(user.id).generation_credits == 9
    assert credit_service.verify() == []


def test_a_cached_token_still_needs_its_csrf_token_and_its_type(cookie_app, make_user):
    """The cache of verified tokens keeps what verified them: a cookie accepted with its CSRF
    token is refused with another or none; a refresh token verified by /refresh is still no
    access token."""
    client = cookie_app.test_client()
    user = make_user(credits=5)
    client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    csrf = client.get_cookie("csrf_access_token").value
    for _ in range(2):
        assert client.post("/api/generate", json={"prompt": "x"}, headers={"X-CSRF-TOKEN": csrf}).status_code == 200
    for headers in ({"X-CSRF-TOKEN": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")}, {}):
        refused = client.post("/api/generate", json={"prompt": "x"}, headers=headers)
        assert (refused.status_code, refused.json["error"]) == (401, "authorization_required"), headers
    refresh = client.get_cookie("refresh_token_cookie").value
    refresh_csrf = client.get_cookie("csrf_refresh_token").value
    assert client.post("/api/auth/refresh", headers={"X-CSRF-TOKEN": refresh_csrf}).status_code == 200
    bare = cookie_app.test_client()
    bare.set_cookie("access_token_cookie", refresh)
    refused = bare.post("/api/generate", json={"prompt": "x"}, headers={"X-CSRF-TOKEN": refresh_csrf})
    assert refused.status_code == 401, refused.json
    assert credit_service.get_credit_balance(user.id).generation_credits == 3


def test_the_cache_of_verified_tokens_keeps_at_most_its_bound(app, client, make_user, monkeypatch):
    """Bounded whatever the number of callers: the least recently used token is forgotten
    first (and verified again if it comes back)."""
    from flask_jwt_extended import create_access_token

    from creditapp.extensions import jwt

    monkeypatch.setattr(jwt, "_max_tokens", 3)
    monkeypatch.setattr(jwt, "_verified", type(jwt._verified)())
    user = make_user(credits=1)
    tokens = [create_access_token(identity=str(user.id), additional_claims={"n": n}) for n in range(6)]
    for token in tokens + tokens[:1]:
        assert client.get("/api/credits/lots", headers=bearer(token)).status_code == 200
        assert len(jwt._verified) <= 3
    assert [key[0] for key in jwt._verified] == [tokens[4], tokens[5], tokens[0]]
