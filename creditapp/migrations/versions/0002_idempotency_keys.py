"""idempotency keys for paid requests, and unique grant references

Revision ID: 0002_idempotency_keys
Revises: 0001_initial_ledger
Create Date: 2026-11-24

"""
import sqlalchemy as sa
from alembic import op

revision = "0002_idempotency_keys"
down_revision = "0001_initial_ledger"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
HAS_REFERENCE = sa.text("reference IS NOT NULL")


def upgrade():
    op.create_table(
        "idempotency_keys",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_id", BigId, nullable=True),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('in_flight', 'completed')", name=op.f("ck_idempotency_keys_status_known")),
        sa.ForeignKeyConstraint(["hold_id"], ["credit_holds.id"], name=op.f("fk_idempotency_keys_hold_id_credit_holds")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_idempotency_keys_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("user_id", "key", name="uq_idempotency_keys_user_id_key"),
    )
    op.create_index("ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"])
    # Adding a nullable column is a plain ALTER on both databases, so the append-only
    # triggers on ledger_entries stay in place (a batch copy would drop them on SQLite).
    op.add_column("ledger_entries", sa.Column("reference", sa.String(length=255), nullable=True))
    op.create_index(
        "uq_ledger_entries_user_id_reference", "ledger_entries", ["user_id", "reference"], unique=True,
        postgresql_where=HAS_REFERENCE, sqlite_where=HAS_REFERENCE,
    )


def downgrade():
    op.drop_index("uq_ledger_entries_user_id_reference", table_name="ledger_entries")
    op.drop_column("ledger_entries", "reference")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
