"""The JSON error envelope for errors no view raises itself, the health check and the API docs."""
import io
import re
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from creditapp.ledger.transactions import atomic
from creditapp.extensions import db

from creditapp.testing import make_app
from creditapp.testing.databases import postgres_database


def assert_error(response, status: int, code: str) -> dict:
    """The response is `status` with the JSON envelope {"error": code, "message": ...}."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    return body


@contextmanager
def own_app(database_url: str, **overrides):
    """An app of the test's own (other settings than the `app` fixture's); its pool is closed after."""
    app = make_app(database_url, **overrides)
    try:
        yield app
    finally:
        with app.app_context():
            db.engine.dispose()


# --- errors raised by Flask and Werkzeug ----------------------------------------------------


@pytest.mark.parametrize("path", ["/api/nothing-here", "/nothing-here", "/api/credits/balance/extra"])
def test_unknown_path_is_404(client, path):
    assert_error(client.get(path), 404, "not_found")


def test_wrong_method_is_405_with_allow_header(client):
    response = client.get("/api/auth/register")

    assert_error(response, 405, "method_not_allowed")
    assert "POST" in {method.strip() for method in response.headers["Allow"].split(",")}
    assert "GET" not in response.headers["Allow"]


def test_body_over_max_content_length_is_413(database_url):
    with own_app(database_url, MAX_CONTENT_LENGTH=200) as app:
        client = app.test_client()
        small = client.post("/api/auth/register", json={"username": "smallbody", "password": "long-enough-pw"})
        assert small.status_code == 201, small.json

        large = client.post(
            "/api/auth/register", json={"username": "largebody", "password": "p" * 500},
        )

        assert_error(large, 413, "payload_too_large")


@pytest.mark.parametrize("body", ['{"username": "bob", ', "{'username': 'bob'}", "not json at all"])
def test_malformed_json_is_400(client, body):
    response = client.post("/api/auth/register", data=body, content_type="application/json")

    assert_error(response, 400, "bad_request")


def test_unexpected_exception_is_500_without_a_traceback(database_url):
    with own_app(database_url) as app:
        @app.get("/boom")
        def boom():
            raise RuntimeError("secret internals: /srv/creditapp/db.py line 42")

        response = app.test_client().get("/boom")

        body = assert_error(response, 500, "internal_error")
        assert set(body) == {"error", "message"}
        text = response.get_data(as_text=True)
        for leak in ("Traceback", "RuntimeError", "secret internals", "line 42"):
            assert leak not in text


# --- GET /healthz and /readyz --------------------------------------------------------------


def test_healthz_is_ok_while_the_process_serves(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_ok_when_the_database_is_at_the_migration_head(app, client):
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.get_json() == {"status": "ready", "migration": app.extensions["creditapp.migration_head"]}


@pytest.mark.parametrize("unreachable", [
    pytest.param("sqlite:///{tmp}/no-such-directory/creditapp.db", id="sqlite-missing-directory"),
    pytest.param("postgresql+psycopg://postgres@127.0.0.1:1/creditapp", id="postgresql-closed-port"),
])
def test_database_unreachable(tmp_path, unreachable):
    with own_app(unreachable.format(tmp=tmp_path)) as app:
        client = app.test_client()
        assert client.get("/healthz").status_code == 200  # the process is alive
        body = assert_error(client.get("/readyz"), 503, "database_unavailable")
        assert "errors" not in body


def test_readyz_is_503_when_migrations_are_pending(database_url):
    with own_app(database_url) as app:
        with app.app_context():
            with atomic() as session:
                session.execute(text("UPDATE alembic_version SET version_num = '0001_initial_ledger'"))
            try:
                body = assert_error(app.test_client().get("/readyz"), 503, "migrations_pending")
                assert "0001_initial_ledger" in body["message"]
            finally:
                with atomic() as session:
                    session.execute(text("UPDATE alembic_version SET version_num = :head"),
                                    {"head": app.extensions["creditapp.migration_head"]})


# --- the API description --------------------------------------------------------------------

DOCUMENTED_PATHS = {
    "/api/auth/register", "/api/auth/login",
    "/api/credits/balance", "/api/credits/transactions", "/api/credits/costs",
    "/api/admin/users/{user_id}/credits",
    "/api/generate", "/api/generate/professional-photo", "/api/generate/hairstyle",
    "/api/generate/upscale", "/api/ai/complete",
    "/healthz", "/readyz",
}


def test_openapi_document_lists_every_path(client):
    response = client.get("/api/openapi.json")

    assert response.status_code == 200
    assert DOCUMENTED_PATHS <= set(response.get_json()["paths"])


def test_openapi_document_describes_the_insufficient_credits_answer(client):
    spec = client.get("/api/openapi.json").get_json()

    answer = spec["paths"]["/api/generate"]["post"]["responses"]["403"]
    schema = answer["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    assert {"error", "message", "required", "available", "credit_type"} <= set(schema["properties"])


def test_swagger_ui_is_served(client):
    response = client.get("/api/docs")

    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert "swagger-ui" in response.get_data(as_text=True).lower()


def test_readyz_on_a_database_never_migrated(tmp_path):
    with own_app(f"sqlite:///{tmp_path}/empty.db") as app:
        body = assert_error(app.test_client().get("/readyz"), 503, "migrations_pending")
        assert "None" in body["message"]


def test_readyz_on_a_postgresql_database_never_migrated():
    with postgres_database() as url, own_app(url) as app:
        assert_error(app.test_client().get("/readyz"), 503, "migrations_pending")


def test_exhausted_connection_pool_is_503(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes no pool settings")
    pool = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2, "pool_pre_ping": True}
    with own_app(database_url, SQLALCHEMY_ENGINE_OPTIONS=pool) as app:
        with app.app_context(), db.engine.connect():  # the pool's only connection, taken
            body = assert_error(app.test_client().get("/readyz"), 503, "database_unavailable")
            assert "busy" in body["message"]


# --- hostile bodies, from anyone ------------------------------------------------------------------

DEEP = b"[" * 30_000 + b"]" * 30_000
LONG_INTEGER = b'{"username": "alice", "password": ' + b"7" * 5_000 + b"}"


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/auth/register"])
@pytest.mark.parametrize("body", [DEEP, b'{"a": ' * 8_000 + b"1" + b"}" * 8_000, LONG_INTEGER],
                         ids=["deep-array", "deep-object", "4300-digit-integer"])
def test_hostile_json_is_a_400_without_a_traceback(client, path, body, caplog):
    body = assert_error(client.post(path, data=body, content_type="application/json"), 400, "bad_request")
    assert body["errors"] == {"json": ["Invalid JSON body."]}
    assert "Traceback" not in caplog.text and "RecursionError" not in caplog.text


def test_hostile_json_on_a_paid_route_holds_nothing(client, make_user, stub):
    user = make_user(credits=1)
    for body in (DEEP, b'{"prompt": ' + b"9" * 5_000 + b"}"):
        response = client.post("/api/generate", data=body, content_type="application/json",
                               headers={**user.headers, "Idempotency-Key": "k"})
        assert_error(response, 400, "bad_request")
    assert stub.calls == 0
    assert client.get("/api/credits/balance", headers=user.headers).json["generation_credits"] == 1


@pytest.mark.parametrize("path", ["/api/auth/login", "/api/generate"])
def test_a_chunked_body_over_the_limit_is_413(client, make_user, stub, path):
    user = make_user(credits=1)
    body = b'{"prompt": "' + b"x" * 70_000 + b'"}'
    response = client.post(path, input_stream=io.BytesIO(body), headers={
        **user.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})  # what gunicorn says of a chunked body
    assert_error(response, 413, "payload_too_large")
    assert stub.calls == 0


def test_a_chunked_body_within_the_limit_is_read_whole(client, make_user, stub):
    user = make_user(credits=1)
    response = client.post("/api/generate", input_stream=io.BytesIO(b'{"prompt": "a fox"}'), headers={
        **user.headers, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True})
    assert response.status_code == 200, response.json


# --- OPTIONS: what a browser sends before a cross-origin call ---------------------------------------

ORIGIN = "https://web.example"


def test_every_route_answers_a_preflight_with_rate_limits_and_cors_on(database_url, make_user):
    """OPTIONS carries no token; the per-user limit once called get_jwt_identity() on it (500)."""
    with own_app(database_url, RATELIMIT_ENABLED=True, PAID_RATE_LIMIT="1 per minute",
                 AUTH_RATE_LIMIT="1 per minute", CORS_ORIGINS=[ORIGIN]) as app, app.app_context():
        client = app.test_client()
        routes = [(re.sub(r"<[^>]+>", "2", rule.rule), method) for rule in app.url_map.iter_rules()
                  for method in rule.methods - {"HEAD", "OPTIONS"}
                  # The providers' webhooks take no browser: no CORS there (test_purchases_stripe.py).
                  if rule.rule.startswith("/api/") and not rule.rule.startswith("/api/webhooks/")]
        assert len(routes) >= 12
        for path, method in routes:
            for _ in range(3):  # past every limit: a preflight is not a use
                response = client.options(path, headers={
                    "Origin": ORIGIN, "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
                assert response.status_code == 200, (path, method, response.get_data(as_text=True))
                assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
                assert method in response.headers["Access-Control-Allow-Methods"]
                assert "idempotency-key" in response.headers["Access-Control-Allow-Headers"].lower()
        # Nothing was held or counted: the one paid request of the minute still goes through.
        user = make_user(credits=1)
        assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
