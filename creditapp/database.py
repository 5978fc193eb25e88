"""The app's database: Flask-SQLAlchemy's session and engine, given to the ledger; and whether
its schema is the one this code needs."""
from alembic.runtime.migration import MigrationContext
from flask import Flask, current_app

from .extensions import db
from .ledger.transactions import atomic, configure_engine, database

# PostgreSQL's undefined table, column and function; SQLite says it in words.
_MISSING_SQLSTATES = ("42P01", "42703", "42883")
_MISSING_SQLITE = ("no such table", "no such column", "no such function")


def init_app(app: Flask) -> None:
    database.bind(lambda: db.session(), lambda: db.engine)
    with app.app_context():
        configure_engine(db.engine, app.config["SQLITE_BUSY_TIMEOUT_MS"])


def engine_options(uri: str, configured: dict) -> dict:
    """Pool settings are for server databases; SQLite takes none of them."""
    if uri.startswith("sqlite"):
        return {}
    return dict(configured)


def migration_status() -> tuple[str | None, str]:
    """The database's revision (None before any migration) and the one this code needs; with an
    app's own migrations beside creditapp's, each is the heads of the branches, sorted, spaced."""
    with atomic(write=False) as session:
        heads = MigrationContext.configure(session.connection()).get_current_heads()
    return " ".join(sorted(heads)) or None, current_app.extensions["creditapp.migration_head"]


def migrations_pending(exc: BaseException) -> bool:
    """Whether `exc` is a table, column or function this code needs that the database does not have
    yet because `flask db upgrade` has not run (not a bug of a statement: the revision says so)."""
    orig = getattr(exc, "orig", exc)
    if not (getattr(orig, "sqlstate", None) in _MISSING_SQLSTATES or str(orig).startswith(_MISSING_SQLITE)):
        return False
    try:
        revision, head = migration_status()
    except Exception:
        return False
    return revision != head
