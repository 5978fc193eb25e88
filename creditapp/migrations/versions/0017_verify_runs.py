"""verify runs: what each `credits verify` found, for the dashboard

Revision ID: 0017_verify_runs
Revises: 0016_alerts
Create Date: 2026-12-07

The CLI and the dashboard's "Run verify now" button both store a row; the dashboard shows the
latest (when, ok or how many discrepancies, the first of them).
"""
import sqlalchemy as sa
from alembic import op

revision = "0017_verify_runs"
down_revision = "0016_alerts"
branch_labels = None
depends_on = None


def upgrade():
    when = sa.DateTime(timezone=True)
    op.create_table(
        "verify_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("started_at", when, nullable=False),
        sa.Column("finished_at", when, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("discrepancies", sa.Integer(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("discrepancies >= 0", name="ck_verify_runs_discrepancies_not_negative"),
        sa.CheckConstraint("via IN ('cli', 'dashboard')", name="ck_verify_runs_via_known"),
        sa.CheckConstraint("ok = (discrepancies = 0)", name="ck_verify_runs_ok_means_none_found"),
    )
    op.create_index("ix_verify_runs_finished_at", "verify_runs", ["finished_at"])


def downgrade():
    op.drop_index("ix_verify_runs_finished_at", table_name="verify_runs")
    op.drop_table("verify_runs")
