"""Deliveries: fan-out of events to endpoints, and each attempt claimed, sent and recorded.

An attempt runs in three steps, none holding a transaction across the network: `claim` (under
the delivery's lock: is it due, is nobody else on it; then a fresh lease and an attempt row),
the POST (sending.post), and `record` (only by the holder of the lease: the attempt's outcome,
the delivery's next attempt by the retry schedule, the endpoint's run of failures). A worker
that dies between claim and record leaves a lease that runs out: the next claim marks that
attempt `lost` and tries again, so every delivery is made at least once.
"""
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update

from ..admin_actions import record as record_admin_action
from ..ledger.clock import utcnow
from ..ledger.transactions import atomic, retry_conflicts
from . import sending
from .errors import EndpointDisabled, UnknownDelivery
from .settings import Settings
from .tables import ATTEMPTS, DELIVERIES, ENDPOINTS, EVENTS

FAN_OUT_BATCH = 500


def webhook_id(event_id: int) -> str:
    """The message id of an event: the same for every endpoint and on every retry."""
    return f"msg_{event_id}"


def body(event) -> bytes:
    """{"type", "timestamp", "data"}: `data` is the payload exactly as emitted."""
    timestamp = event.created_at.isoformat().replace("+00:00", "Z")
    return f'{{"type":{json.dumps(event.type)},"timestamp":"{timestamp}","data":{event.payload}}}'.encode()


@retry_conflicts
def fan_out(settings: Settings, limit: int = FAN_OUT_BATCH) -> list[int]:
    """Turn events not dispatched yet into one delivery per subscribed, enabled endpoint; the new
    deliveries' ids. Two fan-outs at once never make a delivery twice (the events are locked,
    and a delivery is unique per event and endpoint)."""
    now = utcnow()
    with atomic() as session:
        events = session.execute(
            select(EVENTS.c.id, EVENTS.c.type).where(EVENTS.c.dispatched_at.is_(None)).order_by(EVENTS.c.id)
            .limit(limit).with_for_update(skip_locked=True)).all()
        if not events:
            return []
        endpoints = [(row.id, set(json.loads(row.events))) for row in session.execute(
            select(ENDPOINTS.c.id, ENDPOINTS.c.events).where(ENDPOINTS.c.disabled_at.is_(None))).all()]
        due = now + timedelta(seconds=settings.schedule[0])
        rows = [{"event_id": event.id, "endpoint_id": endpoint_id, "status": "pending", "attempts": 0,
                 "next_attempt_at": due, "created_at": now, "updated_at": now}
                for event in events for endpoint_id, types in endpoints if event.type in types]
        session.execute(update(EVENTS).where(EVENTS.c.id.in_([event.id for event in events]))
                        .values(dispatched_at=now))
        if not rows:
            return []
        return list(session.execute(insert(DELIVERIES).returning(DELIVERIES.c.id, sort_by_parameter_order=True),
                                    rows).scalars())


@dataclass(frozen=True)
class Claim:
    """What a claim found: "claimed" (send it: `lease`, `attempt_id`, with the `url`, `secret`,
    `webhook_id` and `body`), "busy" or "not_due" (look again in `retry_in` seconds), or why
    there is nothing to do ("unknown", "done", "skipped", "failed")."""

    outcome: str
    retry_in: float | None = None
    lease: str | None = None
    attempt_id: int | None = None
    url: str | None = None
    secret: str | None = None
    webhook_id: str | None = None
    body: bytes | None = None


