"""Registration, login and every way a bearer token can be refused, through the test client."""
import uuid
from datetime import datetime, timedelta, timezone

import jwt as pyjwt
import pytest
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import func, select

from creditapp.ledger.transactions import atomic
from creditapp.ledger.tables import CreditHold, LedgerEntry
from creditapp.models import User

PASSWORD = "long-enough-password"


def assert_error(response, status: int, code: str) -> dict:
    """The response is `status` with the JSON envelope {"error": code, "message": ...}."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


def count_rows(model) -> int:
    with atomic(write=False) as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def new_name() -> str:
    return f"user{uuid.uuid4().hex[:10]}"


# --- POST /api/auth/register ----------------------------------------------------------------


def test_register_creates_an_account_that_can_log_in_and_has_the_signup_grant(app, client):
    username = new_name()
    response = client.post("/api/auth/register", json={"username": username, "password": PASSWORD})

    assert response.status_code == 201, response.json
    body = response.get_json()
    assert set(body) == {"id", "username"}
    assert body["username"] == username and isinstance(body["id"], int)
    assert PASSWORD not in response.get_data(as_text=True)

    login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200, login.json
    balance = client.get("/api/credits/balance", headers=bearer(login.json["access_token"]))
    assert balance.json == {
        "generation_credits": app.config["CREDITS_SIGNUP_GRANT"],
        "ai_tokens": app.config["AI_TOKENS_SIGNUP_GRANT"],
        "expiring": [],  # signup credits never expire unless SIGNUP_GRANT_EXPIRES_DAYS says so
        "debt": {"generation_credits": 0, "ai_tokens": 0},
    }


def test_register_a_taken_username_is_409_and_keeps_one_user(client):
    username = new_name()
    first = client.post("/api/auth/register", json={"username": username, "password": PASSWORD})
    assert first.status_code == 201
    users_before = count_rows(User)

    second = client.post("/api/auth/register", json={"username": username, "password": "another-password"})

    assert_error(second, 409, "username_taken")
    assert count_rows(User) == users_before
    # The first password still works: the account was not overwritten.
    login = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
    assert login.status_code == 200


@pytest.mark.parametrize("payload, bad_fields", [
    pytest.param({"password": PASSWORD}, {"username"}, id="missing-username"),
    pytest.param({"username": "bob"}, {"password"}, id="missing-password"),
    pytest.param({"username": "ab", "password": PASSWORD}, {"username"}, id="short-username"),
    pytest.param({"username": "a" * 65, "password": PASSWORD}, {"username"}, id="long-username"),
    pytest.param({"username": "bad name!", "password": PASSWORD}, {"username"}, id="bad-charset"),
    pytest.param({"username": "bob\u00e9", "password": PASSWORD}, {"username"}, id="non-ascii"),
    pytest.param({"username": "bobby", "password": "short"}, {"password"}, id="short-password"),
    pytest.param({"username": "bobby", "password": "p" * 129}, {"password"}, id="long-password"),
    pytest.param({"username": 123, "password": PASSWORD}, {"username"}, id="username-not-a-string"),
    pytest.param({"username": "bobby", "password": PASSWORD, "is_admin": True}, {"is_admin"},
                 id="unknown-field"),
])
def test_register_invalid_input_is_422_with_field_errors_and_creates_nothing(client, payload, bad_fields):
    users_before = count_rows(User)

    response = client.post("/api/auth/register", json=payload)

    body = assert_error(response, 422, "validation_error")
    assert set(body["errors"]) == bad_fields
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values())
    assert count_rows(User) == users_before


def test_register_a_non_json_body_is_422(client):
    users_before = count_rows(User)

    response = client.post(
        "/api/auth/register", data=f"username=bobby&password={PASSWORD}",
        content_type="application/x-www-form-urlencoded",
    )

    body = assert_error(response, 422, "validation_error")
    assert set(body["errors"]) == {"username", "password"}
    assert count_rows(User) == users_before


def test_register_a_json_array_is_422(client):
    users_before = count_rows(User)

    response = client.post("/api/auth/register", json=[{"username": "bobby", "password": PASSWORD}])

    body = assert_error(response, 422, "validation_error")
    assert body["errors"]
    assert count_rows(User) == users_before


# --- POST /api/auth/login -------------------------------------------------------------------


def test_login_returns_a_bearer_token_that_works(app, client, make_user):
    user = make_user(credits=2)

    response = client.post("/api/auth/login", json={"username": user.username, "password": user.password})

    assert response.status_code == 200, response.json
    body = response.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == int(app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()) > 0
    balance = client.get("/api/credits/balance", headers=bearer(body["access_token"]))
    assert balance.status_code == 200 and balance.json["generation_credits"] == 2


def test_login_wrong_password_and_unknown_user_answer_alike(client, make_user):
    user = make_user()

    wrong_password = client.post(
        "/api/auth/login", json={"username": user.username, "password": "not-the-password"}
    )
    unknown_user = client.post("/api/auth/login", json={"username": new_name(), "password": user.password})

    assert_error(wrong_password, 401, "invalid_credentials")
    assert_error(unknown_user, 401, "invalid_credentials")
    assert wrong_password.get_json() == unknown_user.get_json()
    assert "access_token" not in wrong_password.get_json()


# --- bearer tokens on GET /api/credits/balance ----------------------------------------------


def signed_token(secret: str, user_id: int) -> str:
    """An access token shaped like flask-jwt-extended's, signed with `secret`."""
    now = datetime.now(timezone.utc)
    claims = {
        "sub": str(user_id), "type": "access", "fresh": False, "jti": uuid.uuid4().hex,
        "iat": now, "nbf": now, "exp": now + timedelta(minutes=5),
    }
    return pyjwt.encode(claims, secret, algorithm="HS256")


