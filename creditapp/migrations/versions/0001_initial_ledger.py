"""users, credit accounts, holds and the append-only ledger

Revision ID: 0001_initial_ledger
Revises:
Create Date: 2026-11-24

"""
import sqlalchemy as sa
from alembic import op

revision = "0001_initial_ledger"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CREDIT_TYPE_KNOWN = "credit_type IN ('generation_credits', 'ai_tokens')"
OPEN = sa.text("status = 'open'")


def upgrade():
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "credit_accounts",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credit_type", sa.String(length=32), nullable=False),
        sa.Column("available", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_accounts_credit_type_known")),
        sa.CheckConstraint("available >= 0", name=op.f("ck_credit_accounts_available_not_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_credit_accounts_held_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_accounts_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "credit_type", name=op.f("pk_credit_accounts")),
    )
    op.create_table(
        "credit_holds",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credit_type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("settled_amount", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_holds_credit_type_known")),
        sa.CheckConstraint(
            "status IN ('open', 'settled', 'released', 'expired')",
            name=op.f("ck_credit_holds_status_known"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_holds_amount_positive")),
        sa.CheckConstraint("settled_amount >= 0", name=op.f("ck_credit_holds_settled_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_holds_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_holds")),
    )
    op.create_index(
        "ix_credit_holds_open", "credit_holds", ["user_id", "credit_type", "expires_at"],
        postgresql_where=OPEN, sqlite_where=OPEN,
    )
    op.create_index(
        "ix_credit_holds_open_expiry", "credit_holds", ["expires_at"],
        postgresql_where=OPEN, sqlite_where=OPEN,
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credit_type", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("held_change", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("held_after", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", BigId, nullable=True),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_ledger_entries_credit_type_known")),
        sa.CheckConstraint(
            "kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge')",
            name=op.f("ck_ledger_entries_kind_known"),
        ),
        sa.CheckConstraint("amount <> 0 OR held_change <> 0", name=op.f("ck_ledger_entries_changes_something")),
        sa.CheckConstraint("balance_after >= 0", name=op.f("ck_ledger_entries_balance_after_not_negative")),
        sa.CheckConstraint("held_after >= 0", name=op.f("ck_ledger_entries_held_after_not_negative")),
        sa.ForeignKeyConstraint(["hold_id"], ["credit_holds.id"], name=op.f("fk_ledger_entries_hold_id_credit_holds")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_ledger_entries_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
    )
    op.create_index("ix_ledger_entries_user_id_id", "ledger_entries", ["user_id", "id"])
    _create_append_only_triggers()


def downgrade():
    _drop_append_only_triggers()
    op.drop_index("ix_ledger_entries_user_id_id", table_name="ledger_entries")
    op.drop_table("ledger_entries")
    op.drop_index("ix_credit_holds_open_expiry", table_name="credit_holds")
    op.drop_index("ix_credit_holds_open", table_name="credit_holds")
    op.drop_table("credit_holds")
    op.drop_table("credit_accounts")
    op.drop_table("users")


def _create_append_only_triggers():
    """The ledger is evidence: the database itself refuses to change or delete a row."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            """
            CREATE FUNCTION ledger_entries_append_only() RETURNS trigger AS $$
            BEGIN
                RAISE EXCEPTION 'ledger_entries is append-only';
            END;
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            "CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries "
            "FOR EACH ROW EXECUTE FUNCTION ledger_entries_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} ON ledger_entries "
                "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"
            )


def _drop_append_only_triggers():
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION ledger_entries_append_only()")
    else:
        for event in ("update", "delete"):
            op.execute(f"DROP TRIGGER ledger_entries_no_{event}")