@retry_conflicts
def claim(delivery_id: int, settings: Settings) -> Claim:
    with atomic() as session:
        delivery = _lock(session, delivery_id)
        if delivery is None:
            return Claim("unknown")
        if delivery.status != "pending":
            return Claim("done")
        now = utcnow()
        if delivery.lease is not None:
            if delivery.lease_expires_at > now:
                return Claim("busy", retry_in=_seconds(delivery.lease_expires_at - now))
            _end_attempt(session, delivery_id, delivery.lease, now, "lost",
                         error="its worker stopped before it finished")
            if delivery.attempts >= len(settings.schedule):
                _update(session, delivery_id, now, status="failed", lease=None, lease_expires_at=None,
                        next_attempt_at=None)
                return Claim("failed")
        elif delivery.next_attempt_at > now:
            return Claim("not_due", retry_in=_seconds(delivery.next_attempt_at - now))
        endpoint = session.execute(select(ENDPOINTS).where(ENDPOINTS.c.id == delivery.endpoint_id)).one()
        if endpoint.disabled_at is not None:
            _update(session, delivery_id, now, status="skipped", lease=None, lease_expires_at=None,
                    next_attempt_at=None)
            return Claim("skipped")
        event = session.execute(select(EVENTS).where(EVENTS.c.id == delivery.event_id)).one()
        lease = uuid.uuid4().hex
        _update(session, delivery_id, now, attempts=delivery.attempts + 1, lease=lease,
                lease_expires_at=now + timedelta(seconds=settings.lease_seconds))
        attempt_id = session.execute(insert(ATTEMPTS).values(
            delivery_id=delivery_id, number=delivery.attempts + 1, lease=lease, status="delivering", started_at=now,
        ).returning(ATTEMPTS.c.id)).scalar_one()
        return Claim("claimed", lease=lease, attempt_id=attempt_id, url=endpoint.url, secret=endpoint.secret,
                     webhook_id=webhook_id(event.id), body=body(event))


@dataclass(frozen=True)
class Recorded:
    outcome: str  # "succeeded", "retry", "failed" (the schedule ran out), "disabled", or "lost"
    retry_in: float | None = None


@retry_conflicts
def record(delivery_id: int, claimed: Claim, result: sending.Result, settings: Settings) -> Recorded:
    """The attempt's outcome. Only the lease's holder moves the delivery on; an attempt that lost
    its lease (taken for dead) still tells the truth about itself in its attempt row."""
    with atomic() as session:
        now = utcnow()
        delivery = _lock(session, delivery_id)  # first, as a claim locks it first
        _end_attempt(session, delivery_id, claimed.lease, now, "succeeded" if result.ok else "failed",
                     response_code=result.response_code, error=result.error, duration_ms=result.duration_ms)
        if delivery is None or delivery.lease != claimed.lease:
            return Recorded("lost")
        done = {"lease": None, "lease_expires_at": None}
        if result.ok:
            _update(session, delivery_id, now, status="succeeded", delivered_at=now, next_attempt_at=None, **done)
            session.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == delivery.endpoint_id,
                                                    ENDPOINTS.c.failing_since.is_not(None))
                            .values(failing_since=None))
            return Recorded("succeeded")
        failing_since = session.execute(
            update(ENDPOINTS).where(ENDPOINTS.c.id == delivery.endpoint_id)
            .values(failing_since=func.coalesce(ENDPOINTS.c.failing_since, now))
            .returning(ENDPOINTS.c.failing_since)).scalar_one()
        if now - failing_since >= timedelta(days=settings.disable_after_days):
            session.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == delivery.endpoint_id).values(
                disabled_at=now, updated_at=now,
                disabled_reason=f"every attempt failed since {_iso(failing_since)}; the last: {result.error}"[:1000]))
            _update(session, delivery_id, now, status="failed", next_attempt_at=None, **done)
            return Recorded("disabled")
        if delivery.attempts >= len(settings.schedule):
            _update(session, delivery_id, now, status="failed", next_attempt_at=None, **done)
            return Recorded("failed")
        delay = settings.schedule[delivery.attempts]
        _update(session, delivery_id, now, next_attempt_at=now + timedelta(seconds=delay), **done)
        return Recorded("retry", retry_in=delay)


def deliver(delivery_id: int, settings: Settings) -> float | None:
    """One delivery's next step: claim, send, record. None when there is nothing more for this
    message to do, or the seconds after which to look again."""
    claimed = claim(delivery_id, settings)
    if claimed.outcome in ("busy", "not_due"):
        return claimed.retry_in
    if claimed.outcome != "claimed":
        return None
    result = sending.post(claimed.url, claimed.secret, claimed.webhook_id, claimed.body,
                          timeout=settings.timeout, allow_private=settings.allow_private)
    return record(delivery_id, claimed, result, settings).retry_in


