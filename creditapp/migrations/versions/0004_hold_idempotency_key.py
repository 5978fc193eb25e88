"""holds record the Idempotency-Key they were taken for

Revision ID: 0004_hold_idempotency_key
Revises: 0003_revoked_sessions
Create Date: 2026-11-24

`flask credits verify` reports two settled holds for one user and key (one request charged twice).
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_hold_idempotency_key"
down_revision = "0003_revoked_sessions"
branch_labels = None
depends_on = None

HAS_KEY = sa.text("idempotency_key IS NOT NULL")


def upgrade():
    # A plain ALTER on both databases (no batch copy of the table).
    op.add_column("credit_holds", sa.Column("idempotency_key", sa.String(length=255), nullable=True))
    op.create_index(
        "ix_credit_holds_user_id_idempotency_key", "credit_holds", ["user_id", "idempotency_key"],
        postgresql_where=HAS_KEY, sqlite_where=HAS_KEY,
    )


def downgrade():
    op.drop_index("ix_credit_holds_user_id_idempotency_key", table_name="credit_holds")
    op.drop_column("credit_holds", "idempotency_key")
