"""support: disabled accounts and the admin actions log

Revision ID: 0014_support
Revises: 0012_plans
Create Date: 2026-12-07

`users.disabled` refuses an account's tokens and keys from the commit that sets it, on every
worker and host: it is read in the statement that already checks the caller (the session check,
the key lookup, and on PostgreSQL the balance read, which folds the session check in). Every
administrator's action writes an `admin_actions` row in the action's own transaction.
"""
import sqlalchemy as sa
from alembic import op

revision = "0014_support"
down_revision = "0012_plans"
branch_labels = None
depends_on = None

# creditapp_balance as 0010 made it, with the disabled check beside the session check: a token
# of a disabled account reads no balance, at no extra round trip. `p_sid` is given only for a
# login token, whose wallet is its user's (a user's wallet has the user's id).
DISABLED_CHECK = """
    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM users WHERE id = p_wallet AND disabled) THEN
        outcome := 'disabled'; RETURN;
    END IF;"""
BALANCE = """
CREATE OR REPLACE FUNCTION creditapp_balance(
    p_wallet bigint, p_sid text, p_expiring integer,
    OUT outcome text, OUT generation_credits bigint, OUT ai_tokens bigint, OUT expiring jsonb, OUT debt jsonb
) LANGUAGE plpgsql STABLE AS $$
DECLARE now_ timestamptz := creditapp_now();
BEGIN
    IF p_sid IS NOT NULL AND EXISTS (SELECT 1 FROM revoked_sessions WHERE sid = p_sid) THEN
        outcome := 'revoked'; RETURN;
    END IF;{disabled}
    IF EXISTS (SELECT 1 FROM wallets w WHERE w.id = p_wallet AND w.refill_due_at <= now_) THEN
        outcome := 'refill'; RETURN;
    END IF;
    SELECT s.generation_credits, s.ai_tokens INTO generation_credits, ai_tokens
    FROM creditapp_spendable(p_wallet, now_) s;
    IF generation_credits IS NULL AND ai_tokens IS NULL THEN
        outcome := 'unknown_wallet'; RETURN;
    END IF;
    SELECT coalesce(jsonb_object_agg(a.credit_type, a.debt), '{{}}') INTO debt
    FROM credit_accounts a WHERE a.wallet_id = p_wallet;
    SELECT coalesce(jsonb_agg(jsonb_build_object('credit_type', e.credit_type, 'amount', e.amount,
                                                 'expires_at', e.expires_at) ORDER BY e.expires_at, e.id), '[]')
    INTO expiring
    FROM (SELECT l.id, l.credit_type, l.remaining - l.held AS amount, l.expires_at FROM credit_lots l
          WHERE l.wallet_id = p_wallet AND l.remaining > l.held AND l.voided_at IS NULL AND l.frozen_at IS NULL
            AND l.expires_at > now_
          ORDER BY l.expires_at, l.id LIMIT p_expiring) e;
    outcome := 'ok';
END $$;
"""


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
        op.execute(BALANCE.format(disabled=DISABLED_CHECK))


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BALANCE.format(disabled=""))
    op.drop_index("ix_credit_holds_wallet_id_id", table_name="credit_holds")
    op.drop_index("ix_admin_actions_target_user_id_id", table_name="admin_actions")
    op.drop_table("admin_actions")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE users DROP COLUMN disabled")
    else:
        op.drop_column("users", "disabled")
