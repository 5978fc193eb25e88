"""Scenario 13: a usage report over a year of a 1M-row ledger (PostgreSQL).

A database of its own gets `scale_rows` ledger rows written straight by generate_series: paid
requests spread evenly over the last 365 days (a hold row and its settle or release row each; one
in 20 charges nothing), from USERS users and six features in sessions of SESSION requests of one
user and feature a minute apart, with the hourly rollup built from those holds as
`creditapp_end_hold` would have kept it. (The rollup has a row per hour, spender and feature that
saw any request: a ledger whose every request is alone in its hour makes it ten times as long;
the README gives that figure too.) Then GET /api/admin/usage over the year, day
buckets, by feature and by user, a few times each on a fresh server; the report's totals are
checked against the ledger's rows.
"""
import json
import statistics
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

from sqlalchemy import text

from .dbsetup import open_database
from .tokens import write_tokens

USERS = 100  # a year of days per user is a series of 366 points each: 36,600 points by user
SESSION = 10
RUNS = 5
TARGET_S = 0.5  # "well under a second"
FEATURES = ("basic_generation", "professional_photo", "change_hairstyle", "upscale", "sketch", "ai_complete")
HOLDS = """
INSERT INTO credit_holds (wallet_id, credit_type, amount, settled_amount, refunded_amount, status, created_at,
                          expires_at, closed_at, user_id, key_id, feature)
SELECT w.id, CASE WHEN w.f = 5 THEN 'ai_tokens' ELSE 'generation_credits' END, 1 + i % 3,
       CASE WHEN i % 20 = 0 THEN 0 ELSE 1 + i % 3 END, 0, CASE WHEN i % 20 = 0 THEN 'released' ELSE 'settled' END,
       at - interval '1 second', at + interval '599 seconds', at, w.id, NULL, (CAST(:features AS text[]))[1 + w.f]
FROM generate_series(1, :holds) AS i,
     LATERAL (SELECT CAST(:start AS timestamptz) + (i * CAST(:step AS float8)) * interval '1 second' AS at) AS t,
     LATERAL (SELECT :first + (i::bigint / :session * 7919) % :users AS id, i / :session % 6 AS f) AS w
"""
ROWS = """
INSERT INTO ledger_entries (wallet_id, credit_type, kind, amount, held_change, debt_change, balance_after,
                            held_after, hold_id, lot_id, reason, created_at)
SELECT h.wallet_id, h.credit_type, r.kind, r.amount, r.held, 0, :huge, 0, h.id, NULL, NULL, r.at
FROM credit_holds AS h, LATERAL (VALUES
    ('hold', -h.amount, h.amount, h.created_at),
    (CASE WHEN h.settled_amount = 0 THEN 'release' ELSE 'settle' END,
     CASE WHEN h.settled_amount = 0 THEN h.amount ELSE 0 END, -h.amount, h.closed_at)) AS r(kind, amount, held, at)
"""
ROLLUP = """
INSERT INTO credit_usage (hour, wallet_id, user_id, key_id, feature, credit_type, requests, failed, charged, refunded)
SELECT date_trunc('hour', closed_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', wallet_id, coalesce(user_id, 0),
       coalesce(key_id, 0), coalesce(feature, ''), credit_type, count(*),
       sum(CASE WHEN settled_amount = 0 THEN 1 ELSE 0 END), sum(settled_amount), 0
FROM credit_holds WHERE closed_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6
"""
BALANCES = """
UPDATE credit_accounts AS a SET available = a.available - s.charged
FROM (SELECT wallet_id, credit_type, sum(settled_amount) AS charged FROM credit_holds
      GROUP BY wallet_id, credit_type) AS s
WHERE a.wallet_id = s.wallet_id AND a.credit_type = s.credit_type
"""
LEDGER_SUMS = """
SELECT credit_type, sum(-held_change) FILTER (WHERE kind = 'settle'), count(*) FILTER (WHERE kind <> 'hold')
FROM ledger_entries WHERE hold_id IS NOT NULL GROUP BY credit_type
"""


