"""creditapp's pytest kit, for creditapp itself and for apps that add paid features to it.

Enable it in a conftest.py with `pytest_plugins = ["creditapp.testing"]`. It gives:

- `database_url`: a migrated database of the test's own: SQLite by default; PostgreSQL too when
  TEST_DATABASE_URL names a server, or where the ini option `creditapp_databases` lists it
  (`creditapp_databases = sqlite postgresql`: every test runs on both);
- `app` (pushed app context) and `client`, on that database, with the blueprints of the
  `creditapp_blueprints` fixture (override it to return your own) and the settings of the
  `creditapp_settings` fixture;
- `make_user(credits=0, tokens=0, admin=False, lots=())`: a user made through the service and
  logged in through the real login route (`.headers` carries the token);
- `job_queue`: the app's job queue; `job_queue.drain()` runs the jobs submitted so far;
- `fake_ai`: a controllable AI provider (`latency_ms`, `failure_rate`, `fail_next(n)`, `calls`);
- `manual_clock`: time that moves only when told (`advance(seconds)`), for the database too;
- `live_server(**settings)`: a real gunicorn server on the test's database (the ini option
  `creditapp_wsgi` names the app, `wsgi:app` by default) with `fire(n, ...)`, n requests sent at
  the same instant, and `ai_calls()`;
- `fake_stripe`: a local server that speaks Stripe's API for Checkout Sessions, and signs the
  events Stripe would send (`fake_stripe.settings` points the app at it);
- `fake_openai`: a local server that speaks OpenAI's API for chat completions, streamed or not,
  and images, with knobs for slow, failing, cut or hanging answers (`fake_openai.settings` points
  the app at it);
- `webhook_receiver`: a local server that receives outgoing webhooks and verifies each with the
  `standardwebhooks` package (`receiver.secret` = the endpoint's), with knobs for errors and
  slow answers (creditapp.testing.webhook_receiver);
- `ledger_is_clean()`: asserts that `credit_service.verify()` finds nothing wrong.
"""
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from .. import users
from ..ai import StubAIProvider, set_provider
from ..exceptions import GenerationFailed
from ..extensions import db
from ..ledger import Balance, credit_service
from ..ledger.clock import ManualClock, clock
from .databases import DatabaseClock, install_test_clock, postgres_database
from .servers import ROOT, fire_together, gunicorn, server_env

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
PASSWORD = "correct-horse-battery"


# The settings class of every app the kit makes: the ini option `creditapp_config`, else creditapp's.
_config_class: list[type] = []


def testing_config() -> type:
    # Imported here: the settings read the environment, and this plugin is loaded into every pytest
    # run of the environment (its pytest11 entry point), also of projects that make no app.
    from ..settings import TestingConfig

    return _config_class[0] if _config_class else TestingConfig


def make_app(database_url: str, blueprints=(), **settings):
    """The app in its testing configuration on `database_url`: no job broker (run what is queued
    with `job_queue().drain()`), limits and CORS on."""
    from ..app import create_app

    return create_app(testing_config(), {"SQLALCHEMY_DATABASE_URI": database_url, "JOBS_BROKER_URL": "stub://",
                                         **settings}, blueprints=blueprints)


def migrate(database_url: str) -> None:
    """creditapp's migrations and the app's own (MIGRATION_DIRS), every branch to its head."""
    from flask_migrate import upgrade

    app = make_app(database_url)
    with app.app_context():
        upgrade(directory=str(MIGRATIONS), revision="heads")
        db.engine.dispose()


def pytest_addoption(parser) -> None:
    parser.addini("creditapp_databases", "databases each test of `database_url` runs on: sqlite, postgresql",
                  type="args", default=None)
    parser.addini("creditapp_wsgi", "the WSGI app of live_server (module:attribute)", default="wsgi:app")
    parser.addini("creditapp_config", "the settings class of the kit's apps (module:Class, a subclass of "
                  "creditapp.settings.TestingConfig); unset: creditapp's TestingConfig", default="")


