"""The app's database: Flask-SQLAlchemy's session and engine, given to the ledger; and whether
its schema is the one this code needs."""
from collections.abc import Iterable

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicCommandError
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


def migration_status() -> tuple[str | None, str, bool]:
    """The database's revision (None before any migration), the one this code needs, and whether
    some of what it needs is not applied yet; with an app's own migrations beside creditapp's, each
    revision is the heads of the branches, sorted, spaced."""
    with atomic(write=False) as session:
        heads = MigrationContext.configure(session.connection()).get_current_heads()
    needed = current_app.extensions["creditapp.migration_head"]
    applied = applied_revisions(current_app.extensions["creditapp.migration_scripts"], heads)
    return " ".join(sorted(heads)) or None, needed, not set(needed.split()) <= applied


def applied_revisions(scripts: ScriptDirectory, heads: Iterable[str]) -> set[str]:
    """Every revision a database at `heads` has: alembic_version holds only the newest of each line,
    and not a revision that another depends on (an app's branch that `depends_on` creditapp's head
    leaves only the app's revision there). A revision this code does not know (another app's, a
    newer release's) tells nothing of what stands under it."""
    applied, todo = set(), list(heads)
    while todo:
        try:
            revision = scripts.get_revision(todo.pop())
        except AlembicCommandError:
            continue
        if revision is None or revision.revision in applied:
            continue
        applied.add(revision.revision)
        todo += [*_names(revision.down_revision), *_names(revision.dependencies)]
    return applied


def _names(revisions: str | Iterable[str] | None) -> tuple[str, ...]:
    return (revisions,) if isinstance(revisions, str) else tuple(revisions or ())


def migrations_pending(exc: BaseException) -> bool:
    """Whether `exc` is a table, column or function this code needs that the database does not have
    yet because `flask db upgrade` has not run (not a bug of a statement: the revision says so)."""
    orig = getattr(exc, "orig", exc)
    if not (getattr(orig, "sqlstate", None) in _MISSING_SQLSTATES or str(orig).startswith(_MISSING_SQLITE)):
        return False
    try:
        return migration_status()[2]
    except Exception:
        return False
