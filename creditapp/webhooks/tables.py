"""The outbox and its deliveries. An event row is written by whatever changes state (a purchase
paid, a job finished, a PL/pgSQL function), in that change's own transaction; everything after
that (fan-out, deliveries, attempts) is this package's."""
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ..ledger.tables import Base, BigId, UTCDateTime

DELIVERY_STATUSES = ("pending", "succeeded", "failed", "skipped")
ATTEMPT_STATUSES = ("delivering", "succeeded", "failed", "lost")
UNDISPATCHED = text("dispatched_at IS NULL")
PENDING = text("status = 'pending'")


class WebhookEvent(Base):
    """One event, as emitted. `payload` is its `data` (JSON); `dispatched_at` is set once it has
    been fanned out into deliveries. Only `type`, `payload` and `created_at` are needed to emit
    one, so that SQL (a PL/pgSQL function) can emit too."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("ix_webhook_events_undispatched", "id", postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED),
        # AUTOINCREMENT: SQLite never reuses an id (a webhook-id must never mean two events).
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookEndpoint(Base):
    """A URL subscribed to event types (`events`, JSON list). `secret` is kept as given out
    (whsec_...): signing needs it. `failing_since` is the first failed attempt since the last
    success; an endpoint failing for long enough gets `disabled_at` and a reason."""

    __tablename__ = "webhook_endpoints"
    # SQLite would give a deleted endpoint's id to the next one: a stale PATCH, DELETE or retry
    # aimed at the old one must not act on it.
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookDelivery(Base):
    """One event for one endpoint. `pending` until an attempt succeeds (`succeeded`) or the retry
    schedule runs out (`failed`); `skipped` when its endpoint was disabled before it got through.
    An attempt runs under a `lease`: a worker killed mid-attempt leaves it to the next claim once
    `lease_expires_at` has passed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in DELIVERY_STATUSES)})", name="status_known"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index("uq_webhook_deliveries_event_id_endpoint_id", "event_id", "endpoint_id", unique=True),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_due", "next_attempt_at", postgresql_where=PENDING, sqlite_where=PENDING),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("webhook_events.id"))
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebhookAttempt(Base):
    """One POST of a delivery: `delivering` while it runs, then `succeeded` (a 2xx), `failed`
    (another status, a timeout, a refused address), or `lost` (its worker died)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in ATTEMPT_STATUSES)})", name="status_known"),
        Index("ix_webhook_attempts_delivery_id_id", "delivery_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    lease: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    response_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)


EVENTS = WebhookEvent.__table__
ENDPOINTS = WebhookEndpoint.__table__
DELIVERIES = WebhookDelivery.__table__
ATTEMPTS = WebhookAttempt.__table__
