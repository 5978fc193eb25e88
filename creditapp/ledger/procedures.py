"""PostgreSQL: a paid request's two transactions and the balance read, one call each.

Migration 0010 creates the functions (first made by 0008) (`creditapp_hold`, `creditapp_close`, `creditapp_balance`);
0016 makes the hold and the close decide low-balance alerts too (`alerted`: they wrote a
`balance.low` event). They do what the service does step by step on SQLite, and the same
behaviour suites run against both. Each call is one statement in autocommit: one round trip, with no BEGIN, COMMIT or pool
pre-ping around it. A call whose connection was lost is made once more on a fresh connection:
the close and the balance read are safe to repeat, and the hold carries a request reference with
which its repetition finds the hold the first attempt took instead of taking a second one.
"""
import uuid
from datetime import datetime

from sqlalchemy.exc import DBAPIError

from . import alerts
from .core import unknown
from .errors import (
    AccountDisabled, CapClosed, CapExceeded, CapExpired, FeatureNotAllowed, IdempotencyKeyInUse, SessionRevoked,
)
from .transactions import committing, database

HOLD = "SELECT * FROM creditapp_hold(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::bigint[], %s, %s::jsonb)"
CLOSE = "SELECT outcome, alerted FROM creditapp_close(%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
BALANCE = "SELECT * FROM creditapp_balance(%s, %s, %s)"
# With the admission (session, rate limit) in front, migration 0018: a paid request's first call.
PAID_HOLD = ("SELECT * FROM creditapp_paid_hold(%s, %s, %s::integer[], %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
             "%s::bigint[], %s, %s::jsonb)")
ADMIT = "SELECT * FROM creditapp_paid_admit(%s, %s, %s::integer[], %s)"
KEY_IN_USE = "CA409"  # raised by creditapp_hold when a concurrent request claimed the key first


def available() -> bool:
    return database.engine().dialect.name == "postgresql"


def call(statement: str, params: tuple | dict):
    """The one row of one statement (a function call), in autocommit; once more if the connection was lost.

    It uses the pooled psycopg connection directly: SQLAlchemy's Connection and execution
    context around two statements were a fifth of a paid request's CPU. Errors come out as
    SQLAlchemy's, like everywhere else."""
    import psycopg
    from psycopg.rows import namedtuple_row

    committing.set(True)  # an autocommit call commits as it runs: never run it again blindly
    engine = database.engine()
    for attempt in (1, 2):
        pooled = engine.raw_connection()
        connection = pooled.driver_connection
        try:
            connection.autocommit = True
            try:
                with connection.cursor(row_factory=namedtuple_row) as cursor:
                    cursor.execute(statement, params, prepare=True)
                    return cursor.fetchone()
            finally:
                if not (connection.closed or connection.broken):
                    connection.autocommit = False  # the pool's other users expect transactions
        except psycopg.Error as exc:
            if exc.sqlstate == KEY_IN_USE:
                raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress") from None
            lost = connection.closed or connection.broken
            if lost:
                # What broke this connection (a restart, a cut) broke its idle neighbours too:
                # replace them all, as SQLAlchemy does for its own statements, so that the
                # repetition gets a new connection rather than the next dead one.
                pooled.invalidate(exc)
                engine.dispose()
                if attempt == 1:
                    continue
            raise DBAPIError.instance(statement, params, exc, psycopg.Error, connection_invalidated=lost) from exc
        finally:
            pooled.close()
    raise AssertionError("unreachable")


def new_ref() -> str:
    """A name for one request's calls: their repetition is recognised by it (holds, counts)."""
    return uuid.uuid4().hex


def hold(*, spender, credit_type: str, amount: int, ttl: int, key: str | None, fingerprint: str | None,
         replay: bool, feature: str | None, ref: str, admission=None):
    """With `admission` (not yet done), its checks first in the same call (creditapp_paid_hold)."""
    hold_args = (spender.wallet_id, credit_type, amount, ttl, spender.client_id, key, fingerprint, ref, replay,
                 spender.user_id, spender.key_id, list(spender.caps), feature, alerts.settings.as_json)
    if admission is not None and not admission.done:
        row = call(PAID_HOLD, (admission.session_id, admission.user_id, admission.flat_windows(), *hold_args))
    else:
        # The web layer checked the session (the hold's p_sid stays NULL) and nothing is counted.
        row = call(HOLD, hold_args[:4] + (None,) + hold_args[4:])
    if row.alerted:
        alerts.settings.emitted()
    return row


def admit(admission, ref: str | None):
    return call(ADMIT, (admission.session_id, admission.user_id, admission.flat_windows(), ref or new_ref()))


def close(*, hold_id: int, wallet_id: int, credit_type: str, charge: int, answer: tuple[int, str] | None,
          key_ttl: int, reason: str | None) -> str:
    status, body = answer if answer is not None else (None, None)
    row = call(CLOSE, (hold_id, wallet_id, credit_type, charge, status, body, key_ttl, reason,
                       alerts.settings.as_json))
    if row.alerted:
        alerts.settings.emitted()
    return row.outcome


def balance(*, wallet_id: int, session_id: str | None, expiring: int):
    row = call(BALANCE, (wallet_id, session_id, expiring))
    lapsing = [{**item, "expires_at": datetime.fromisoformat(item["expires_at"])} for item in row.expiring or ()]
    return row, lapsing


def refuse(row, wallet_id: int, required: int = 0, credit_type: str = "") -> None:
    """Raise what a procedure's refusal means (nothing was changed)."""
    outcome = row.outcome
    if outcome == "unknown_wallet":
        raise unknown(wallet_id)
    if outcome == "revoked":
        raise SessionRevoked("the token's login session was revoked")
    if outcome == "disabled":
        raise AccountDisabled("this account is disabled")
    cap_id = getattr(row, "cap_id", None)
    if outcome == "cap_closed":
        raise CapClosed(cap_id, f"cap {cap_id} is closed")
    if outcome == "cap_expired":
        raise CapExpired(cap_id, f"cap {cap_id} has expired")
    if outcome == "feature_not_allowed":
        raise FeatureNotAllowed(cap_id, f"cap {cap_id} does not allow this feature")
    if outcome == "cap_exceeded":
        raise CapExceeded(cap_id, row.cap_limit, row.cap_spent, required, credit_type)