def run(runner) -> None:
    """s13 on `runner`'s kind of database (PostgreSQL only: its figure is the one promised)."""
    if not runner.s.wants("s13"):
        return
    if runner.db.kind != "postgresql":
        print("  s13: PostgreSQL only", flush=True)
        return
    database = open_database(runner.db.kind)
    try:
        # A runner of its own, so that its servers serve this database.
        runner.run.usage = _run(type(runner)(runner.s, database, runner.run), database)
    finally:
        database.drop()


def _seed(database, rows: int, now: datetime) -> tuple[int, float]:
    ids = database.seed_users(USERS)
    holds = rows // 2
    year = timedelta(days=365).total_seconds()
    started = time.monotonic()
    with database.engine.begin() as conn:
        conn.execute(text(HOLDS), {"features": list(FEATURES), "holds": holds, "start": now - timedelta(days=365),
                                   "step": year / holds, "first": ids[0], "users": USERS,
                                   "session": SESSION})
        conn.execute(text(ROWS), {"huge": 10**12})
        conn.execute(text(ROLLUP))
        conn.execute(text(BALANCES))
        conn.execute(text("UPDATE users SET is_admin = true WHERE id = :id"), {"id": ids[0]})
    with database.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("credit_holds", "ledger_entries", "credit_usage"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
    return ids[0], time.monotonic() - started


def _get(url: str, token: str) -> tuple[float, dict, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"s13: {url} answered {exc.code}: {exc.read()[:500]!r}") from None
    return time.monotonic() - started, json.loads(body), len(body)


def _run(runner, database) -> dict:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = runner.s.scale_rows
    print(f"  s13: seeding {rows:,} ledger rows over a year ...", flush=True)
    admin, seeded_s = _seed(database, rows, now)
    with database.engine.connect() as conn:
        ledger = {row[0]: (row[1], row[2]) for row in conn.execute(text(LEDGER_SUMS))}
        counts = conn.execute(text("SELECT (SELECT count(*) FROM ledger_entries), "
                                   "(SELECT count(*) FROM credit_usage)")).one()
    token = write_tokens(runner.s.jwt_secret, [admin], runner.s.workdir / "token-s13.txt").read_text().strip()
    window = {"from": (now - timedelta(days=365)).isoformat(), "to": (now + timedelta(seconds=1)).isoformat(),
              "bucket": "day"}
    results = {"ledger_rows": counts[0], "rollup_rows": counts[1], "seed_s": seeded_s, "target_s": TARGET_S}
    with runner.server("s13", workers=1) as server:
        for name in ("feature", "user"):
            url = f"{server.url}/api/admin/usage?{urlencode({**window, 'group_by': name})}"
            _get(url, token)  # warm-up: connections, prepared plans
            times, body, size = [], None, 0
            for _ in range(RUNS):
                seconds, body, size = _get(url, token)
                times.append(seconds)
            totals = body["totals"]
            exact = all(totals["charged"][ct] == (ledger.get(ct) or (0, 0))[0] for ct in totals["charged"]) and \
                totals["requests"] == sum(n for _charged, n in ledger.values())
            results[name] = {"p50_s": statistics.median(times), "max_s": max(times), "series": len(body["series"]),
                             "points": sum(len(s["points"]) for s in body["series"]), "bytes": size, "exact": exact}
            r = results[name]
            print(f"  s13 GET /api/admin/usage, a year by day, group_by={name:<8} p50 {r['p50_s'] * 1000:7.1f} ms "
                  f"max {r['max_s'] * 1000:7.1f} ms ({r['series']} series, {r['points']:,} points, "
                  f"{size / 1024:,.0f} KiB; equals the ledger: {'yes' if exact else 'NO'}) "
                  f"@ {counts[0]:,} ledger rows, {counts[1]:,} rollup rows", flush=True)
    return results
