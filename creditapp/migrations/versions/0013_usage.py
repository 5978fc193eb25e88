"""usage reports: the closes and refunds of any part of an hour can be found by time

Revision ID: 0013_usage
Revises: 0012_plans
Create Date: 2026-12-07

A usage report reads whole hours from the hourly rollup (`credit_usage`) and the parts of hours
it cuts (a range from 10:17, a day that starts at 18:30 UTC in +05:30) from the holds closed and
the refund rows written in them: these two partial indexes find them without a scan. Open holds
and every row that is not a refund stay out of them.
"""
import sqlalchemy as sa
from alembic import op

revision = "0013_usage"
down_revision = "0012_plans"
branch_labels = None
depends_on = None

CLOSED = sa.text("closed_at IS NOT NULL")
REFUND = sa.text("kind = 'refund'")


def upgrade():
    op.create_index("ix_credit_holds_closed_at", "credit_holds", ["closed_at"],
                    postgresql_where=CLOSED, sqlite_where=CLOSED)
    op.create_index("ix_ledger_entries_refund_created_at", "ledger_entries", ["created_at"],
                    postgresql_where=REFUND, sqlite_where=REFUND)


def downgrade():
    op.drop_index("ix_ledger_entries_refund_created_at", table_name="ledger_entries")
    op.drop_index("ix_credit_holds_closed_at", table_name="credit_holds")
