"""jobs: paid work that outlives its request

Revision ID: 0009_jobs
Revises: 0008_ledger_procedures
Create Date: 2026-11-24

One row per job (`Prefer: respond-async`), bound to the hold taken at submit. The broker carries
only job ids; this row is what decides a job's state.
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_jobs"
down_revision = "0008_ledger_procedures"
branch_labels = None
depends_on = None

UNFINISHED = sa.text("status IN ('queued', 'running')")


def upgrade():
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("feature", sa.String(length=64), nullable=False),
        sa.Column("work", sa.String(length=255), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("credit_type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(length=32), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("charged", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'expired')",
                           name=op.f("ck_jobs_status_known")),
        sa.CheckConstraint("credit_type IN ('generation_credits', 'ai_tokens')",
                           name=op.f("ck_jobs_credit_type_known")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_jobs_attempts_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users")),
        sa.ForeignKeyConstraint(["hold_id"], ["credit_holds.id"], name=op.f("fk_jobs_hold_id_credit_holds")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("hold_id", name=op.f("uq_jobs_hold_id")),
    )
    op.create_index("ix_jobs_user_id_created_at", "jobs", ["user_id", "created_at", "id"])
    op.create_index("ix_jobs_unfinished", "jobs", ["status", "created_at"],
                    postgresql_where=UNFINISHED, sqlite_where=UNFINISHED)


def downgrade():
    op.drop_index("ix_jobs_unfinished", table_name="jobs")
    op.drop_index("ix_jobs_user_id_created_at", table_name="jobs")
    op.drop_table("jobs")
