"""Emitting an event: one INSERT into the outbox, in the caller's transaction.

`emit` neither commits nor talks to the network: the event exists exactly when the change that
caused it commits, and a change that rolls back takes its event with it. Fan-out to the
subscribed endpoints happens later, at dispatch. After a Session that emitted commits,
`dispatch_soon()` runs by itself (a SQLAlchemy `after_commit` hook), so deliveries start without
waiting for the sweep; code that emits in plain SQL (a PL/pgSQL function) may call it after its
commit, or leave the event to the sweep.
"""
import json
import logging
from collections.abc import Callable
from datetime import date, datetime, timezone

from sqlalchemy import event, insert
from sqlalchemy.orm import Session

from .tables import EVENTS

EVENT_TYPES = (
    "balance.low",
    "lot.expiring",
    "purchase.paid",
    "purchase.refunded",
    "purchase.disputed",
    "subscription.renewed",
    "subscription.past_due",
    "job.succeeded",
    "job.failed",
)
_EMITTED = "creditapp.webhooks.emitted"
log = logging.getLogger(__name__)
_dispatcher: Callable[[], None] | None = None


class UnknownEventType(ValueError):
    """An event type that is not one of EVENT_TYPES."""


def emit(session, event_type: str, data: dict, *, at: datetime) -> None:
    """Add one event to the outbox inside `session`'s transaction (a Session or a Connection)."""
    if event_type not in EVENT_TYPES:
        raise UnknownEventType(f"unknown webhook event type {event_type!r}")
    session.execute(insert(EVENTS).values(type=event_type, payload=dumps(data), created_at=at))
    if isinstance(session, Session):
        session.info[_EMITTED] = True


def dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), default=_json_default)


def _json_default(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"not JSON: {value!r}")


def bind_dispatcher(dispatcher: Callable[[], None] | None) -> Callable[[], None] | None:
    """What `dispatch_soon` calls: the app binds one that queues a dispatch on its job queue.
    Returns the one bound before."""
    global _dispatcher
    previous, _dispatcher = _dispatcher, dispatcher
    return previous


def dispatch_soon() -> None:
    """Get the events committed so far on their way now. Never raises: an event whose dispatch
    could not be queued is the sweep's (it is in the outbox either way)."""
    if _dispatcher is None:
        return
    try:
        _dispatcher()
    except Exception:
        log.warning("could not queue a webhook dispatch; the sweep will send it", exc_info=True)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_EMITTED, False):
        dispatch_soon()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_EMITTED, None)
