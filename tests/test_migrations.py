"""Migrations run on databases that hold data, on SQLite and PostgreSQL."""
import os

import pytest
from alembic.runtime.migration import MigrationContext
from flask_migrate import upgrade
from sqlalchemy import text

from creditapp.extensions import db

from .conftest import make_app
from .pg import postgres_database

MIGRATIONS = os.path.join(os.path.dirname(__file__), "..", "migrations")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
    else:
        with postgres_database() as url:
            yield url


def revision(app) -> str:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_usernames_that_differ_only_by_case_stop_the_upgrade_and_are_listed(empty_database, capfd):
    app = make_app(empty_database)
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0004_hold_idempotency_key")
        with db.engine.begin() as conn:
            for name in ("Case", "case", "alice", "CASE", "bob"):
                conn.execute(text("INSERT INTO users (username, password_hash, is_admin, created_at) "
                                  "VALUES (:n, 'x', false, CURRENT_TIMESTAMP)"), {"n": name})
        with pytest.raises(SystemExit):  # `flask db upgrade` prints the error and exits 1
            upgrade(directory=MIGRATIONS)
        message = capfd.readouterr().err  # alembic.ini logs to standard error
        assert "'Case' (id 1), 'case' (id 2), 'CASE' (id 4)" in message
        assert "alice" not in message and "bob" not in message
        assert revision(app) == "0004_hold_idempotency_key"  # nothing changed
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE users SET username = 'case2' WHERE id = 2"))
            conn.execute(text("UPDATE users SET username = 'case3' WHERE id = 4"))
        upgrade(directory=MIGRATIONS)
        assert revision(app) == app.extensions["creditapp.migration_head"]
        with pytest.raises(Exception, match="(?i)unique"), db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (username, password_hash, is_admin, created_at) "
                              "VALUES ('ALICE', 'x', false, CURRENT_TIMESTAMP)"))
        db.engine.dispose()
