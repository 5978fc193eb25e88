"""Usage reports (`GET /api/admin/usage`, `GET /api/credits/usage`) on both databases: real paid
requests made across hour and day edges with the manual clock (sync, failed, streamed, a job, an
API key, a team's wallet and key, a refund, an expired hold), the hourly rollup proved equal to the
ledger's rows, and reports compared with a model the test keeps of what it did, in several time
zones, buckets and groups; then the refusals."""
import bisect
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from urllib.parse import urlencode

import pytest
import requests
from sqlalchemy import select

from creditapp.ledger import CreditType, credit_service, team_wallet
from creditapp.ledger.tables import TEAM_WALLETS, CreditHold, CreditUsage, LedgerEntry
from creditapp.ledger.transactions import atomic
from creditapp.testing import ledger_is_clean
from creditapp.testing.servers import fire_together

from .test_access import key_headers, make_key

UTC = timezone.utc
IST = timezone(timedelta(hours=5, minutes=30))
NEWFOUNDLAND = timezone(timedelta(hours=-3, minutes=-30))
GEN, TOKENS = "generation_credits", "ai_tokens"
FIGURES = ("requests", "charged", "refunded", "failed")


@dataclass(frozen=True)
class Event:
    """What the test did, as the report should count it."""

    at: datetime
    wallet: int
    user: int | None
    key: int | None
    feature: str | None
    credit_type: str
    requests: int = 0
    charged: int = 0
    refunded: int = 0
    failed: int = 0

    def group(self, name):
        return {"feature": self.feature, "user": self.user, "key": self.key, "credit_type": self.credit_type,
                "team": self.wallet - TEAM_WALLETS if self.wallet >= TEAM_WALLETS else None}[name]


NAMES = {"feature": "feature", "user": "user_id", "credit_type": "credit_type", "team": "team_id", "key": "key_id"}


def starts_of(start: datetime, end: datetime, bucket: str) -> list[datetime]:
    """The points' starts, stepped on the local calendar of start's offset (the app does it in epoch seconds)."""
    local = start.astimezone(start.tzinfo)
    edge = local.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        edge = edge.replace(hour=0)
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    starts, edge = [local], edge + step
    while edge < end:
        starts.append(edge)
        edge += step
    return starts


def ordered(series: dict) -> str:
    return json.dumps(series, sort_keys=True)


def expected(events, start, end, bucket="day", group_by=(), **filters) -> dict:
    starts = starts_of(start, end, bucket)
    groups = [name for name in NAMES if name in group_by or name == "credit_type"]
    series = defaultdict(lambda: [[0, 0, 0, 0] for _ in starts])
    for event in events:
        if not start <= event.at < end or any(getattr(event, name) != value for name, value in filters.items()):
            continue
        point = series[tuple(event.group(name) for name in groups)][bisect.bisect_right(starts, event.at) - 1]
        for i, figure in enumerate(FIGURES):
            point[i] += getattr(event, figure)
    totals = {"requests": 0, "failed": 0, "charged": {GEN: 0, TOKENS: 0}, "refunded": {GEN: 0, TOKENS: 0}}
    answer = []
    for key, points in series.items():
        group = dict(zip((NAMES[name] for name in groups), key))
        sums = dict(zip(FIGURES, (sum(p[i] for p in points) for i in range(4))))
        totals["requests"] += sums["requests"]
        totals["failed"] += sums["failed"]
        totals["charged"][group["credit_type"]] += sums["charged"]
        totals["refunded"][group["credit_type"]] += sums["refunded"]
        answer.append({"group": group, "points": [
            {"start": s.isoformat(), **dict(zip(FIGURES, p))} for s, p in zip(starts, points)]})
    return {"from": start.isoformat(), "to": end.astimezone(start.tzinfo).isoformat(), "bucket": bucket,
            "series": sorted(answer, key=ordered), "totals": totals}


def comparable(report: dict) -> dict:
    """A report with its series in the model's order and its times normalised."""
    def iso(text):
        return datetime.fromisoformat(text).isoformat()

    series = [{"group": s["group"], "points": [{**p, "start": iso(p["start"])} for p in s["points"]]}
              for s in report["series"]]
    return {**report, "from": iso(report["from"]), "to": iso(report["to"]), "series": sorted(series, key=ordered)}


