"""purchases: packs bought through a payment provider, its events' inbox, the test provider's checkouts

Revision ID: 0011_purchases
Revises: 0010_wallets
Create Date: 2026-12-03

A purchase's only effect on money is one lot (reference `purchase:<id>`), granted by the ledger
in the transaction that marks it paid. Every verified provider event is stored in
`payment_events` (unique per provider and event id) before it is applied.
"""
import sqlalchemy as sa
from alembic import op

revision = "0011_purchases"
down_revision = "0010_wallets"
branch_labels = None
depends_on = None

STATUSES = ("open", "processing", "paid", "failed", "expired", "partially_refunded", "refunded", "disputed",
            "dispute_lost")
INBOX_STATUSES = ("received", "applied", "deferred", "unmatched", "ignored")
HAS_INTENT = sa.text("payment_intent IS NOT NULL")
HAS_CHECKOUT = sa.text("checkout_id IS NOT NULL")
UNMATCHED = sa.text("status = 'unmatched'")


def _known(column: str, values) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade():
    when = sa.DateTime(timezone=True)
    op.create_table(
        "purchases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id", name="fk_purchases_wallet_id_wallets"),
                  nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", name="fk_purchases_user_id_users"), nullable=False),
        sa.Column("pack", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("credit_type", sa.String(32), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expires_in_days", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("checkout_id", sa.String(255), nullable=True),
        sa.Column("checkout_url", sa.Text(), nullable=True),
        sa.Column("payment_intent", sa.String(255), nullable=True),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("paid_at", when, nullable=True),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("lot_id", sa.BigInteger(), nullable=True),
        sa.Column("refunded", sa.BigInteger(), nullable=False),
        sa.Column("credits_taken_back", sa.BigInteger(), nullable=False),
        sa.Column("failure_reason", sa.String(64), nullable=True),
        sa.CheckConstraint(_known("status", STATUSES), name="ck_purchases_status_known"),
        sa.CheckConstraint("credit_type IN ('generation_credits', 'ai_tokens')", name="ck_purchases_credit_type_known"),
        sa.CheckConstraint("credits > 0", name="ck_purchases_credits_positive"),
        sa.CheckConstraint("price > 0", name="ck_purchases_price_positive"),
        sa.CheckConstraint("refunded >= 0 AND refunded <= price", name="ck_purchases_refunded_in_range"),
        sa.CheckConstraint("credits_taken_back >= 0 AND credits_taken_back <= credits",
                           name="ck_purchases_taken_back_in_range"),
    )
    op.create_index("ix_purchases_user_id_id", "purchases", ["user_id", "id"])
    op.create_index("ix_purchases_status_created_at", "purchases", ["status", "created_at"])
    op.create_index("ix_purchases_payment_intent", "purchases", ["payment_intent"], unique=True,
                    postgresql_where=HAS_INTENT, sqlite_where=HAS_INTENT)
    op.create_index("ix_purchases_checkout_id", "purchases", ["checkout_id"], unique=True,
                    postgresql_where=HAS_CHECKOUT, sqlite_where=HAS_CHECKOUT)
    op.create_table(
        "payment_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", when, nullable=False),
        sa.Column("received_at", when, nullable=False),
        sa.Column("applied_at", when, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(64), nullable=True),
        sa.Column("purchase_id", sa.BigInteger(), nullable=True),
        sa.Column("payment_intent", sa.String(255), nullable=True),
        sa.Column("facts", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.CheckConstraint(_known("status", INBOX_STATUSES), name="ck_payment_events_status_known"),
    )
    op.create_index("uq_payment_events_provider_event_id", "payment_events", ["provider", "event_id"], unique=True)
    op.create_index("ix_payment_events_purchase_id_status", "payment_events", ["purchase_id", "status"])
    op.create_index("ix_payment_events_payment_intent", "payment_events", ["payment_intent"],
                    postgresql_where=UNMATCHED, sqlite_where=UNMATCHED)
    op.create_index("ix_payment_events_status_received_at", "payment_events", ["status", "received_at"])
    op.create_table(
        "test_checkouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(255), nullable=False, unique=True),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payment_status", sa.String(16), nullable=False),
        sa.Column("payment_intent", sa.String(64), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("success_url", sa.Text(), nullable=False),
        sa.Column("cancel_url", sa.Text(), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when, nullable=False),
    )


def downgrade():
    op.drop_table("test_checkouts")
    op.drop_table("payment_events")
    op.drop_table("purchases")
