"""refunds of charges and voids of lots

Revision ID: 0007_refunds_and_voids
Revises: 0006_credit_lots
Create Date: 2026-11-24

A settled hold (a charge) can be refunded, all or in part, to the lots it came from; a lot can be
voided. Holds and receipts count what was refunded, and the ledger gains the `refund` and `void`
kinds.
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_refunds_and_voids"
down_revision = "0006_credit_lots"
branch_labels = None
depends_on = None

KINDS_BEFORE = "kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge')"
KINDS_AFTER = "kind IN ('grant', 'hold', 'settle', 'release', 'expire', 'charge', 'refund', 'void')"


def upgrade():
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, column, bound in (("credit_holds", "refunded_amount", "settled_amount"),
                                 ("credit_hold_lots", "refunded", "settled")):
        check = f"{column} >= 0 AND {column} <= {bound}"
        if sqlite:  # a plain ALTER keeps the table (and the ledger's triggers) as they are
            op.execute(f"ALTER TABLE {table} ADD COLUMN {column} BIGINT NOT NULL DEFAULT 0 "
                       f"CONSTRAINT ck_{table}_{column}_in_range CHECK ({check})")
        else:
            op.add_column(table, sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"))
            op.create_check_constraint(op.f(f"ck_{table}_{column}_in_range"), table, check)
    _ledger_kinds(KINDS_AFTER)


def downgrade():
    used = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM ledger_entries WHERE kind IN ('refund', 'void')")).scalar_one()
    if used:
        raise RuntimeError(f"{used} ledger row(s) record refunds or voids, which the schema before "
                           "0007 cannot hold; the ledger is append-only, so this cannot be undone.")
    _ledger_kinds(KINDS_BEFORE)
    for table, column in (("credit_hold_lots", "refunded"), ("credit_holds", "refunded_amount")):
        if op.get_bind().dialect.name == "sqlite":
            # The CHECK was declared on the column, so SQLite drops both in place (no table copy,
            # which other tables' foreign keys would refuse).
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)


def _ledger_kinds(check: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", type_="check")
        op.create_check_constraint(op.f("ck_ledger_entries_kind_known"), "ledger_entries", check)
        return
    # SQLite cannot change a CHECK: the table is copied with the new one, which drops its
    # triggers, so the append-only triggers are made again.
    with op.batch_alter_table("ledger_entries", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_ledger_entries_kind_known"), type_="check")
        batch.create_check_constraint(op.f("ck_ledger_entries_kind_known"), sa.text(check))
    for event in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} ON ledger_entries "
            "BEGIN SELECT RAISE(ABORT, 'ledger_entries is append-only'); END"
        )