def query(client, user, path="/api/admin/usage", headers=None, **params):
    params = {name: value.isoformat() if isinstance(value, datetime) else value for name, value in params.items()}
    return client.get(f"{path}?{urlencode(params, doseq=True)}", headers={**user.headers, **(headers or {})})


def ledger_model() -> tuple[dict, dict]:
    """The rollup's rows as the ledger's rows say they must be: a hold's closing rows (the ones that
    take from `held`: settle, release, expire, void, freeze) count a request in the hour they were
    written, charging what its settle rows took; refund rows count what they gave back. With the
    rollup as it is."""
    model = defaultdict(lambda: [0, 0, 0, 0])
    with atomic(write=False) as session:
        holds = {h.id: h for h in session.execute(select(CreditHold)).scalars()}
        rows = session.execute(select(LedgerEntry).where(LedgerEntry.hold_id.is_not(None))).scalars().all()
        closing = defaultdict(list)
        for row in rows:
            if row.kind == "refund":
                h = holds[row.hold_id]
                key = (row.created_at.replace(minute=0, second=0, microsecond=0), row.wallet_id, h.user_id or 0,
                       h.key_id or 0, h.feature or "", row.credit_type)
                model[key][2] += row.amount
            elif row.kind != "hold" and row.held_change < 0:
                closing[row.hold_id].append(row)
        for hold_id, ends in closing.items():
            h, charged = holds[hold_id], sum(-r.held_change for r in ends if r.kind == "settle")
            assert {r.created_at for r in ends} == {h.closed_at}
            key = (h.closed_at.replace(minute=0, second=0, microsecond=0), h.wallet_id, h.user_id or 0,
                   h.key_id or 0, h.feature or "", h.credit_type)
            model[key][0] += 1
            model[key][1] += charged
            model[key][3] += int(charged == 0)
        rollup = {(u.hour, u.wallet_id, u.user_id, u.key_id, u.feature, u.credit_type):
                  [u.requests, u.charged, u.refunded, u.failed]
                  for u in session.execute(select(CreditUsage)).scalars()}
    return dict(model), rollup


