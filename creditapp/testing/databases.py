"""Throw-away databases for tests and benchmarks: a PostgreSQL database of a run's own, the
test clock the ledger's PostgreSQL functions read, and cutting connections. One module, used by
creditapp's tests, its benchmarks and the pytest kit.

TEST_DATABASE_URL names the PostgreSQL server (any database on it); without it the local server
at 127.0.0.1:5432 is tried.
"""
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


class DatabaseUnavailable(Exception):
    """No PostgreSQL server answers here (or it refuses to make a database); the message says why."""


def server_url() -> str:
    return os.environ.get("TEST_DATABASE_URL") or DEFAULT_SERVER


def create_postgres(server: str | None = None, prefix: str = "creditapp_test") -> str:
    """A new, empty database on the PostgreSQL server; its URL. Raises DatabaseUnavailable."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise DatabaseUnavailable("PostgreSQL needs psycopg (pip install -r requirements.txt)") from None
    admin_url = make_url(server or server_url())
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # no server, no rights: either way there is no PostgreSQL here
        where = admin_url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(f"no PostgreSQL at {where}: {exc}".splitlines()[0]) from None
    finally:
        admin.dispose()
    return admin_url.set(database=name).render_as_string(hide_password=False)


def drop_postgres(url: str, server: str | None = None) -> None:
    """Drop the database at `url`, whoever is still connected to it."""
    database = make_url(url)
    admin = create_engine(make_url(server or server_url()), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


@contextmanager
def throwaway_postgres(server: str | None = None, prefix: str = "creditapp_test") -> Iterator[str]:
    """`create_postgres`, dropped on exit."""
    url = create_postgres(server, prefix)
    try:
        yield url
    finally:
        drop_postgres(url, server)


@contextmanager
def postgres_database() -> Iterator[str]:
    """`throwaway_postgres` for pytest: where no server answers, the test is skipped with the
    reason, or fails where CREDITAPP_REQUIRE_POSTGRES is set (CI)."""
    try:
        with throwaway_postgres() as url:
            yield url
    except DatabaseUnavailable as exc:
        missing("CREDITAPP_REQUIRE_POSTGRES", "PostgreSQL", str(exc))


def missing(required_by: str, what: str, reason: str) -> None:
    """A service a test needs does not answer: skip it with the reason, or fail it where the
    variable `required_by` is set (CI, where every service must be there)."""
    import pytest

    if os.environ.get(required_by):
        pytest.fail(f"{what} is required here but {reason}", pytrace=False)
    pytest.skip(reason)


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