def test_missing_authorization_header_is_401(client):
    assert_error(client.get("/api/credits/balance"), 401, "authorization_required")


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer a.b.c", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"])
def test_garbage_bearer_token_is_401(client, header):
    assert_error(client.get("/api/credits/balance", headers={"Authorization": header}), 401, "invalid_token")


def test_token_signed_with_another_secret_is_401(app, client, make_user):
    user = make_user()
    # The same claims signed with the app's own secret are accepted: only the signature differs.
    genuine = signed_token(app.config["JWT_SECRET_KEY"], user.id)
    assert client.get("/api/credits/balance", headers=bearer(genuine)).status_code == 200

    forged = signed_token("another-secret-that-is-also-long-enough-42", user.id)

    assert_error(client.get("/api/credits/balance", headers=bearer(forged)), 401, "invalid_token")


def test_expired_token_is_401(client, make_user):
    user = make_user()
    token = create_access_token(identity=str(user.id), expires_delta=timedelta(seconds=-1))

    assert_error(client.get("/api/credits/balance", headers=bearer(token)), 401, "token_expired")


def test_refresh_token_used_as_access_token_is_401(client, make_user):
    user = make_user()
    token = create_refresh_token(identity=str(user.id))

    assert_error(client.get("/api/credits/balance", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("identity", ["alice", "1.5", ""])
def test_token_whose_identity_is_not_a_user_id_is_401(client, identity):
    token = create_access_token(identity=identity)

    assert_error(client.get("/api/credits/balance", headers=bearer(token)), 401, "invalid_token")


def test_token_for_a_user_that_does_not_exist_on_a_paid_route_is_401_and_charges_nothing(client, stub):
    token = create_access_token(identity="987654321")
    ledger_before, holds_before = count_rows(LedgerEntry), count_rows(CreditHold)

    response = client.post("/api/generate", json={"prompt": "x"}, headers=bearer(token))

    assert_error(response, 401, "invalid_token")
    assert (count_rows(LedgerEntry), count_rows(CreditHold)) == (ledger_before, holds_before)
    assert stub.calls == 0


@pytest.mark.parametrize("path", ["/api/credits/balance", "/api/credits/transactions"])
def test_token_for_a_user_that_does_not_exist_on_a_read_route_is_401(client, path):
    token = create_access_token(identity="987654321")

    assert_error(client.get(path, headers=bearer(token)), 401, "invalid_token")


# --- ids are canonical ASCII decimal, or they are refused -----------------------------------------

@pytest.mark.parametrize("shape", [" {} ", "0{}", "00{}", "{}\n", "+{}", "arabic", "fullwidth"])
def test_an_identity_that_only_parses_as_the_user_is_401(client, make_user, stub, shape):
    user = make_user(credits=1)
    digits = {"arabic": "٠١٢٣٤٥٦٧٨٩", "fullwidth": "０１２３４５６７８９"}
    if shape in digits:
        identity = "".join(digits[shape][int(d)] for d in str(user.id))
    else:
        identity = shape.format(user.id)
    assert int(identity) == user.id  # what int() made of it before
    token = create_access_token(identity=identity, additional_claims={"sid": uuid.uuid4().hex})
    assert_error(client.get("/api/credits/balance", headers=bearer(token)), 401, "invalid_token")
    assert_error(client.post("/api/generate", json={"prompt": "x"}, headers=bearer(token)), 401, "invalid_token")
    assert stub.calls == 0


@pytest.mark.parametrize("sid", [5, 12345678901234567890, ["a"], {"x": 1}, "not-hex", "A" * 32, "a" * 33, ""])
def test_a_session_id_that_login_never_makes_is_401(client, make_user, sid):
    user = make_user()
    token = create_access_token(identity=str(user.id), additional_claims={"sid": sid})
    assert_error(client.get("/api/credits/balance", headers=bearer(token)), 401, "invalid_token")
    assert_error(client.post("/api/auth/logout", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("shape", ["0{}", "{}%20", "%20{}", "%D9%A{}", "+{}", "{}.0", "-{}"])
def test_a_path_id_that_only_parses_as_the_user_is_404(client, make_user, shape):
    admin, user = make_user(admin=True), make_user()
    path_id = shape.format(user.id)
    response = client.post(f"/api/admin/users/{path_id}/credits", json={"amount": 1}, headers=admin.headers)
    assert_error(response, 404, "not_found")
    arabic = "".join("٠١٢٣٤٥٦٧٨٩"[int(d)] for d in str(user.id))
    response = client.post(f"/api/admin/users/{arabic}/credits", json={"amount": 1}, headers=admin.headers)
    assert_error(response, 404, "not_found")
    assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 0


@pytest.mark.parametrize("query", ["limit=１", "limit=٢", "limit=%201", "limit=1%0A", "cursor=5%0A", "limit=007",
                                   "cursor=０5", "limit=01x"])
def test_a_query_number_in_other_digits_is_422(client, make_user, query):
    user = make_user(credits=1)
    response = client.get(f"/api/credits/transactions?{query}", headers=user.headers)
    assert_error(response, 422, "validation_error")


# --- usernames are one whatever their case ----------------------------------------------------------

def test_usernames_differing_only_by_case_are_one_account(client):
    first = client.post("/api/auth/register", json={"username": "Case", "password": PASSWORD})
    assert first.status_code == 201 and first.json["username"] == "Case"  # the spelling chosen
    for name in ("case", "CASE", "cASE"):
        assert_error(client.post("/api/auth/register", json={"username": name, "password": PASSWORD}),
                     409, "username_taken")
    assert count_rows(User) == 1
    for name in ("Case", "case", "CASE"):  # and any spelling logs in to it
        response = client.post("/api/auth/login", json={"username": name, "password": PASSWORD})
        assert response.status_code == 200, (name, response.json)


def test_a_username_with_a_trailing_newline_is_422(client):
    assert client.post("/api/auth/register", json={"username": "bob", "password": PASSWORD}).status_code == 201
    for name in ("bob\n", "bob\r\n", "bob\n\n", "\nbob"):
        assert_error(client.post("/api/auth/register", json={"username": name, "password": PASSWORD}),
                     422, "validation_error")
    assert count_rows(User) == 1


def test_refresh_for_a_user_that_does_not_exist_is_401(client):
    token = create_refresh_token(identity="987654321", additional_claims={"sid": uuid.uuid4().hex})
    assert_error(client.post("/api/auth/refresh", headers=bearer(token)), 401, "invalid_token")


def test_logouts_of_one_session_at_the_same_moment_never_answer_500(app, make_user):
    from creditapp.testing.servers import fire_together

    user = make_user()
    tokens = app.test_client().post("/api/auth/login", json={"username": user.username, "password": user.password}).json

    def logout(i):
        token = tokens["access_token"] if i % 2 else tokens["refresh_token"]
        return app.test_client().post("/api/auth/logout", headers=bearer(token)).status_code

    statuses = fire_together(10, logout)
    assert set(statuses) <= {200, 401} and 200 in statuses, statuses
    assert client_refused(app, tokens["access_token"])


def client_refused(app, token) -> bool:
    response = app.test_client().get("/api/credits/balance", headers=bearer(token))
    return (response.status_code, response.json["error"]) == (401, "token_revoked")