def pytest_configure(config) -> None:
    target = config.getini("creditapp_config")
    if target:
        import importlib
        import sys

        module, _, name = target.partition(":")
        if str(config.rootpath) not in sys.path:
            sys.path.insert(0, str(config.rootpath))  # the app's folder, where its config.py is
        _config_class[:] = [getattr(importlib.import_module(module), name or "TestingConfig")]


def pytest_generate_tests(metafunc) -> None:
    if "creditapp_database" in metafunc.fixturenames:
        databases = metafunc.config.getini("creditapp_databases") or (
            ["sqlite", "postgresql"] if os.environ.get("TEST_DATABASE_URL") else ["sqlite"])
        metafunc.parametrize("creditapp_database", databases, indirect=True)


@pytest.fixture
def creditapp_database(request) -> str:
    if request.param not in ("sqlite", "postgresql"):
        raise pytest.UsageError(f"creditapp_databases: unknown database {request.param!r}")
    return request.param


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated; skipped where no server answers."""
    with postgres_database() as url:
        migrate(url)
        install_test_clock(url)
        yield url


@pytest.fixture
def database_url(creditapp_database, request, tmp_path) -> Iterator[str]:
    if creditapp_database == "sqlite":
        path = tmp_path / "creditapp.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        yield url
        _empty(url)


def _empty(url: str) -> None:
    """Every table of the app, emptied (a PostgreSQL database serves the whole run)."""
    app = make_app(url)
    with app.app_context():
        tables = ", ".join(table.name for table in db.metadata.sorted_tables)
        with db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        db.engine.dispose()


@pytest.fixture
def creditapp_blueprints() -> list:
    """Override to add your app's blueprints (your paid features) to `app`."""
    return []


@pytest.fixture
def creditapp_settings() -> dict:
    """Override to change settings of `app` (config keys)."""
    return {}


@pytest.fixture
def app(database_url, creditapp_blueprints, creditapp_settings):
    app = make_app(database_url, creditapp_blueprints, **creditapp_settings)
    with app.app_context():
        yield app
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def fake_stripe():
    """A local Stripe API for Checkout Sessions (creditapp.testing.fake_stripe); give the app
    `fake_stripe.settings` (through `creditapp_settings`) to buy through it."""
    from .fake_stripe import fake_stripe_server

    with fake_stripe_server() as fake:
        yield fake


@pytest.fixture
def fake_openai():
    """A local OpenAI-compatible API (creditapp.testing.fake_openai); give the app
    `fake_openai.settings` (through `creditapp_settings`) to generate through it."""
    from .fake_openai import fake_openai_server

    with fake_openai_server() as fake:
        yield fake


@pytest.fixture
def webhook_receiver():
    """A local receiver of outgoing webhooks that verifies every signature
    (creditapp.testing.webhook_receiver); subscribe `webhook_receiver.url` with
    WEBHOOK_ALLOW_PRIVATE on, and set `webhook_receiver.secret` to the secret answered."""
    from .webhook_receiver import webhook_receiver_server

    with webhook_receiver_server() as receiver:
        yield receiver


@pytest.fixture(name="job_queue")
def job_queue_fixture(app):
    """The app's job queue: `job_queue.drain()` runs, in the test's thread, every job submitted
    with `Prefer: respond-async` (the testing app has no broker) and returns how many ran."""
    from ..jobs.queue import job_queue

    return job_queue()


class FakeAI(StubAIProvider):
    """The stub provider with the knobs tests want: `latency_ms`, `failure_rate`, `fail_next(n)`
    (the next n calls fail), `calls` (how many calls, failed ones included)."""

    def __init__(self, **options):
        super().__init__(**options)
        self._fail_next = 0
        self._next_lock = threading.Lock()

    def fail_next(self, n: int = 1) -> None:
        with self._next_lock:
            self._fail_next += n

    def _call(self, feature: str) -> None:
        with self._next_lock:
            fail, self._fail_next = self._fail_next > 0, max(0, self._fail_next - 1)
        if fail:
            with self._lock:
                self.calls += 1
            raise GenerationFailed("the AI provider did not answer (fail_next)")
        super()._call(feature)


