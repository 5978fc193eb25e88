"""webhooks: the outbox of events, the endpoints subscribed to them, deliveries and attempts

Revision ID: 0015_webhooks
Revises: 0014_support
Create Date: 2026-12-07

`webhook_events` is an outbox: a row is written in the transaction of the change it tells about,
with only `type`, `payload` and `created_at` needed (so a PL/pgSQL function can emit one too).
SQLite gets AUTOINCREMENT there, so an event's id (its webhook-id) is never reused.
"""
import sqlalchemy as sa
from alembic import op

revision = "0015_webhooks"
down_revision = "0014_support"
branch_labels = None
depends_on = None

UNDISPATCHED = sa.text("dispatched_at IS NULL")
PENDING = sa.text("status = 'pending'")


def _id():
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def upgrade():
    when = sa.DateTime(timezone=True)
    op.create_table(
        "webhook_events",
        _id(),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("dispatched_at", when, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_events_undispatched", "webhook_events", ["id"],
                    postgresql_where=UNDISPATCHED, sqlite_where=UNDISPATCHED)
    op.create_table(
        "webhook_endpoints",
        _id(),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("description", sa.String(500), nullable=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("failing_since", when, nullable=True),
        sa.Column("disabled_at", when, nullable=True),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webhook_deliveries",
        _id(),
        sa.Column("event_id", sa.BigInteger(),
                  sa.ForeignKey("webhook_events.id", name="fk_webhook_deliveries_event_id_webhook_events"),
                  nullable=False),
        sa.Column("endpoint_id", sa.BigInteger(),
                  sa.ForeignKey("webhook_endpoints.id", name="fk_webhook_deliveries_endpoint_id_webhook_endpoints",
                                ondelete="CASCADE"),
                  nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", when, nullable=True),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("lease_expires_at", when, nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("delivered_at", when, nullable=True),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed', 'skipped')",
                           name="ck_webhook_deliveries_status_known"),
        sa.CheckConstraint("attempts >= 0", name="ck_webhook_deliveries_attempts_not_negative"),
        sqlite_autoincrement=True,
    )
    op.create_index("uq_webhook_deliveries_event_id_endpoint_id", "webhook_deliveries", ["event_id", "endpoint_id"],
                    unique=True)
    op.create_index("ix_webhook_deliveries_endpoint_id_id", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["next_attempt_at"],
                    postgresql_where=PENDING, sqlite_where=PENDING)
    op.create_table(
        "webhook_attempts",
        _id(),
        sa.Column("delivery_id", sa.BigInteger(),
                  sa.ForeignKey("webhook_deliveries.id", name="fk_webhook_attempts_delivery_id_webhook_deliveries",
                                ondelete="CASCADE"),
                  nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", when, nullable=False),
        sa.Column("finished_at", when, nullable=True),
        sa.Column("response_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.CheckConstraint("status IN ('delivering', 'succeeded', 'failed', 'lost')",
                           name="ck_webhook_attempts_status_known"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_attempts_delivery_id_id", "webhook_attempts", ["delivery_id", "id"])


def downgrade():
    op.drop_table("webhook_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_table("webhook_events")
