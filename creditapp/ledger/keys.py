"""Idempotency keys: a retried request gets the first one's answer, and is never charged twice.

A key is scoped to its user (the client: the token's user, or an API key's owner) and bound to the hold of the request that claimed it. It is claimed
(in flight) in the same transaction that takes the hold, and it ends in the same transaction that
ends the hold: completed with the answer when the hold settles, freed when the hold is released
or expires. So a key can never be handed to a retry while its first request could still be
charged. A completed key is kept for IDEMPOTENCY_TTL_SECONDS after its answer was stored.

These functions work inside the caller's transaction; the credit service decides when.
"""
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .clock import utcnow
from .errors import IdempotencyKeyInUse
from .tables import CreditHold, IdempotencyKey
from .transactions import atomic

KEYS = IdempotencyKey.__table__
HOLDS = CreditHold.__table__
PRUNE_BATCH = 20


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: str


def find(session, user_id: int, key: str):
    """The key's row with its hold's state (None without a hold), or None."""
    return session.execute(
        select(KEYS.c.id, KEYS.c.fingerprint, KEYS.c.status, KEYS.c.response_status,
               KEYS.c.response_body, KEYS.c.expires_at, KEYS.c.hold_id,
               HOLDS.c.status.label("hold_status"), HOLDS.c.expires_at.label("hold_expires_at"),
               HOLDS.c.credit_type.label("hold_credit_type"), HOLDS.c.amount.label("hold_amount"),
               HOLDS.c.wallet_id.label("hold_wallet_id"))
        .outerjoin(HOLDS, HOLDS.c.id == KEYS.c.hold_id)
        .where(KEYS.c.user_id == user_id, KEYS.c.key == key)
    ).one_or_none()


def claim(session, user_id: int, key: str, request_fingerprint: str, expires_at: datetime,
          hold_id: int | None = None) -> int:
    """Mark the key in flight inside the caller's transaction; IdempotencyKeyInUse if another
    request claimed it first (the caller's transaction then rolls back whole)."""
    now = utcnow()
    _prune(session, now)
    dialect_insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    key_id = session.execute(
        dialect_insert(KEYS)
        .values(user_id=user_id, key=key, fingerprint=request_fingerprint, status="in_flight",
                hold_id=hold_id, created_at=now, expires_at=expires_at)
        .on_conflict_do_nothing(index_elements=["user_id", "key"])
        .returning(KEYS.c.id)
    ).scalar()
    if key_id is None:
        raise IdempotencyKeyInUse("a request with this Idempotency-Key is still in progress")
    return key_id


def complete(session, key_id: int, status: int, body: str, expires_at: datetime) -> None:
    session.execute(
        update(KEYS).where(KEYS.c.id == key_id)
        .values(status="completed", response_status=status, response_body=body, expires_at=expires_at)
    )


def complete_for_hold(session, hold_id: int, status: int, body: str, expires_at: datetime) -> None:
    """Store the answer of the request whose hold just settled."""
    session.execute(
        update(KEYS).where(KEYS.c.hold_id == hold_id, KEYS.c.status == "in_flight")
        .values(status="completed", response_status=status, response_body=body, expires_at=expires_at)
    )


def free_for_hold(session, hold_id: int) -> None:
    """Free the key of a hold that ended without a charge: its request may be retried."""
    session.execute(delete(KEYS).where(KEYS.c.hold_id == hold_id, KEYS.c.status == "in_flight"))


def forget(session, key_id: int) -> None:
    session.execute(delete(KEYS).where(KEYS.c.id == key_id))


def prune(now: datetime | None = None) -> int:
    """Delete every key that can no longer matter; returns how many."""
    now = now or utcnow()
    with atomic() as session:
        return session.execute(delete(KEYS).where(_prunable(now))).rowcount


def _prunable(now: datetime):
    # A completed answer past its time, or a key whose hold has ended (its close freed it, or
    # will: either way no request of it can be charged any more). A key whose hold is still open
    # is never pruned, however old: only the transaction that ends the hold may free it.
    ended_hold = select(HOLDS.c.id).where(HOLDS.c.id == KEYS.c.hold_id, HOLDS.c.status != "open").exists()
    # A key in flight with no hold (a purchase being made) lapses at its own expiry: the request
    # that claimed it died before it could answer.
    return (
        and_(KEYS.c.status == "completed", KEYS.c.expires_at <= now)
        | and_(KEYS.c.status == "in_flight", KEYS.c.expires_at <= now, ended_hold)
        | and_(KEYS.c.status == "in_flight", KEYS.c.expires_at <= now, KEYS.c.hold_id.is_(None))
    )


def _prune(session, now: datetime) -> None:
    # A few dead keys per claim keep the table at its live size without a cron job.
    batch = select(KEYS.c.id).where(_prunable(now)).limit(PRUNE_BATCH).scalar_subquery()
    session.execute(delete(KEYS).where(KEYS.c.id.in_(batch)))
