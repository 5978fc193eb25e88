"""Migrations run on databases that hold data, on SQLite and PostgreSQL."""
import os

import pytest
from alembic.runtime.migration import MigrationContext
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from creditapp.extensions import db

from creditapp.testing import make_app
from creditapp.testing.databases import postgres_database

MIGRATIONS = os.path.join(os.path.dirname(__file__), "..", "creditapp", "migrations")


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
    else:
        with postgres_database() as url:
            yield url


def revision(app) -> str:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_usernames_that_differ_only_by_case_stop_the_upgrade_and_are_listed(empty_database, capfd):
    app = make_app(empty_database)
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="0004_hold_idempotency_key")
        with db.engine.begin() as conn:
            for name in ("Case", "case", "alice", "CASE", "bob"):
                conn.execute(text("INSERT INTO users (username, password_hash, is_admin, created_at) "
                                  "VALUES (:n, 'x', false, CURRENT_TIMESTAMP)"), {"n": name})
        with pytest.raises(SystemExit):  # `flask db upgrade` prints the error and exits 1
            upgrade(directory=MIGRATIONS)
        message = capfd.readouterr().err  # alembic.ini logs to standard error
        assert "'Case' (id 1), 'case' (id 2), 'CASE' (id 4)" in message
        assert "alice" not in message and "bob" not in message
        assert revision(app) == "0004_hold_idempotency_key"  # nothing changed
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE users SET username = 'case2' WHERE id = 2"))
            conn.execute(text("UPDATE users SET username = 'case3' WHERE id = 4"))
        upgrade(directory=MIGRATIONS)
        assert revision(app) == app.extensions["creditapp.migration_head"]
        with pytest.raises(Exception, match="(?i)unique"), db.engine.begin() as conn:
            conn.execute(text("INSERT INTO users (username, password_hash, is_admin, created_at) "
                              "VALUES ('ALICE', 'x', false, CURRENT_TIMESTAMP)"))
        db.engine.dispose()


def _fill_before_lots(conn) -> None:
    """What the ledger before lots wrote: alice has 10 granted, 2 spent by a settled hold and 3
    held by an open one; bob has 4 AI tokens and nothing else."""
    now = "CURRENT_TIMESTAMP"
    for name in ("alice", "bob"):
        conn.execute(text("INSERT INTO users (username, password_hash, is_admin, created_at) "
                          f"VALUES (:n, 'x', false, {now})"), {"n": name})
    conn.execute(text("INSERT INTO credit_accounts VALUES (1, 'generation_credits', 5, 3), (1, 'ai_tokens', 0, 0), "
                      "(2, 'generation_credits', 0, 0), (2, 'ai_tokens', 4, 0)"))
    conn.execute(text(
        "INSERT INTO credit_holds (user_id, credit_type, amount, settled_amount, status, created_at, expires_at, "
        f"closed_at) VALUES (1, 'generation_credits', 2, 2, 'settled', {now}, {now}, {now}), "
        f"(1, 'generation_credits', 3, 0, 'open', {now}, '2999-01-01 00:00:00', NULL)"))
    rows = [  # kind, user, type, amount, held_change, balance_after, held_after, hold
        ("grant", 1, "generation_credits", 10, 0, 10, 0, None),
        ("grant", 2, "ai_tokens", 4, 0, 4, 0, None),
        ("hold", 1, "generation_credits", -2, 2, 8, 2, 1),
        ("settle", 1, "generation_credits", 0, -2, 8, 0, 1),
        ("hold", 1, "generation_credits", -3, 3, 5, 3, 2),
    ]
    for kind, user, credit_type, amount, held_change, balance_after, held_after, hold in rows:
        conn.execute(text(
            "INSERT INTO ledger_entries (user_id, credit_type, kind, amount, held_change, balance_after, "
            f"held_after, hold_id, created_at) VALUES (:u, :t, :k, :a, :h, :b, :ha, :hold, {now})"),
            {"u": user, "t": credit_type, "k": kind, "a": amount, "h": held_change, "b": balance_after,
             "ha": held_after, "hold": hold})


def test_existing_balances_and_open_holds_become_lots_in_place(empty_database):
    from creditapp.ledger import CreditType, Hold, credit_service

    app = make_app(empty_database)
    with app.app_context():
        # 0003 was the head when lots were planned: the data is what the ledger wrote then.
        upgrade(directory=MIGRATIONS, revision="0003_revoked_sessions")
        with db.engine.begin() as conn:
            _fill_before_lots(conn)
        upgrade(directory=MIGRATIONS)
        assert credit_service.verify() == []
        with db.engine.connect() as conn:
            lots = conn.execute(text("SELECT wallet_id, credit_type, amount, remaining, held, source, expires_at "
                                     "FROM credit_lots ORDER BY wallet_id, credit_type")).all()
            receipts = conn.execute(text("SELECT hold_id, amount FROM credit_hold_lots")).all()
        assert [tuple(lot) for lot in lots] == [
            (1, "generation_credits", 8, 8, 3, "migration", None), (2, "ai_tokens", 4, 4, 0, "migration", None)]
        assert [tuple(r) for r in receipts] == [(2, 3)]
        # A charge made before lots has no receipt to give back to: a clear 409, not a 500.
        from creditapp.ledger import NotRefundable

        with pytest.raises(NotRefundable):
            credit_service.refund(1, reason="before lots")
        # The open hold settles from its receipt on the migrated lot.
        hold = Hold(hold_id=2, wallet_id=1, credit_type=CreditType.GENERATION_CREDITS, amount=3,
                           available_before=8, available_after=5, pending=1)
        credit_service.close(hold, succeeded=True)
        assert credit_service.get_credit_balance(1).generation_credits == 7
        assert credit_service.verify() == []
        downgrade(directory=MIGRATIONS, revision="0003_revoked_sessions")
        assert revision(app) == "0003_revoked_sessions"
        with db.engine.connect() as conn:  # the ledger before lots still adds up, and is still append-only
            assert conn.execute(text("SELECT sum(amount) FROM ledger_entries WHERE user_id = 1 "
                                     "AND credit_type = 'generation_credits'")).scalar_one() == 7
        with pytest.raises(Exception, match="append-only"), db.engine.begin() as conn:
            conn.execute(text("DELETE FROM ledger_entries"))
        upgrade(directory=MIGRATIONS)
        assert credit_service.verify() == []
        db.engine.dispose()


