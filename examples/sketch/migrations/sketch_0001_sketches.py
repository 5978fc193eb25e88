"""The sketches table: the app's own, a branch of its own beside creditapp's migrations.

Revision ID: sketch_0001
Depends on: creditapp's 0001_initial_ledger (the users table)
"""
import sqlalchemy as sa
from alembic import op

revision = "sketch_0001"
down_revision = None
branch_labels = ("sketch",)
depends_on = "0001_initial_ledger"


def upgrade():
    op.create_table(
        "sketches",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", name="fk_sketches_user_id"), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("image_url", sa.Text, nullable=False),
        sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_sketches_user_id", "sketches", ["user_id"])


def downgrade():
    op.drop_table("sketches")
