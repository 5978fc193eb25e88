"""Transactions, for whoever runs the ledger: the web app, the CLI, a job worker or a script.

The ledger does not know where its sessions come from: `database.bind(session, engine)` gives it
a function returning the current Session (Flask-SQLAlchemy's request session in the app, a
scoped session elsewhere) and one returning the Engine. `bind_engine(engine)` does it for a
plain engine.

Every public service call runs inside `atomic()`: one transaction, committed or rolled back as a
whole. On SQLite a writing transaction takes the write lock up front (BEGIN IMMEDIATE), so two
writers queue on the busy timeout instead of failing with "database is locked" when one of them
tries to upgrade a read lock.
"""
import functools
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

_WRITE_OPTION = "creditapp_write"


class Database:
    """Where the ledger gets its sessions and its engine."""

    def __init__(self) -> None:
        self._session: Callable[[], Session] | None = None
        self._engine: Callable[[], Engine] | None = None

    def bind(self, session: Callable[[], Session], engine: Callable[[], Engine]) -> None:
        self._session, self._engine = session, engine

    def bind_engine(self, engine: Engine) -> None:
        """For a script or worker without Flask: one session per thread on `engine`."""
        sessions = scoped_session(sessionmaker(engine))
        self.bind(sessions, lambda: engine)

    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the ledger has no database: call ledger.database.bind(...) first")
        return self._session()

    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the ledger has no database: call ledger.database.bind(...) first")
        return self._engine()


database = Database()


# Set once a transaction's work is done and its COMMIT is on the way: a connection lost from then
# on leaves it unknown whether it committed, so the transaction must not simply run again.
committing: ContextVar[bool] = ContextVar("creditapp_committing", default=False)


_TRANSACTION = "creditapp.transaction"
_LAST_STEPS = "last_steps"


def transaction_info(session: Session) -> dict:
    """What belongs to the transaction running in `session` (atomic's), gone with its end
    whether it commits or rolls back: a session's own `info` outlives its transactions."""
    return session.info.setdefault(_TRANSACTION, {})


def before_commit(session: Session, step: Callable[[Session], None]) -> None:
    """Run `step(session)` once at the end of this transaction, inside it, just before its COMMIT
    (what must be decided from the transaction's final state, such as a low-balance alert); a
    transaction that rolls back runs none."""
    steps = transaction_info(session).setdefault(_LAST_STEPS, [])
    if step not in steps:
        steps.append(step)


@contextmanager
def atomic(write: bool = True) -> Iterator[Session]:
    """One transaction on the current session; commits on success, rolls back on error."""
    session = database.session()
    if session.in_transaction():
        # A transaction left open (autobegun by a read, or by a caller that raised) must not be
        # silently merged into this one.
        session.rollback()
    committing.set(False)
    session.info[_TRANSACTION] = {}
    try:
        with session.begin():
            if write:
                session.connection(execution_options={_WRITE_OPTION: True})
            yield session
            for step in transaction_info(session).pop(_LAST_STEPS, ()):
                step(session)
            committing.set(True)
    finally:
        session.info.pop(_TRANSACTION, None)


# PostgreSQL's serialization_failure and deadlock_detected: the transaction did nothing and may
# simply run again. READ COMMITTED and a fixed lock order make them rare; they must still never
# reach a client as a 500.
RETRYABLE_SQLSTATES = {"40001", "40P01"}
MAX_ATTEMPTS = 3


def lost_connection(exc: DBAPIError) -> bool:
    """The database connection broke (a restart, a cut, a stale pooled connection): SQLAlchemy
    has already thrown the pool's connections away. Pools do not ping before each checkout (a
    round trip per request); a call that meets a dead connection runs once more instead."""
    return bool(getattr(exc, "connection_invalidated", False))


def read(statement) -> list:
    """The rows of one read statement, on a connection of its own outside the ORM session.
    On PostgreSQL it runs in autocommit: one round trip instead of BEGIN, the query and COMMIT
    (a single statement is consistent by itself). The revocation check runs this on every
    authenticated request, where the session's bookkeeping showed in the profile."""
    engine = database.engine()
    for attempt in (1, 2):
        try:
            with engine.connect() as connection:
                if engine.dialect.name == "postgresql":
                    connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                rows = connection.execute(statement).all()
                if connection.in_transaction():
                    connection.rollback()  # SQLite: end the read transaction it began
                return rows
        except DBAPIError as exc:
            if attempt == 2 or not lost_connection(exc):
                raise
    raise AssertionError("unreachable")


def retry_conflicts(function: Callable) -> Callable:
    """Run a function that is one whole transaction again when the database says it conflicted,
    or (once) when its connection was lost before its COMMIT was sent."""

    @functools.wraps(function)
    def retrying(*args, **kwargs):
        reconnected = False
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return function(*args, **kwargs)
            except DBAPIError as exc:
                if lost_connection(exc) and not reconnected and not committing.get():
                    reconnected = True
                    continue
                sqlstate = getattr(exc.orig, "sqlstate", None)
                if sqlstate not in RETRYABLE_SQLSTATES or attempt == MAX_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.01 * attempt))

    return retrying


def configure_engine(engine: Engine, busy_timeout_ms: int) -> None:
    """SQLite: WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE for writing transactions."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        # Take transaction control away from pysqlite so that BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        if conn.get_execution_options().get(_WRITE_OPTION):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
