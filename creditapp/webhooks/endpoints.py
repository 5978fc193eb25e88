"""Endpoints: the URLs administrators subscribe to event types. Each change is one transaction;
the URL is checked (addresses.check_url) before anything is written."""
import base64
import json
import secrets
from collections.abc import Iterable

from sqlalchemy import delete, insert, select, update

from ..ledger.clock import utcnow
from ..admin_actions import record as record_admin_action
from ..ledger.transactions import atomic
from . import addresses
from .errors import UnknownEndpoint
from .outbox import EVENT_TYPES, UnknownEventType
from .settings import Settings
from .tables import ENDPOINTS

SECRET_BYTES = 24


def new_secret() -> str:
    """A Standard Webhooks secret: whsec_ and base64 of random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def checked_events(events: Iterable[str]) -> list[str]:
    events = list(dict.fromkeys(events))
    unknown = [name for name in events if name not in EVENT_TYPES]
    if unknown or not events:
        raise UnknownEventType(f"unknown event types {unknown}; known: {', '.join(EVENT_TYPES)}" if unknown
                               else "at least one event type is needed")
    return events


def create(url: str, events: Iterable[str], description: str | None, settings: Settings, *,
           actor_user_id: int) -> dict:
    """A new endpoint; the answer carries its secret (the only time it is shown)."""
    events = checked_events(events)
    addresses.check_url(url, settings.allow_private)
    now, secret = utcnow(), new_secret()
    with atomic() as session:
        endpoint_id = session.execute(insert(ENDPOINTS).values(
            url=url, events=json.dumps(events), description=description, secret=secret, created_at=now,
            updated_at=now).returning(ENDPOINTS.c.id)).scalar_one()
        row = _row(session, endpoint_id)
        record_admin_action(session, actor_user_id=actor_user_id, action="webhook.created",
                             details={"endpoint_id": endpoint_id, "url": url, "events": events})
    return {**public(row), "secret": secret}


def all_endpoints() -> list[dict]:
    with atomic(write=False) as session:
        return [public(row) for row in session.execute(select(ENDPOINTS).order_by(ENDPOINTS.c.id)).all()]


def get(endpoint_id: int) -> dict:
    with atomic(write=False) as session:
        return public(_row(session, endpoint_id))


def update_endpoint(endpoint_id: int, changes: dict, settings: Settings, *, actor_user_id: int) -> dict:
    """Change `url`, `events`, `description`, or `disabled` (false: enabled again, its failures
    forgotten)."""
    values: dict = {}
    if "url" in changes:
        addresses.check_url(changes["url"], settings.allow_private)
        values["url"] = changes["url"]
    if "events" in changes:
        values["events"] = json.dumps(checked_events(changes["events"]))
    if "description" in changes:
        values["description"] = changes["description"]
    now = utcnow()
    with atomic() as session:
        row = _row(session, endpoint_id, lock=True)
        if "disabled" in changes and changes["disabled"] != (row.disabled_at is not None):
            values.update(disabled_at=now, disabled_reason="disabled by an administrator") if changes["disabled"] \
                else values.update(disabled_at=None, disabled_reason=None, failing_since=None)
        if values:
            session.execute(update(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id).values(**values, updated_at=now))
            record_admin_action(session, actor_user_id=actor_user_id, action="webhook.changed",
                                 details={"endpoint_id": endpoint_id, **changes})
        return public(_row(session, endpoint_id))


def delete_endpoint(endpoint_id: int, *, actor_user_id: int) -> None:
    """The endpoint and its deliveries (the events stay in the outbox)."""
    with atomic() as session:
        row = _row(session, endpoint_id, lock=True)
        session.execute(delete(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id))
        record_admin_action(session, actor_user_id=actor_user_id, action="webhook.deleted",
                             details={"endpoint_id": endpoint_id, "url": row.url})


def public(row) -> dict:
    return {"id": row.id, "url": row.url, "events": json.loads(row.events), "description": row.description,
            "created_at": row.created_at, "updated_at": row.updated_at, "disabled": row.disabled_at is not None,
            "disabled_at": row.disabled_at, "disabled_reason": row.disabled_reason,
            "failing_since": row.failing_since}


def _row(session, endpoint_id: int, lock: bool = False):
    query = select(ENDPOINTS).where(ENDPOINTS.c.id == endpoint_id)
    row = session.execute(query.with_for_update() if lock else query).one_or_none()
    if row is None:
        raise UnknownEndpoint(f"no webhook endpoint {endpoint_id}")
    return row
