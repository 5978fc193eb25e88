"""PostgreSQL: a paid request's two transactions and the balance read, one call each.

Migration 0008 creates the functions (`creditapp_hold`, `creditapp_close`, `creditapp_balance`);
they do what the service does step by step on SQLite, and the same behaviour suites run against
both. Each call is one statement in autocommit: one round trip, with no BEGIN, COMMIT or pool
pre-ping around it. A call whose connection was lost is made once more on a fresh connection:
the close and the balance read are safe to repeat, and the hold carries a request reference with
which its repetition finds the hold the first attempt took instead of taking a second one.
"""
import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from .errors import IdempotencyKeyInUse
from .transactions import committing, database, lost_connection

HOLD = text(
    "SELECT * FROM creditapp_hold(:user, :type, :amount, :ttl, :sid, :key, :fingerprint, :ref, :replay)"
)
CLOSE = text("SELECT outcome FROM creditapp_close(:hold, :user, :type, :charge, :status, :body, :key_ttl, :reason)")
BALANCE = text("SELECT * FROM creditapp_balance(:user, :sid, :expiring)")
KEY_IN_USE = "CA409"  # raised by creditapp_hold when a concurrent request claimed the key first


def available() -> bool:
    return database.engine().dialect.name == "postgresql"


def call(statement, params: dict):
    """The one row of one function call, in autocommit; once more if the connection was lost."""
    committing.set(True)  # an autocommit call commits as it runs: never run it again blindly
    for attempt in (1, 2):
        try:
            with database.engine().connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                return connection.execute(statement, params).one()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) == KEY_IN_USE:
                raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress") from None
            if attempt == 2 or not lost_connection(exc):
                raise
    raise AssertionError("unreachable")


def hold(*, user_id: int, credit_type: str, amount: int, ttl: int, session_id: str | None, key: str | None,
         fingerprint: str | None, replay: bool):
    return call(HOLD, {
        "user": user_id, "type": credit_type, "amount": amount, "ttl": ttl, "sid": session_id, "key": key,
        "fingerprint": fingerprint, "ref": uuid.uuid4().hex, "replay": replay,
    })


def close(*, hold_id: int, user_id: int, credit_type: str, charge: int, answer: tuple[int, str] | None,
          key_ttl: int, reason: str | None) -> str:
    status, body = answer if answer is not None else (None, None)
    return call(CLOSE, {
        "hold": hold_id, "user": user_id, "type": credit_type, "charge": charge, "status": status, "body": body,
        "key_ttl": key_ttl, "reason": reason,
    }).outcome


def balance(*, user_id: int, session_id: str | None, expiring: int):
    row = call(BALANCE, {"user": user_id, "sid": session_id, "expiring": expiring})
    lapsing = [{**item, "expires_at": datetime.fromisoformat(item["expires_at"])} for item in row.expiring or ()]
    return row, lapsing