@pytest.fixture
def made(app, client, make_user, manual_clock, fake_ai, job_queue):
    """Paid requests of every kind, from 17:10 UTC on a day to 02:40 the next, and the events they are."""
    start = (manual_clock() + timedelta(days=1)).replace(hour=17, minute=10, second=0, microsecond=0)
    manual_clock.advance((start - manual_clock()).total_seconds())
    admin = make_user(admin=True)
    alice, owner, carol = make_user(credits=20, tokens=200), make_user(), make_user()
    events = []

    def at(hour, minute, day=0):
        moment = start.replace(hour=hour, minute=minute) + timedelta(days=day)
        manual_clock.advance((moment - manual_clock()).total_seconds())

    def paid(user, path, body, *, wallet, user_id, key=None, headers=None, fails=False):
        if fails:
            fake_ai.fail_next()
        response = client.post(path, json=body, headers=headers or user.headers)
        assert response.status_code == (502 if fails else 200), response.json
        feature = {"/api/generate": "basic_generation", "/api/generate/upscale": "upscale"}[path]
        charged = 0 if fails else response.json["charged"]["amount"]
        events.append(Event(manual_clock(), wallet, user_id, key, feature, GEN, 1, charged, 0, int(fails)))

    image = {"image_url": "https://example.com/a.png", "scale": 2}
    at(17, 10); paid(alice, "/api/generate", {"prompt": "a"}, wallet=alice.id, user_id=alice.id)
    at(17, 40); paid(alice, "/api/generate/upscale", image, wallet=alice.id, user_id=alice.id)
    at(18, 20); paid(alice, "/api/generate", {"prompt": "a"}, wallet=alice.id, user_id=alice.id, fails=True)
    at(18, 40)
    streamed = client.post("/api/ai/complete", json={"prompt": "write a poem", "max_tokens": 5, "stream": True},
                           headers=alice.headers, buffered=False)
    done = [json.loads(block[6:]) for block in streamed.get_data(as_text=True).split("\n\n")
            if block.startswith("data: ")][-1]
    assert done["type"] == "done", done
    events.append(Event(manual_clock(), alice.id, alice.id, None, "ai_complete", TOKENS, 1,
                        done["charged"]["amount"]))
    at(19, 5)
    key = make_key(client, alice)
    paid(alice, "/api/generate", {"prompt": "k"}, wallet=alice.id, user_id=alice.id, key=key["id"],
         headers=key_headers(key))
    team = client.post("/api/teams", json={"name": "Acme"}, headers=owner.headers).json
    wallet = team_wallet(team["id"])
    client.post(f"/api/teams/{team['id']}/members", json={"username": carol.username}, headers=owner.headers)
    credit_service.grant(wallet, 10, GEN, reason="test", reference="team")
    at(23, 50)
    paid(carol, "/api/generate", {"prompt": "t"}, wallet=wallet, user_id=carol.id,
         headers={**carol.headers, "X-Team": str(team["id"])})
    at(0, 10, day=1)
    team_key = make_key(client, owner, team=team["id"])
    paid(owner, "/api/generate", {"prompt": "tk"}, wallet=wallet, user_id=None, key=team_key["id"],
         headers=key_headers(team_key))
    at(0, 55, day=1)
    job = client.post("/api/generate", json={"prompt": "j"}, headers={**alice.headers, "Prefer": "respond-async"})
    assert job.status_code == 202
    at(1, 2, day=1)  # within the hold's 10 minutes
    assert job_queue.drain() == 1
    events.append(Event(manual_clock(), alice.id, alice.id, None, "basic_generation", GEN, 1, 1))
    at(2, 0, day=1)
    rows = client.get("/api/credits/transactions?limit=100", headers=alice.headers).json["items"]
    first = min(row["hold_id"] for row in rows if row["kind"] == "settle")
    assert client.post(f"/api/admin/charges/{first}/refund", json={"amount": 1, "reason": "test"},
                       headers=admin.headers).status_code == 200
    events.append(Event(manual_clock(), alice.id, alice.id, None, "basic_generation", GEN, refunded=1))
    at(2, 10, day=1)
    credit_service.reserve(alice.id, 3, CreditType.GENERATION_CREDITS, feature="upscale")
    at(2, 40, day=1)
    assert credit_service.release_expired() == 1
    events.append(Event(manual_clock(), alice.id, alice.id, None, "upscale", GEN, 1, 0, 0, 1))
    return {"events": events, "admin": admin, "alice": alice, "carol": carol, "key": key, "team": team,
            "start": start}


def test_the_rollup_is_what_the_ledger_rows_say_on_every_path(made):
    model, rollup = ledger_model()
    assert rollup == model
    assert sum(figures[0] for figures in rollup.values()) == len([e for e in made["events"] if e.requests])
    ledger_is_clean()


CASES = [  # zone, bucket, group_by, minutes cut off the start and the end
    (UTC, "hour", ["feature", "user"], (0, 0)),
    (UTC, "hour", ["credit_type"], (25, 10)),  # from 16:25 to 03:50: parts of hours at both ends
    (UTC, "day", ["team", "key"], (0, 0)),
    (IST, "day", ["feature", "team"], (0, 0)),  # days start at 18:30 UTC: 18:00-19:00 is cut
    (IST, "hour", ["user"], (0, 0)),  # every hour is cut at :30
    (NEWFOUNDLAND, "day", ["feature", "user", "key", "team"], (7, 0)),  # days start at 03:30 UTC
]


def test_a_report_is_what_the_requests_made(client, made):
    base = made["start"].replace(minute=0)
    for zone, bucket, group_by, edges in CASES:
        start = (base - timedelta(hours=1) + timedelta(minutes=edges[0])).astimezone(zone)
        end = (base + timedelta(hours=11) - timedelta(minutes=edges[1])).astimezone(zone)
        response = query(client, made["admin"], **{"from": start, "to": end, "bucket": bucket,
                                                   "group_by": ",".join(group_by)})
        assert response.status_code == 200, response.json
        assert comparable(response.json) == expected(made["events"], start, end, bucket, group_by), (zone, bucket)
        # Points start in the query's offset.
        assert {datetime.fromisoformat(p["start"]).utcoffset() for s in response.json["series"]
                for p in s["points"]} == {zone.utcoffset(None)}


