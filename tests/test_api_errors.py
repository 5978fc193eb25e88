"""The JSON error envelope for errors no view raises itself, the health check and the API docs."""
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from creditapp.database import atomic
from creditapp.extensions import db

from .conftest import make_app
from .pg import postgres_database


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