def due(before: datetime | None = None, limit: int = 1000) -> list[int]:
    """Pending deliveries whose next attempt was due by `before` (now) and that no live attempt
    holds."""
    now = utcnow()
    with atomic(write=False) as session:
        return list(session.execute(
            select(DELIVERIES.c.id).where(DELIVERIES.c.status == "pending",
                                          DELIVERIES.c.next_attempt_at <= (before or now),
                                          DELIVERIES.c.lease.is_(None) | (DELIVERIES.c.lease_expires_at <= now))
            .order_by(DELIVERIES.c.next_attempt_at).limit(limit)).scalars())


@retry_conflicts
def retry(endpoint_id: int, delivery_id: int, *, actor_user_id: int) -> dict:
    """Make a delivery pending again and due now, whatever it came to (a receiver that lost it
    asks for it again); a failure goes on with the retry schedule where it was, or ends it."""
    with atomic() as session:
        endpoint = session.execute(select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)).one_or_none()
        delivery = _lock(session, delivery_id)
        if endpoint is None or delivery is None or delivery.endpoint_id != endpoint_id:
            raise UnknownDelivery(f"no delivery {delivery_id} for webhook endpoint {endpoint_id}")
        if endpoint.disabled_at is not None:
            raise EndpointDisabled(f"webhook endpoint {endpoint_id} is disabled: enable it first")
        now = utcnow()
        if delivery.lease is None:
            _update(session, delivery_id, now, status="pending", next_attempt_at=now)
        record_admin_action(session, actor_user_id=actor_user_id, action="webhook.retried",
                             details={"endpoint_id": endpoint_id, "delivery_id": delivery_id})
    return page(endpoint_id, limit=1, before=delivery_id + 1)[0]


def page(endpoint_id: int, *, limit: int, before: int | None = None) -> list[dict]:
    """The endpoint's deliveries, newest first, each with its attempts (oldest first)."""
    query = (select(DELIVERIES, EVENTS.c.type).join(EVENTS, EVENTS.c.id == DELIVERIES.c.event_id)
             .where(DELIVERIES.c.endpoint_id == endpoint_id))
    if before is not None:
        query = query.where(DELIVERIES.c.id < before)
    with atomic(write=False) as session:
        deliveries = session.execute(query.order_by(DELIVERIES.c.id.desc()).limit(limit)).all()
        attempts = session.execute(select(ATTEMPTS).where(ATTEMPTS.c.delivery_id.in_([d.id for d in deliveries]))
                                   .order_by(ATTEMPTS.c.id)).all() if deliveries else []
    by_delivery: dict[int, list] = {}
    for attempt in attempts:
        by_delivery.setdefault(attempt.delivery_id, []).append({
            "number": attempt.number, "status": attempt.status, "response_code": attempt.response_code,
            "started_at": attempt.started_at, "finished_at": attempt.finished_at, "duration_ms": attempt.duration_ms,
            "error": attempt.error})
    return [{"id": d.id, "event_id": d.event_id, "event_type": d.type, "webhook_id": webhook_id(d.event_id),
             "status": d.status, "attempts": by_delivery.get(d.id, []), "next_attempt_at": d.next_attempt_at,
             "created_at": d.created_at, "delivered_at": d.delivered_at} for d in deliveries]


def _lock(session, delivery_id: int):
    return session.execute(select(DELIVERIES).where(DELIVERIES.c.id == delivery_id).with_for_update()).one_or_none()


def _update(session, delivery_id: int, now: datetime, **values) -> None:
    session.execute(update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(**values, updated_at=now))


def _end_attempt(session, delivery_id: int, lease: str, now: datetime, status: str, **values) -> None:
    session.execute(update(ATTEMPTS).where(ATTEMPTS.c.delivery_id == delivery_id, ATTEMPTS.c.lease == lease,
                                           ATTEMPTS.c.status == "delivering")
                    .values(status=status, finished_at=now, **values))


def _seconds(delta: timedelta) -> float:
    return max(0.0, delta.total_seconds())


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
