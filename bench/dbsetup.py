"""Throw-away databases for a benchmark run: create, migrate, seed, verify, drop.

Seeding writes straight to the tables in one transaction per step (it is set-up, not what is
measured) but keeps the ledger's rule: every balance is the sum of its ledger rows, so
`flask credits verify` stays clean.
"""
import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import bindparam, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from creditapp.access.tables import ApiKey, Team, TeamMember
from creditapp.ledger.tables import (
    CreditAccount, CreditCap, CreditCapLimit, CreditLot, LedgerEntry, UTCDateTime, Wallet,
)
from creditapp.models import User

from creditapp.testing import servers
from creditapp.testing.databases import DatabaseUnavailable, create_postgres, drop_postgres, server_url

from . import floor

USERS, ACCOUNTS, LEDGER = User.__table__, CreditAccount.__table__, LedgerEntry.__table__
LOTS, WALLETS = CreditLot.__table__, Wallet.__table__
CREDIT_TYPES = ("generation_credits", "ai_tokens")
HUGE = 10**12  # nobody runs out during a run


class Unavailable(Exception):
    """This kind of database cannot be benchmarked here; the message says why."""


class BenchDatabase:
    kind = "?"

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)

    @property
    def label(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def migrate(self) -> None:
        result = flask_cli(self.url, "db", "upgrade")
        if result.returncode != 0:
            raise RuntimeError(f"flask db upgrade failed:\n{result.stdout}\n{result.stderr}")

    def verify(self) -> tuple[bool, str]:
        """`flask --app wsgi credits verify` on this database: (clean, what it printed)."""
        result = flask_cli(self.url, "credits", "verify")
        output = (result.stdout + result.stderr).strip()
        return result.returncode == 0, output

    def seed_users(self, count: int, credit_types=CREDIT_TYPES) -> list[int]:
        """`count` users, each with a huge balance of `credit_types` and the grant rows for it."""
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            user_ids = conn.execute(
                insert(USERS).returning(USERS.c.id, sort_by_parameter_order=True),
                [{"username": f"bench_{i:05d}", "password_hash": "!", "is_admin": False,
                  "created_at": now} for i in range(count)],
            ).scalars().all()
            # A user's wallet has the user's id (creditapp.ledger.tables.Wallet).
            conn.execute(insert(WALLETS), [
                {"id": uid, "kind": "user", "user_id": uid, "team_id": None, "created_at": now} for uid in user_ids])
            conn.execute(insert(ACCOUNTS), [
                {"wallet_id": uid, "credit_type": ct, "available": HUGE if ct in credit_types else 0,
                 "held": 0, "debt": 0, "alert_below": False}
                for uid in user_ids for ct in CREDIT_TYPES
            ])
            lot_ids = conn.execute(
                insert(LOTS).returning(LOTS.c.id, sort_by_parameter_order=True),
                [{"wallet_id": uid, "credit_type": ct, "amount": HUGE, "remaining": HUGE, "held": 0,
                  "priority": 50, "expires_at": None, "source": "admin", "reason": "bench seed",
                  "created_at": now}
                 for uid in user_ids for ct in credit_types],
            ).scalars().all()
            conn.execute(insert(LEDGER), [
                {"wallet_id": uid, "credit_type": ct, "kind": "grant", "amount": HUGE,
                 "held_change": 0, "debt_change": 0, "balance_after": HUGE, "held_after": 0, "hold_id": None,
                 "lot_id": lot_id, "reason": "bench seed", "reference": None, "created_at": now}
                for (uid, ct), lot_id in zip(((u, c) for u in user_ids for c in credit_types), lot_ids)
            ])
        return list(user_ids)

    def seed_access(self, user_ids: list[int], keys: int) -> tuple[list[str], int]:
        """Scenario 10: `keys` API keys (the first users', round robin) with budgets no run
        reaches, and a team whose wallet every user spends from as a member with a cap. Returns
        the keys' secrets and the team's id."""
        import hashlib
        import secrets

        from creditapp.ledger import team_wallet

        now = datetime.now(timezone.utc)
        caps, limits, members = CreditCap.__table__, CreditCapLimit.__table__, TeamMember.__table__
        with self.engine.begin() as conn:
            team_id = conn.execute(insert(Team.__table__).values(name="bench", created_at=now)
                                   .returning(Team.__table__.c.id)).scalar_one()
            wallet = team_wallet(team_id)
            conn.execute(insert(WALLETS), [{"id": wallet, "kind": "team", "user_id": None, "team_id": team_id,
                                            "created_at": now}])
            conn.execute(insert(ACCOUNTS), [{"wallet_id": wallet, "credit_type": ct, "available": HUGE, "held": 0,
                                             "debt": 0, "alert_below": False} for ct in CREDIT_TYPES])
            lot_ids = conn.execute(insert(LOTS).returning(LOTS.c.id, sort_by_parameter_order=True), [
                {"wallet_id": wallet, "credit_type": ct, "amount": HUGE, "remaining": HUGE, "held": 0,
                 "priority": 50, "expires_at": None, "source": "admin", "reason": "bench seed", "created_at": now}
                for ct in CREDIT_TYPES]).scalars().all()
            conn.execute(insert(LEDGER), [
                {"wallet_id": wallet, "credit_type": ct, "kind": "grant", "amount": HUGE, "held_change": 0,
                 "debt_change": 0, "balance_after": HUGE, "held_after": 0, "hold_id": None, "lot_id": lot_id,
                 "reason": "bench seed", "reference": None, "created_at": now}
                for ct, lot_id in zip(CREDIT_TYPES, lot_ids)])
            owners = [user_ids[i % len(user_ids)] for i in range(keys)]
            cap_rows = [{"wallet_id": uid, "period": "month", "period_seconds": None, "anchor": now,
                         "expires_at": None, "features": None, "created_at": now} for uid in owners]
            cap_rows += [
                {"wallet_id": wallet, "period": "month", "period_seconds": None, "anchor": now, "expires_at": None,
                 "features": None, "created_at": now} for _ in user_ids]
            cap_ids = conn.execute(insert(caps).returning(caps.c.id, sort_by_parameter_order=True),
                                   cap_rows).scalars().all()
            conn.execute(insert(limits), [{"cap_id": cap_id, "credit_type": ct, "amount": HUGE}
                                          for cap_id in cap_ids for ct in CREDIT_TYPES])
            key_secrets = ["ck_" + secrets.token_urlsafe(32) for _ in range(keys)]
            conn.execute(insert(ApiKey.__table__), [
                {"user_id": uid, "team_id": None, "wallet_id": uid, "cap_id": cap_id, "name": f"bench {i}",
                 "prefix": secret[:11], "secret_hash": hashlib.sha256(secret.encode()).hexdigest(),
                 "budget_period": "month", "features": None, "created_at": now, "expires_at": None, "revoked_at": None}
                for i, (uid, cap_id, secret) in enumerate(zip(owners, cap_ids[:keys], key_secrets))])
            conn.execute(insert(members), [
                {"team_id": team_id, "user_id": uid, "role": "owner" if i == 0 else "member", "cap_id": cap_id,
                 "created_at": now} for i, (uid, cap_id) in enumerate(zip(user_ids, cap_ids[keys:]))])
        return key_secrets, team_id

    def seed_floor(self, user_ids: list[int]) -> None:
        """The floor app's own tables (bench/floor.py), with the same users."""
        floor.create_tables(self.engine)
        floor.seed(self.engine, user_ids, HUGE)

    def statement_log(self):
        """PostgreSQL's own record of the statements it runs, for counting round trips; None
        where it cannot be read (SQLite, or a server whose log is elsewhere)."""
        return None

    def seed_ledger(self, per_user: int) -> None:
        """`per_user` grants of +1 generation credit for every user, interleaved the way real
        traffic would write them, with each balance raised by as much in the same transaction."""
        statement = text(
            f"{self._sequence_cte()} "
            "INSERT INTO ledger_entries (wallet_id, credit_type, kind, amount, held_change, debt_change, "
            "    balance_after, held_after, lot_id, reason, created_at) "
            "SELECT a.wallet_id, a.credit_type, 'grant', 1, 0, 0, a.available + seq.k, a.held, lot.id, "
            "    'bench scale seed', :now "
            "FROM seq CROSS JOIN credit_accounts AS a "
            "JOIN credit_lots AS lot ON lot.wallet_id = a.wallet_id AND lot.credit_type = a.credit_type "
            "WHERE a.credit_type = 'generation_credits' "
            "ORDER BY seq.k, a.wallet_id"
        ).bindparams(bindparam("now", type_=UTCDateTime()))
        with self.engine.begin() as conn:
            self._lock_accounts(conn)
            conn.execute(statement, {"per_user": per_user, "now": datetime.now(timezone.utc)})
            conn.execute(text(
                "UPDATE credit_accounts SET available = available + :per_user "
                "WHERE credit_type = 'generation_credits'"
            ), {"per_user": per_user})
            # Each seeded user has one lot per credit type: the +1 grants grow it.
            conn.execute(text(
                "UPDATE credit_lots SET amount = amount + :per_user, remaining = remaining + :per_user "
                "WHERE credit_type = 'generation_credits'"
            ), {"per_user": per_user})
        self._after_bulk_load()

    def add_lots(self, per_user: int, amount: int = 10**9) -> None:
        """`per_user` more generation-credit lots for every user, each with its grant row: they
        expire a year or more from now (one day apart), so they are spent before the seed lot."""
        now = datetime.now(timezone.utc)
        with self.engine.begin() as conn:
            self._lock_accounts(conn)
            rows = [
                {"wallet_id": user_id, "credit_type": "generation_credits", "amount": amount, "remaining": amount,
                 "held": 0, "priority": 50, "expires_at": now + timedelta(days=365 + k), "source": "admin",
                 "reason": f"bench lot {k}", "created_at": now}
                for k in range(1, per_user + 1)
                for (user_id,) in conn.execute(text(
                    "SELECT wallet_id FROM credit_accounts WHERE credit_type = 'generation_credits' ORDER BY wallet_id"))
            ]
            lot_ids = conn.execute(insert(LOTS).returning(LOTS.c.id, sort_by_parameter_order=True), rows).scalars().all()
            available = {r[0]: r[1] for r in conn.execute(text(
                "SELECT wallet_id, available FROM credit_accounts WHERE credit_type = 'generation_credits'"))}
            entries = []
            for row, lot_id in zip(rows, lot_ids):
                available[row["wallet_id"]] += amount
                entries.append({"wallet_id": row["wallet_id"], "credit_type": "generation_credits", "kind": "grant",
                                "amount": amount, "held_change": 0, "debt_change": 0,
                                "balance_after": available[row["wallet_id"]],
                                "held_after": 0, "hold_id": None, "lot_id": lot_id, "reason": row["reason"],
                                "reference": None, "created_at": now})
            conn.execute(insert(LEDGER), entries)
            conn.execute(text(
                "UPDATE credit_accounts SET available = available + :added WHERE credit_type = 'generation_credits'"
            ), {"added": per_user * amount})
        self._after_bulk_load()

    def ledger_rows(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(LEDGER)).scalar_one()

    def _sequence_cte(self) -> str:
        raise NotImplementedError

    def _lock_accounts(self, conn) -> None:
        pass

    def _after_bulk_load(self) -> None:
        pass

    def drop(self) -> None:
        self.engine.dispose()


class SQLiteDatabase(BenchDatabase):
    kind = "sqlite"
    title = "SQLite"

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="creditapp_bench_")
        super().__init__(f"sqlite:///{os.path.join(self.directory, 'creditapp.db')}")

    def _sequence_cte(self) -> str:
        return ("WITH RECURSIVE seq(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM seq "
                "WHERE k < :per_user)")

    def drop(self) -> None:
        super().drop()
        shutil.rmtree(self.directory, ignore_errors=True)


