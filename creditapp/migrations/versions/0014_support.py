"""support: disabled accounts and the admin actions log

Revision ID: 0014_support
Revises: 0013_usage
Create Date: 2026-12-07

`users.disabled` refuses an account's tokens and keys from the commit that sets it, on every
worker and host: it is read in the statement that already checks the caller (the session check,
the key lookup, and on PostgreSQL the balance read, which folds the session check in). Every
administrator's action writes an `admin_actions` row in the action's own transaction.
"""
import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0014_support"
down_revision = "0013_usage"
branch_labels = None
depends_on = None

REVOKED = """    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
        outcome := 'revoked'; RETURN;
    END IF;
"""
# Beside the session check: a token of a disabled account reads no balance, at no extra round
# trip. `p_sid` is given only for a login token, whose wallet is its user's (same id).
DISABLED = """    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM users WHERE id = p_wallet AND disabled) THEN
        outcome := 'disabled'; RETURN;
    END IF;
"""


def _balance_0010() -> str:
    """creditapp_balance as 0010 made it (the last function it creates)."""
    path = Path(__file__).with_name("0010_wallets.py")
    spec = importlib.util.spec_from_file_location("creditapp_migration_0010", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    balance = module.FUNCTIONS[module.FUNCTIONS.index("CREATE OR REPLACE FUNCTION creditapp_balance("):]
    assert balance.count(REVOKED) == 1
    return balance


def upgrade():
    # In place, not a batch copy: a copy would lose the index on lower(username) and meet the
    # foreign keys that point at users.
    op.add_column("users", sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "admin_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_user_id", sa.Integer(),
                  sa.ForeignKey("users.id", name="fk_admin_actions_actor_user_id_users"), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_user_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.Text(), nullable=False),
    )
    # The support view reads one account's actions; the list pages by id, newest first.
    op.create_index("ix_admin_actions_target_user_id_id", "admin_actions", ["target_user_id", "id"])
    # A wallet's charges newest first, for support, without reading every hold of the wallet.
    op.create_index("ix_credit_holds_wallet_id_id", "credit_holds", ["wallet_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_balance_0010().replace(REVOKED, REVOKED + DISABLED))


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_balance_0010())
    op.drop_index("ix_credit_holds_wallet_id_id", table_name="credit_holds")
    op.drop_index("ix_admin_actions_target_user_id_id", table_name="admin_actions")
    op.drop_table("admin_actions")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE users DROP COLUMN disabled")
    else:
        op.drop_column("users", "disabled")
