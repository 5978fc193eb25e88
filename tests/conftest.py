"""Fixtures: an app on a migrated database (SQLite file, and PostgreSQL when one answers),
users made through the service and logged in through the real login endpoint."""
import os
import shutil
import uuid
from dataclasses import dataclass

import pytest
from flask_migrate import upgrade
from sqlalchemy import text

from config import TestingConfig
from creditapp import create_app
from creditapp.ai import StubAIProvider, set_provider
from creditapp.ledger.clock import ManualClock, clock
from creditapp.ledger import Balance
from creditapp.extensions import db
from creditapp import users

from .pg import DatabaseClock, install_test_clock, postgres_database

BACKENDS = ["sqlite", "postgresql"]
TABLES = ("jobs", "revoked_sessions", "idempotency_keys", "ledger_entries", "credit_holds", "credit_accounts", "users")


def make_app(database_url: str, **overrides):
    return create_app(TestingConfig, {"SQLALCHEMY_DATABASE_URI": database_url, "JOBS_BROKER_URL": "stub://", **overrides})


def migrate(database_url: str) -> None:
    app = make_app(database_url)
    with app.app_context():
        upgrade(directory=os.path.join(os.path.dirname(__file__), "..", "migrations"))
        db.engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL database of this run's own, migrated; skipped where no server answers."""
    with postgres_database() as url:
        migrate(url)
        install_test_clock(url)
        yield url


@pytest.fixture(params=BACKENDS)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        path = tmp_path / "creditapp.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        yield url
        _truncate(url)


def _truncate(url: str) -> None:
    app = make_app(url)
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        db.engine.dispose()


@pytest.fixture
def app(database_url):
    app = make_app(database_url)
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def stub(app):
    provider = StubAIProvider()
    set_provider(app, provider)
    return provider


@pytest.fixture
def manual_clock(database_url):
    """Time that moves only when the test says so: `manual_clock.advance(seconds)`, for Python
    and (on PostgreSQL) for the ledger's functions in the database alike."""
    source = ManualClock()
    database_clock = DatabaseClock(database_url) if database_url.startswith("postgresql") else None
    if database_clock is not None:
        source.on_change = database_clock.set
        database_clock.set(source.current)
    try:
        with clock.use(source):
            yield source
    finally:
        if database_clock is not None:
            database_clock.close()


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class TestUser:
    id: int
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_user(app, client):
    def make(credits: int = 0, tokens: int = 0, *, admin: bool = False, username: str | None = None):
        username = username or f"user{uuid.uuid4().hex[:10]}"
        password = "correct-horse-battery"
        user = users.create_user(
            username, password, is_admin=admin, signup_grant=Balance(credits, tokens),
            hash_method=app.config["PASSWORD_HASH_METHOD"],
        )
        response = client.post("/api/auth/login", json={"username": username, "password": password})
        assert response.status_code == 200, response.json
        return TestUser(user["id"], username, password, response.json["access_token"])

    return make
