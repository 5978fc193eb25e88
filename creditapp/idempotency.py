"""Idempotency keys: a retried request gets the first one's answer, and is never charged twice.

A key is scoped to its user. It is claimed (in flight) in the same transaction that reserves
the credits, and completed with the response in the same transaction that commits the charge,
so a crash can never leave a charge without its stored answer or the other way round. A
request that fails stores nothing and may be retried with the same key.
"""
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .database import atomic, utcnow
from .exceptions import IdempotencyKeyInUse, IdempotencyKeyReused
from .models import CreditHold, IdempotencyKey

KEYS = IdempotencyKey.__table__
HOLDS = CreditHold.__table__
PRUNE_BATCH = 20


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str


def fingerprint(method: str, path: str, body: bytes) -> str:
    """Same route and same JSON (whatever its key order or spacing) give the same fingerprint."""
    try:
        canonical = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":")).encode()
    except ValueError:
        canonical = body
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


def lookup(user_id: int, key: str, request_fingerprint: str, now: datetime | None = None) -> StoredResponse | None:
    """The stored answer to replay, None when the request should run, or an error."""
    now = now or utcnow()
    with atomic() as session:
        row = session.execute(
            select(KEYS.c.id, KEYS.c.fingerprint, KEYS.c.status, KEYS.c.response_status,
                   KEYS.c.response_body, KEYS.c.expires_at, HOLDS.c.status.label("hold_status"),
                   HOLDS.c.expires_at.label("hold_expires_at"))
            .outerjoin(HOLDS, HOLDS.c.id == KEYS.c.hold_id)
            .where(KEYS.c.user_id == user_id, KEYS.c.key == key)
        ).one_or_none()
        if row is None:
            return None
        hold_alive = row.hold_status == "open" and row.hold_expires_at > now
        abandoned = row.status == "in_flight" and row.hold_status is not None and not hold_alive
        if row.expires_at <= now or abandoned:
            # Expired, or its request died and its hold is given back (or due to be): free again.
            session.execute(delete(KEYS).where(KEYS.c.id == row.id))
            return None
    if row.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used for a different request")
    if row.status == "in_flight":
        raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
    return StoredResponse(row.response_status, row.response_body)


def claim(session, user_id: int, key: str, request_fingerprint: str, ttl_seconds: int,
          hold_id: int | None = None) -> int:
    """Mark the key in flight inside the caller's transaction; IdempotencyKeyInUse if another
    request claimed it first (the caller's transaction then rolls back whole)."""
    now = utcnow()
    _prune(session, now)
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    key_id = session.execute(
        dialect_insert(KEYS)
        .values(user_id=user_id, key=key, fingerprint=request_fingerprint, status="in_flight",
                hold_id=hold_id, created_at=now, expires_at=now + timedelta(seconds=ttl_seconds))
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(KEYS.c.id)
    ).scalar()
    if key_id is None:
        raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
    return key_id


def complete(session, key_id: int, status: int, body: str) -> None:
    session.execute(
        update(KEYS).where(KEYS.c.id == key_id)
        .values(status="completed", response_status=status, response_body=body)
    )


def forget(session, key_id: int) -> None:
    session.execute(delete(KEYS).where(KEYS.c.id == key_id))


def prune(now: datetime | None = None) -> int:
    """Delete every expired key; returns how many."""
    now = now or utcnow()
    with atomic() as session:
        return session.execute(delete(KEYS).where(KEYS.c.expires_at <= now)).rowcount


def _prune(session, now: datetime) -> None:
    # A few expired keys per claim keep the table at its live size without a cron job.
    expired = select(KEYS.c.id).where(KEYS.c.expires_at <= now).limit(PRUNE_BATCH).scalar_subquery()
    session.execute(delete(KEYS).where(KEYS.c.id.in_(expired)))
