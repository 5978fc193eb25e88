"""A throw-away PostgreSQL database for one test run.

TEST_DATABASE_URL names the server (any database on it); without it the local server at
127.0.0.1:5432 is tried. Where none answers, PostgreSQL tests are skipped with the reason.
"""
import os
import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _unavailable(reason: str):
    # CI sets CREDITAPP_REQUIRE_POSTGRES: there a missing server is a failure, not a skip.
    if os.environ.get("CREDITAPP_REQUIRE_POSTGRES"):
        pytest.fail(f"PostgreSQL is required here but {reason}", pytrace=False)
    pytest.skip(reason)


def server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL") or DEFAULT_SERVER


@contextmanager
def postgres_database():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("PostgreSQL tests need psycopg (pip install -r requirements.txt)")
    admin_url = make_url(server_url())
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"creditapp_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server, no rights: either way there is no PostgreSQL to test
        admin.dispose()
        _unavailable(f"no PostgreSQL at {admin_url.render_as_string(hide_password=True)}: {exc}".splitlines()[0])
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# The ledger's PostgreSQL functions read the time from creditapp_now(), after their locks. In the
# test database it reads a one-row table when the row is there, so that a ManualClock moves the
# database's time with Python's (a close waiting for a lock then reads the time it is moved to).
TEST_CLOCK = """
CREATE TABLE IF NOT EXISTS creditapp_test_clock (now timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION creditapp_now() RETURNS timestamptz LANGUAGE sql VOLATILE AS
$$ SELECT coalesce((SELECT now FROM creditapp_test_clock LIMIT 1), clock_timestamp()) $$;
"""


def install_test_clock(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(TEST_CLOCK)
    engine.dispose()


class DatabaseClock:
    """Writes a ManualClock's time where the test database's creditapp_now() reads it."""

    def __init__(self, url: str):
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")

    def set(self, when) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("DELETE FROM creditapp_test_clock"))
            if when is not None:
                conn.execute(text("INSERT INTO creditapp_test_clock (now) VALUES (:now)"), {"now": when})

    def close(self) -> None:
        self.set(None)
        self.engine.dispose()


def terminate_connections(url: str) -> int:
    """Cut every other connection to the database at `url` (what a restart or a network cut does
    to a pool); returns how many were cut."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            return len(conn.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )).all())
    finally:
        engine.dispose()