# --- an app's own migrations (MIGRATION_DIRS) beside creditapp's ---------------------------------

APP_REVISION = '''"""{table}: a table of the app's own

Revision ID: {revision}
"""
import sqlalchemy as sa
from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = {labels!r}
depends_on = {depends!r}


def upgrade():
    op.create_table({table!r}, sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table({table!r})
'''


def app_revision(directory, revision: str, table: str, down=None, labels=None, depends=None) -> None:
    (directory / f"{revision}.py").write_text(APP_REVISION.format(revision=revision, table=table, down=down,
                                                                  labels=labels, depends=depends))


def upgrade_heads(database_url: str, migration_dirs: list) -> None:
    app = make_app(database_url, MIGRATION_DIRS=migration_dirs)
    with app.app_context():
        upgrade(directory=MIGRATIONS, revision="heads")
        db.engine.dispose()


def readyz(database_url: str, migration_dirs: list) -> tuple[int, dict]:
    app = make_app(database_url, MIGRATION_DIRS=migration_dirs)
    answer = app.test_client().get("/readyz")
    with app.app_context():
        db.engine.dispose()
    return answer.status_code, answer.get_json()


def test_an_app_branch_that_depends_on_creditapps_head_is_ready_once_upgraded(empty_database, tmp_path):
    """Alembic keeps only the app's revision in alembic_version when it depends on creditapp's
    head (creditapp's is then implied): that database is fully migrated, not pending forever."""
    own = tmp_path / "own_migrations"
    own.mkdir()
    creditapp_head = make_app(empty_database).extensions["creditapp.migration_head"]
    app_revision(own, "own_0001", "own_things", labels=("own",), depends=creditapp_head)
    upgrade_heads(empty_database, [str(own)])
    assert readyz(empty_database, [str(own)]) == (200, {"status": "ready", "migration": "own_0001"})

    app_revision(own, "own_0002", "own_more_things", down="own_0001")  # a second one on the app's branch
    status, body = readyz(empty_database, [str(own)])
    assert (status, body["error"]) == (503, "migrations_pending") and "own_0002" in body["message"]
    upgrade_heads(empty_database, [str(own)])
    assert readyz(empty_database, [str(own)])[0] == 200


def test_an_app_that_adds_its_migrations_to_a_migrated_database_is_pending_until_upgraded(empty_database,
                                                                                          tmp_path):
    upgrade_heads(empty_database, [])
    own = tmp_path / "own_migrations"
    own.mkdir()
    app_revision(own, "own_0001", "own_things", labels=("own",), depends="0001_initial_ledger")
    status, body = readyz(empty_database, [str(own)])
    assert (status, body["error"]) == (503, "migrations_pending") and "own_0001" in body["message"]
    upgrade_heads(empty_database, [str(own)])
    assert readyz(empty_database, [str(own)])[0] == 200
    assert readyz(empty_database, [])[0] == 200  # creditapp's own app on the same database


def test_0018_downgrades_to_the_previous_releases_paid_path_and_upgrades_again(empty_database):
    """The previous release runs on 0017: no counter table, no paid_* function left behind, and
    its hold and close (0016's) still work; upgrading again restores the paid call."""
    from creditapp import users
    from creditapp.ledger import Balance, procedures

    app = make_app(empty_database)
    with app.app_context():
        upgrade(directory=MIGRATIONS)
        user = users.create_user("rolling", "correct-horse-battery", signup_grant=Balance(5, 0),
                                 hash_method=app.config["PASSWORD_HASH_METHOD"])
        downgrade(directory=MIGRATIONS, revision="0017_verify_runs")
        assert revision(app) == "0017_verify_runs"
        with db.engine.connect() as conn:
            assert "paid_rate_counters" not in db.inspect(conn).get_table_names()
            if conn.dialect.name == "postgresql":
                left = conn.execute(text("SELECT proname FROM pg_proc WHERE proname LIKE 'creditapp_paid%'")).all()
                assert left == []
        if db.engine.dialect.name == "postgresql":
            held = procedures.call(procedures.HOLD, (user["id"], "generation_credits", 2, 60, None, user["id"], None,
                                                     None, "d" * 32, False, user["id"], None, [], None, None))
            assert held.outcome == "held"
            closed = procedures.call(procedures.CLOSE, (held.hold_id, user["id"], "generation_credits", 1, None, None,
                                                        60, None, None))
            assert closed.outcome == "settled"
        upgrade(directory=MIGRATIONS)
        if db.engine.dialect.name == "postgresql":
            admitted = procedures.call(procedures.ADMIT, (None, user["id"], [3, 60], "e" * 32))
            assert (admitted.outcome, admitted.rate_hits) == ("admitted", 1)
        db.engine.dispose()
