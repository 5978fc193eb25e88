"""credit lots: every grant is a lot; holds remember the lots they drew from

Revision ID: 0006_credit_lots
Revises: 0005_usernames_case_insensitive
Create Date: 2026-11-24

Every existing account becomes one lot that never expires (source `migration`) holding its
available plus held credits, and each open hold gets a receipt on that lot, so `credits verify`
is clean right after the upgrade. The downgrade drops lots and receipts; it refuses to run while
any lot could expire (that rule would be lost).
"""
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0006_credit_lots"
down_revision = "0005_usernames_case_insensitive"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CREDIT_TYPE_KNOWN = "credit_type IN ('generation_credits', 'ai_tokens')"
SPENDABLE = sa.text("remaining > held")
EXPIRING = sa.text("remaining > held AND expires_at IS NOT NULL")


def upgrade():
    op.create_table(
        "credit_lots",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credit_type", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=255), nullable=True),
        sa.Column("reference", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(CREDIT_TYPE_KNOWN, name=op.f("ck_credit_lots_credit_type_known")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_lots_amount_positive")),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name=op.f("ck_credit_lots_remaining_in_range")),
        sa.CheckConstraint("held >= 0 AND held <= remaining", name=op.f("ck_credit_lots_held_in_range")),
        sa.CheckConstraint("priority >= 0 AND priority <= 100", name=op.f("ck_credit_lots_priority_in_range")),
        sa.CheckConstraint("source IN ('signup', 'admin', 'migration', 'purchase', 'plan')",
                           name=op.f("ck_credit_lots_source_known")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_credit_lots_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_lots")),
    )
    op.create_index(
        "ix_credit_lots_spending", "credit_lots",
        ["user_id", "credit_type", "priority", "expires_at", "created_at", "id"],
        postgresql_where=SPENDABLE, sqlite_where=SPENDABLE,
    )
    op.create_index("ix_credit_lots_expiry", "credit_lots", ["user_id", "expires_at"],
                    postgresql_where=EXPIRING, sqlite_where=EXPIRING)
    op.create_table(
        "credit_hold_lots",
        sa.Column("hold_id", BigId, nullable=False),
        sa.Column("lot_id", BigId, nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("settled", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_credit_hold_lots_amount_positive")),
        sa.CheckConstraint("settled >= 0 AND settled <= amount", name=op.f("ck_credit_hold_lots_settled_in_range")),
        sa.ForeignKeyConstraint(["hold_id"], ["credit_holds.id"], name=op.f("fk_credit_hold_lots_hold_id_credit_holds")),
        sa.ForeignKeyConstraint(["lot_id"], ["credit_lots.id"], name=op.f("fk_credit_hold_lots_lot_id_credit_lots")),
        sa.PrimaryKeyConstraint("hold_id", "lot_id", name=op.f("pk_credit_hold_lots")),
    )
    # A plain ALTER on both databases (a batch copy would drop the append-only triggers on
    # SQLite, whose ALTER can add a column with REFERENCES but which Alembic will not emit).
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE ledger_entries ADD COLUMN lot_id INTEGER REFERENCES credit_lots (id)")
    else:
        op.add_column("ledger_entries", sa.Column(
            "lot_id", BigId, sa.ForeignKey("credit_lots.id", name="fk_ledger_entries_lot_id_credit_lots"),
            nullable=True))
    op.create_index("ix_ledger_entries_lot_id", "ledger_entries", ["lot_id"])
    _one_lot_per_account()


def _one_lot_per_account():
    bind = op.get_bind()
    now = datetime.now(timezone.utc)
    if bind.dialect.name == "sqlite":
        now = now.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    accounts = bind.execute(sa.text(
        "SELECT user_id, credit_type, available, held FROM credit_accounts "
        "WHERE available + held > 0 ORDER BY user_id, credit_type")).all()
    for user_id, credit_type, available, held in accounts:
        lot_id = bind.execute(sa.text(
            "INSERT INTO credit_lots (user_id, credit_type, amount, remaining, held, priority, "
            "expires_at, source, reason, created_at) VALUES (:u, :t, :n, :n, :h, 50, NULL, "
            "'migration', 'balance before lots', :now) RETURNING id"),
            {"u": user_id, "t": credit_type, "n": available + held, "h": held, "now": now}).scalar_one()
        bind.execute(sa.text(
            "INSERT INTO credit_hold_lots (hold_id, lot_id, amount, settled) "
            "SELECT id, :lot, amount, 0 FROM credit_holds "
            "WHERE user_id = :u AND credit_type = :t AND status = 'open'"),
            {"lot": lot_id, "u": user_id, "t": credit_type})


def downgrade():
    expiring = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM credit_lots WHERE expires_at IS NOT NULL AND remaining > 0")).scalar_one()
    if expiring:
        raise RuntimeError(
            f"{expiring} lot(s) can still expire; the schema before lots cannot express that. "
            "Downgrade only a database whose lots never expire."
        )
    op.drop_index("ix_ledger_entries_lot_id", table_name="ledger_entries")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column that a foreign key uses: the table is copied without it,
        # which drops its triggers, so the append-only triggers are made again.
        with op.batch_alter_table("ledger_entries", recreate="always") as batch:
            batch.drop_column("lot_id")
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} ON ledger_entries "
                "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"
            )
    else:
        op.drop_column("ledger_entries", "lot_id")
    op.drop_table("credit_hold_lots")
    op.drop_index("ix_credit_lots_expiry", table_name="credit_lots")
    op.drop_index("ix_credit_lots_spending", table_name="credit_lots")
    op.drop_table("credit_lots")