def test_filters_repeated_groups_and_the_sum_of_everything_equals_the_ledger(client, made, manual_clock):
    alice, admin, events = made["alice"], made["admin"], made["events"]
    start, end = made["start"] - timedelta(days=1), made["start"] + timedelta(days=1)
    for filters, model in [({"user_id": alice.id}, {"user": alice.id}),
                           ({"feature": "basic_generation"}, {"feature": "basic_generation"}),
                           ({"credit_type": TOKENS}, {"credit_type": TOKENS})]:
        response = query(client, admin, **{"from": start, "to": end, "group_by": ["feature", "key"], **filters})
        assert comparable(response.json) == expected(events, start, end, "day", ["feature", "key"], **model)
    # The default range is the last 30 days up to now (excluded): here, everything; its sum is the ledger's.
    manual_clock.advance(1)
    everything = query(client, admin, group_by=["user"]).json
    with atomic(write=False) as session:
        entries = session.execute(select(LedgerEntry)).scalars().all()
        holds = session.execute(select(CreditHold).where(CreditHold.closed_at.is_not(None))).scalars().all()
    for ctype in (GEN, TOKENS):
        assert everything["totals"]["charged"][ctype] == sum(
            -e.held_change for e in entries if e.kind == "settle" and e.credit_type == ctype)
        assert everything["totals"]["refunded"][ctype] == sum(
            e.amount for e in entries if e.kind == "refund" and e.credit_type == ctype)
    assert everything["totals"]["requests"] == len(holds) == 9
    assert everything["totals"]["failed"] == sum(h.settled_amount == 0 for h in holds) == 2


def test_a_callers_own_usage_is_its_wallets(client, made):
    alice, carol, key, team, events = made["alice"], made["carol"], made["key"], made["team"], made["events"]
    start, end = made["start"] - timedelta(hours=1), made["start"] + timedelta(hours=11)
    params = {"from": start, "to": end, "bucket": "hour", "group_by": "feature"}
    own = query(client, alice, "/api/credits/usage", **params)
    assert own.status_code == 200, own.json
    assert comparable(own.json) == expected(events, start, end, "hour", ["feature"], wallet=alice.id)
    by_key = query(client, SimpleNamespace(headers=key_headers(key)), "/api/credits/usage", **params)
    assert by_key.json == own.json  # a key reads its own wallet: its user's
    as_team = query(client, carol, "/api/credits/usage", headers={"X-Team": str(team["id"])}, **params)
    assert comparable(as_team.json) == expected(events, start, end, "hour", ["feature"],
                                                wallet=team_wallet(team["id"]))
    assert query(client, carol, "/api/credits/usage", **params).json["series"] == []  # her own: nothing
    assert query(client, alice, "/api/credits/usage", headers={"X-Team": str(team["id"])},
                 **params).json["error"] == "unknown_team"
    refused = query(client, alice, "/api/credits/usage", group_by="user")
    assert refused.status_code == 422 and refused.json["error"] == "validation_error"
    assert query(client, alice, group_by="feature").status_code == 403  # the admin report is not hers


def test_empty_buckets_are_zeros_and_a_report_of_nothing_is_empty(client, make_user, manual_clock):
    admin, user = make_user(admin=True), make_user(credits=5)
    assert client.post("/api/generate", json={"prompt": "x"}, headers=user.headers).status_code == 200
    now = manual_clock()
    start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    report = query(client, admin, **{"from": start, "to": start + timedelta(hours=5), "bucket": "hour"}).json
    (series,) = report["series"]
    assert [p["requests"] for p in series["points"]] == [0, 0, 1, 0, 0]
    assert series["group"] == {"credit_type": GEN}
    nothing = query(client, admin, **{"from": start, "to": start + timedelta(hours=1)}).json
    assert nothing["series"] == [] and nothing["totals"]["requests"] == 0