@pytest.fixture
def fake_ai(app) -> FakeAI:
    provider = FakeAI()
    set_provider(app, provider)
    return provider


@pytest.fixture
def manual_clock(database_url) -> Iterator[ManualClock]:
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


@dataclass
class TestUser:
    __test__ = False  # not a test class, whatever its name

    id: int
    username: str
    password: str
    token: str

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def make_user(app, client):
    """make_user(credits=0, tokens=0, *, admin=False, username=None, lots=()): `credits` and
    `tokens` are the signup grant; `lots` are more grants, each a dict of `credit_service.grant`'s
    arguments (`amount`, and `credit_type`, `priority`, `expires_at`, `reason`, ...)."""

    def make(credits: int = 0, tokens: int = 0, *, admin: bool = False, username: str | None = None,
             lots=()) -> TestUser:
        username = username or f"user{uuid.uuid4().hex[:10]}"
        user = users.create_user(username, PASSWORD, is_admin=admin, signup_grant=Balance(credits, tokens),
                                 hash_method=app.config["PASSWORD_HASH_METHOD"])
        for lot in lots:
            lot = dict(lot)
            credit_service.grant(user["id"], lot.pop("amount"), lot.pop("credit_type", "generation_credits"),
                                 **{"reason": "test lot", **lot})
        response = client.post("/api/auth/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.json
        return TestUser(user["id"], username, PASSWORD, response.json["access_token"])

    return make


def ledger_is_clean() -> None:
    """Every balance matches its ledger, every held amount its open holds, no key charged twice."""
    problems = credit_service.verify()
    assert problems == [], "\n".join(str(problem) for problem in problems)


@dataclass
class Answer:
    status: int
    json: object
    headers: dict


class LiveServer:
    def __init__(self, url: str, calls_log: Path, pid: int | None = None):
        self.url, self._calls_log, self.pid = url, calls_log, pid  # pid: gunicorn's arbiter

    def worker_pids(self) -> list[int]:
        """The arbiter's children: its workers now."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [int(child) for child in children]

    def fire(self, n: int, method: str, path: str, *, json=None, data: bytes | None = None,
             headers=None) -> list[Answer]:
        """`n` requests sent at the same instant, each on a connection of its own; the answers
        in order. `data` is a raw body (a webhook's)."""
        def send(_i):
            response = requests.request(method, self.url + path, json=json, data=data, headers=headers, timeout=120)
            try:
                body = response.json()
            except ValueError:
                body = response.text
            return Answer(response.status_code, body, dict(response.headers))

        return fire_together(n, send)

    def ai_calls(self) -> int:
        """How many times the server's AI provider was called (stub provider, all workers)."""
        return self._calls_log.read_text().count("\n") if self._calls_log.exists() else 0


@pytest.fixture
def live_server(database_url, tmp_path, request):
    """`with live_server(**settings) as server:` a real gunicorn server (2 workers of 4 threads,
    or `worker_class="gevent"`: of 4 connections each, or `threads`) on the test's database,
    running the ini option `creditapp_wsgi` (settings: environment variables, such as
    AI_STUB_LATENCY_MS or AI_STUB_FAILURE_RATE)."""
    target = request.config.getini("creditapp_wsgi")

    @contextmanager
    def start(workers: int = 2, threads: int = 4, worker_class: str = "gthread", **settings) -> Iterator[LiveServer]:
        calls = tmp_path / f"ai-calls-{uuid.uuid4().hex[:6]}.log"
        env = server_env(database_url, AI_STUB_CALL_LOG=calls, **settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(request.config.rootpath),
                                                          env.get("PYTHONPATH")]))
        with gunicorn(env, workers=workers, threads=threads, log_path=tmp_path / "gunicorn.log", app=target,
                      cwd=request.config.rootpath, worker_class=worker_class) as server:
            yield LiveServer(server.url, calls, server.pid)

    return start