class PostgresDatabase(BenchDatabase):
    kind = "postgresql"
    title = "PostgreSQL"

    def __init__(self, server_url: str):
        try:
            url = create_postgres(server_url, prefix="creditapp_bench")
        except DatabaseUnavailable as exc:  # nothing to benchmark here
            raise Unavailable(str(exc)) from None
        self.server_url, self.name = server_url, make_url(url).database
        # The statement log is switched on and off for this database from the server's.
        self.admin = create_engine(server_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        super().__init__(url)

    def _sequence_cte(self) -> str:
        return "WITH seq(k) AS (SELECT generate_series(1, :per_user))"

    def _lock_accounts(self, conn) -> None:
        # Exact balance_after values even if a straggling request is still settling.
        conn.execute(text("SELECT 1 FROM credit_accounts WHERE credit_type = 'generation_credits' "
                          "FOR UPDATE"))

    def _after_bulk_load(self) -> None:
        # Autovacuum would analyze a table that grew this much within a minute; do it now so
        # the measurement does not depend on when it wakes up.
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE ledger_entries"))
            conn.execute(text("ANALYZE credit_accounts"))
            conn.execute(text("ANALYZE credit_lots"))

    def statement_log(self):
        return StatementLog(self.admin, self.name)

    def drop(self) -> None:
        super().drop()
        try:
            drop_postgres(self.url, self.server_url)
        finally:
            self.admin.dispose()


class StatementLog:
    """Counts the statements PostgreSQL itself logs for one database (log_statement = 'all',
    set on that database only). Each one the server logged is one round trip: psycopg sends a
    statement's parse, bind and execute together and waits once."""

    def __init__(self, admin, database: str):
        self.admin, self.database = admin, database
        with admin.connect() as conn:
            current = conn.execute(text("SELECT pg_current_logfile()")).scalar()
            directory = conn.execute(text("SHOW data_directory")).scalar()
            version = conn.execute(text("SHOW server_version_num")).scalar()
        if current:
            self.path = Path(current if current.startswith("/") else os.path.join(directory, current))
        else:  # Debian's clusters log to /var/log/postgresql/postgresql-<major>-<cluster>.log
            self.path = Path(f"/var/log/postgresql/postgresql-{int(version) // 10000}-"
                             f"{Path(directory).name}.log")

    def readable(self) -> bool:
        return self.path.is_file() and os.access(self.path, os.R_OK)

    def __enter__(self):
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.database}" SET log_statement = \'all\''))
        return self

    def __exit__(self, *exc):
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.database}" RESET log_statement'))

    def mark(self) -> int:
        return self.path.stat().st_size

    def statements_since(self, mark: int) -> list[str]:
        with open(self.path, "rb") as log:
            log.seek(mark)
            lines = log.read().decode("utf-8", "replace").splitlines()
        tag = f"@{self.database} "
        return [line.split("LOG:  ", 1)[1] for line in lines
                if tag in line and ("LOG:  statement: " in line or "LOG:  execute " in line)]


def open_database(kind: str) -> BenchDatabase:
    """A new, empty, migrated database of `kind`; raises Unavailable when there is none."""
    database = SQLiteDatabase() if kind == "sqlite" else PostgresDatabase(server_url())
    try:
        database.migrate()
    except BaseException:
        database.drop()
        raise
    return database


def flask_cli(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AI_STUB_")}
    env.update(CREDITAPP_ENV="development", DATABASE_URL=database_url)
    return servers.flask_cli(env, *args, timeout=600)
