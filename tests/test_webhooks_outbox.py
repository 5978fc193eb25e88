"""The outbox: an event is one row written in the caller's transaction, there exactly when the
change it tells about committed."""
import json

import pytest
from sqlalchemy import select, text

from creditapp.extensions import db
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.webhooks import outbox
from creditapp.webhooks.tables import EVENTS


def events() -> list:
    with atomic(write=False) as session:
        return session.execute(select(EVENTS).order_by(EVENTS.c.id)).all()


def test_an_event_is_written_with_the_transaction_and_gone_with_its_rollback(app):
    now = utcnow()
    with atomic() as session:
        outbox.emit(session, "purchase.paid", {"purchase_id": 7, "at": now}, at=now)
    with pytest.raises(RuntimeError), atomic() as session:
        outbox.emit(session, "purchase.refunded", {"purchase_id": 7}, at=now)
        raise RuntimeError("the change failed")
    rows = events()
    assert [(row.type, row.dispatched_at) for row in rows] == [("purchase.paid", None)]
    assert json.loads(rows[0].payload) == {"purchase_id": 7, "at": now.isoformat().replace("+00:00", "Z")}


def test_an_unknown_type_is_refused_before_anything_is_written(app):
    with pytest.raises(outbox.UnknownEventType), atomic() as session:
        outbox.emit(session, "purchase.eaten", {}, at=utcnow())
    assert events() == []


def test_sql_can_emit_with_three_columns_and_ids_are_never_reused(app):
    """What a PL/pgSQL function does; SQLite's AUTOINCREMENT keeps a deleted id from coming back."""
    insert = text("INSERT INTO webhook_events (type, payload, created_at) VALUES ('balance.low', '{}', :at)")
    with db.engine.begin() as conn:
        conn.execute(insert, {"at": utcnow()})
        conn.execute(insert, {"at": utcnow()})
        conn.execute(text("DELETE FROM webhook_events WHERE id = (SELECT max(id) FROM webhook_events)"))
        conn.execute(insert, {"at": utcnow()})
    assert [row.id for row in events()] == [1, 3]


def test_dispatch_soon_runs_after_a_session_that_emitted_commits_and_not_after_a_rollback(app):
    calls = []
    previous = outbox.bind_dispatcher(lambda: calls.append("dispatch"))
    try:
        with pytest.raises(RuntimeError), atomic() as session:
            outbox.emit(session, "job.failed", {}, at=utcnow())
            raise RuntimeError("rolled back")
        with atomic() as session:
            session.execute(select(1))
        assert calls == []
        with atomic() as session:
            outbox.emit(session, "job.failed", {}, at=utcnow())
        assert calls == ["dispatch"]
    finally:
        outbox.bind_dispatcher(previous)
