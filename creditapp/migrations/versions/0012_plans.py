"""plans: subscriptions to a plan, their invoices, and the test provider's subscriptions

Revision ID: 0012_plans
Revises: 0011_purchases
Create Date: 2026-12-03

A plan's allowance is the ledger's (recurring grants, lots of source `plan` and `rollover`); these
rows say which plan a wallet is on, what the provider billed for it, and what it said. Provider
events about subscriptions and invoices go through the same inbox as purchases'
(`payment_events`, which now names the subscription an event is about).
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_plans"
down_revision = "0011_purchases"
branch_labels = None
depends_on = None

STATUSES = ("incomplete", "active", "past_due", "canceled", "expired")
CURRENT = sa.text("status IN ('active', 'past_due')")
HAS_CHECKOUT = sa.text("checkout_id IS NOT NULL")
HAS_PROVIDER_SUBSCRIPTION = sa.text("provider_subscription IS NOT NULL")
UNMATCHED = sa.text("status = 'unmatched'")


def _id():
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True)


def upgrade():
    when = sa.DateTime(timezone=True)
    op.create_table(
        "subscriptions",
        _id(),
        sa.Column("wallet_id", sa.BigInteger(), sa.ForeignKey("wallets.id", name="fk_subscriptions_wallet_id_wallets"),
                  nullable=False),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id", name="fk_subscriptions_user_id_users"),
                  nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("provider", sa.String(16), nullable=True),
        sa.Column("checkout_id", sa.String(255), nullable=True),
        sa.Column("checkout_url", sa.Text(), nullable=True),
        sa.Column("provider_subscription", sa.String(255), nullable=True),
        sa.Column("anchor", when, nullable=True),
        sa.Column("period_start", when, nullable=True),
        sa.Column("period_end", when, nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.Column("ended_at", when, nullable=True),
        sa.Column("provider_updated_at", when, nullable=True),
        sa.CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})",
                           name="ck_subscriptions_status_known"),
    )
    op.create_index("uq_subscriptions_current_wallet", "subscriptions", ["wallet_id"], unique=True,
                    postgresql_where=CURRENT, sqlite_where=CURRENT)
    op.create_index("ix_subscriptions_user_id_id", "subscriptions", ["user_id", "id"])
    op.create_index("ix_subscriptions_checkout_id", "subscriptions", ["checkout_id"], unique=True,
                    postgresql_where=HAS_CHECKOUT, sqlite_where=HAS_CHECKOUT)
    op.create_index("ix_subscriptions_provider_subscription", "subscriptions", ["provider_subscription"],
                    unique=True, postgresql_where=HAS_PROVIDER_SUBSCRIPTION, sqlite_where=HAS_PROVIDER_SUBSCRIPTION)
    op.create_table(
        "plan_invoices",
        _id(),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("invoice_id", sa.String(255), nullable=False),
        sa.Column("subscription_id", sa.BigInteger(), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("billing_reason", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("period_start", when, nullable=True),
        sa.Column("period_end", when, nullable=True),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
        sa.CheckConstraint("status IN ('paid', 'failed')", name="ck_plan_invoices_status_known"),
    )
    op.create_index("uq_plan_invoices_provider_invoice_id", "plan_invoices", ["provider", "invoice_id"], unique=True)
    op.create_index("ix_plan_invoices_subscription_id", "plan_invoices", ["subscription_id"])
    with op.batch_alter_table("payment_events") as batch:
        batch.add_column(sa.Column("subscription_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("provider_subscription", sa.String(255), nullable=True))
    op.create_index("ix_payment_events_subscription_id_status", "payment_events", ["subscription_id", "status"])
    op.create_index("ix_payment_events_provider_subscription", "payment_events", ["provider_subscription"],
                    postgresql_where=UNMATCHED, sqlite_where=UNMATCHED)
    with op.batch_alter_table("test_checkouts") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="payment"))
        batch.add_column(sa.Column("subscription_json", sa.Text(), nullable=True))
    op.create_table(
        "test_subscriptions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("checkout_id", sa.String(64), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("plan", sa.String(64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("period", sa.String(8), nullable=False),
        sa.Column("period_seconds", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("period_start", when, nullable=False),
        sa.Column("period_end", when, nullable=False),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False),
        sa.Column("fail_renewals", sa.Boolean(), nullable=False),
        sa.Column("open_invoice", sa.String(64), nullable=True),
        sa.Column("period_paid", sa.BigInteger(), nullable=True),
        sa.Column("created_at", when, nullable=False),
    )


def downgrade():
    op.drop_table("test_subscriptions")
    with op.batch_alter_table("test_checkouts") as batch:
        batch.drop_column("subscription_json")
        batch.drop_column("mode")
    op.drop_index("ix_payment_events_provider_subscription", table_name="payment_events")
    op.drop_index("ix_payment_events_subscription_id_status", table_name="payment_events")
    with op.batch_alter_table("payment_events") as batch:
        batch.drop_column("provider_subscription")
        batch.drop_column("subscription_id")
    op.drop_table("plan_invoices")
    op.drop_table("subscriptions")