BAD = [
    ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_range"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "invalid_range"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-03-01T00:00:00Z", "bucket": "hour"}, "too_many_buckets"),
    ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "too_many_buckets"),
    ({"from": "2026-01-01T00:00:00+05:30:30", "to": "2026-01-02T00:00:00Z"}, "invalid_range"),
    ({"from": "2026-01-01T00:00:00+05:30:00.5", "to": "2026-01-02T00:00:00Z"}, "invalid_range"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00+05:30:00.5"}, "invalid_range"),
    ({"from": "2026-01-01T00:00:00\x00Z"}, "validation_error"),
    ({"from": "yesterday"}, "validation_error"),
    ({"from": "2026-01-01T00:00:00"}, "validation_error"),  # no offset
    ({"from": "0001-01-01T00:00:00+14:00"}, "validation_error"),
    ({"bucket": "week"}, "validation_error"),
    ({"group_by": "feature,colour"}, "validation_error"),
    ({"user_id": "0"}, "validation_error"),
    ({"credit_type": "gold"}, "validation_error"),
]


def test_bad_queries_are_422_with_a_stable_code(client, make_user):
    admin, user = make_user(admin=True), make_user()
    for params, code in BAD:
        response = query(client, admin, **params)
        assert response.status_code == 422 and response.json["error"] == code, (params, response.json)
        own = query(client, user, "/api/credits/usage", **params)  # user_id: not a filter of one's own
        assert own.status_code == 422 and own.json["error"] == code, (params, own.json)
    refused = query(client, user, "/api/credits/usage", user_id=str(user.id))
    assert refused.status_code == 422 and "user_id" in refused.json["errors"], refused.json


def test_an_offset_whose_plus_became_a_space_is_read_as_plus(client, make_user):
    admin = make_user(admin=True)
    report = client.get("/api/admin/usage?from=2026-01-01T00:00:00+05:30&to=2026-01-03T00:00:00%2B05:30",
                        headers=admin.headers)
    assert report.status_code == 200, report.json
    assert (report.json["from"], report.json["series"]) == ("2026-01-01T00:00:00+05:30", [])


def test_only_administrators_and_logged_in_callers_read_reports(client, make_user):
    user = make_user(credits=1)
    refused = query(client, user)
    assert refused.status_code == 403 and refused.json["error"] == "forbidden"
    assert client.get("/api/admin/usage").status_code == 401
    assert client.get("/api/credits/usage").status_code == 401
    key = make_key(client, make_user(admin=True))
    assert client.get("/api/admin/usage", headers=key_headers(key)).json["error"] == "login_token_required"


def test_requests_and_refunds_at_once_keep_the_rollup_equal_to_the_ledger(live_server, client, make_user):
    """A real server, 24 paid requests of one wallet at the same instant (one in four failing),
    then 6 refunds at once: the rollup counted every one, in its transaction."""
    admin, user = make_user(admin=True), make_user(credits=30)
    with live_server(AI_STUB_FAILURE_RATE="0.25") as server:
        answers = server.fire(24, "POST", "/api/generate", json={"prompt": "x"}, headers=user.headers)
        assert {a.status for a in answers} <= {200, 502} and any(a.status == 200 for a in answers)
        rows = client.get("/api/credits/transactions?limit=100", headers=user.headers).json["items"]
        charges = sorted({row["hold_id"] for row in rows if row["kind"] == "settle"})[:6]
        refunds = fire_together(len(charges), lambda i: requests.post(
            f"{server.url}/api/admin/charges/{charges[i]}/refund", json={"reason": "at once"},
            headers=admin.headers, timeout=60).status_code)
        assert refunds == [200] * len(charges)
    model, rollup = ledger_model()
    assert rollup == model
    report = query(client, admin, group_by="feature").json
    assert report["totals"]["requests"] == 24
    assert report["totals"]["failed"] == sum(a.status == 502 for a in answers)
    assert report["totals"]["charged"][GEN] == sum(a.status == 200 for a in answers)
    assert report["totals"]["refunded"][GEN] == len(charges)
    ledger_is_clean()
