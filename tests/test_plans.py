"""Plans on the built-in test provider: a free default plan granted lazily, a paid plan through
its checkout page and invoices, rollover, plan changes, cancellation; a moving clock, never a
sleep. Both databases."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from creditapp.extensions import db
from creditapp.ledger import credit_service
from creditapp.ledger.tables import CreditLot
from creditapp.testing import ledger_is_clean

LOTS = CreditLot.__table__
MINUTE = 60
PLANS = {
    "free": {"name": "Free", "price": 0, "currency": "usd", "interval_seconds": MINUTE,
             "allowance": {"generation_credits": 5}},
    "pro": {"name": "Pro", "price": 1500, "currency": "usd", "interval_seconds": MINUTE,
            "allowance": {"generation_credits": 100, "ai_tokens": 1000}, "rollover_max": {"generation_credits": 50}},
    "max": {"name": "Max", "price": 3000, "currency": "usd", "interval_seconds": MINUTE,
            "allowance": {"generation_credits": 300, "ai_tokens": 1000}},
    "staff": {"name": "Staff", "price": 0, "currency": "usd", "interval_seconds": MINUTE,
              "allowance": {"generation_credits": 1000}},
}


@pytest.fixture
def creditapp_settings():
    return {"PLANS": PLANS, "DEFAULT_PLAN": "free"}


def path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def credits(user) -> int:
    return credit_service.get_credit_balance(user.id).generation_credits


def subscription(client, user) -> dict:
    response = client.get("/api/subscription", headers=user.headers)
    assert response.status_code == 200, response.json
    return response.json


def subscribe(client, user, plan="pro") -> dict:
    response = client.post("/api/subscription", json={"plan": plan}, headers=user.headers)
    assert response.status_code == 201, response.json
    paid = client.post(path(response.json["checkout_url"]), data={"action": "pay"})
    assert paid.status_code == 303, paid.get_data(as_text=True)
    return response.json


def plan_lots(user):
    return [(r.source, r.amount) for r in db.session.execute(
        select(LOTS.c.source, LOTS.c.amount).where(LOTS.c.wallet_id == user.id, LOTS.c.source.in_(("plan", "rollover")),
                                                   LOTS.c.credit_type == "generation_credits")
        .order_by(LOTS.c.id)).all()]


def spend(client, user, n: int) -> None:
    for _ in range(n):
        assert client.post("/api/generate", json={"prompt": "a cat"}, headers=user.headers).status_code == 200


def test_the_default_plan_comes_with_the_first_read_and_each_period_once(app, client, make_user, manual_clock):
    user = make_user(credits=3)
    described = subscription(client, user)
    assert (described["plan"], described["status"], described["remaining"]) == (
        "free", "active", {"generation_credits": 5})
    assert credits(user) == 8
    spend(client, user, 2)
    manual_clock.advance(MINUTE)
    assert credits(user) == 3 + 5  # the allowance was spent first (priority 10); its 3 left lapsed
    ledger_is_clean()


def test_a_paid_plan_through_the_test_checkout(app, client, make_user, manual_clock):
    user = make_user()
    opened = client.post("/api/subscription", json={"plan": "pro"}, headers=user.headers)
    assert opened.status_code == 201, opened.json
    assert opened.json["plan"] == "free" and opened.json["pending"]["plan"] == "pro"
    page = client.get(path(opened.json["checkout_url"]))
    assert page.status_code == 200 and 'id="pay"' in page.get_data(as_text=True)
    paid = client.post(path(opened.json["checkout_url"]), data={"action": "pay"})
    assert paid.status_code == 303 and "subscription=" in paid.headers["Location"]
    described = subscription(client, user)
    assert (described["plan"], described["status"], described["provider"]) == ("pro", "active", "test"), described
    # The free period's lot runs to its end: it was the account's before it paid.
    assert described["remaining"]["generation_credits"] == 100 and credits(user) == 105
    spend(client, user, 30)
    manual_clock.advance(MINUTE)
    described = subscription(client, user)
    assert described["remaining"]["generation_credits"] == 150, described
    assert plan_lots(user) == [("plan", 5), ("plan", 100), ("plan", 100), ("rollover", 50)], plan_lots(user)
    canceled = client.delete("/api/subscription", headers=user.headers)
    assert canceled.status_code == 200 and canceled.json["cancel_at_period_end"] is True, canceled.json
    manual_clock.advance(MINUTE)
    described = subscription(client, user)
    assert (described["plan"], described["status"]) == ("free", "active"), described
    assert credits(user) == 5
    ledger_is_clean()


def test_verify_finds_a_period_granted_twice(app, client, make_user):
    user = make_user()
    subscription(client, user)
    lot = db.session.execute(select(LOTS).where(LOTS.c.wallet_id == user.id, LOTS.c.source == "plan")).one()
    assert credit_service.verify() == []
    # The same period of the same plan under another name (as a re-anchored period would be).
    other = lot.reference + "0"
    credit_service.grant(user.id, 5, "generation_credits", reference=other, source="plan", priority=10,
                         expires_at=lot.expires_at, reason="a second allowance")
    problems = [str(problem) for problem in credit_service.verify()]
    assert problems == [f"user {user.id} generation_credits: allowance lots of plan:free ending "
                        f"{lot.expires_at.isoformat()} is 2, ledger says 1"], problems


def test_metrics_count_subscriptions_allowance_rollover_and_what_lapsed(app, client, make_user, manual_clock):
    user, other = make_user(), make_user()
    subscribe(client, user)
    subscription(client, other)
    manual_clock.advance(MINUTE)
    subscription(client, user), subscription(client, other)
    text = client.get("/metrics").get_data(as_text=True)

    def value(name, **labels):
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        found = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
        assert found, f"{name}{{{wanted}}} not in /metrics"
        return float(found.group(1))

    assert value("creditapp_plan_subscriptions", plan="pro", status="active") == 1
    assert value("creditapp_plan_subscriptions", plan="free", status="active") == 0  # the default: no row
    # Allowance: other's free 5 twice, user's free 5 and pro 100 twice; 50 rolled over; what
    # lapsed: user's free 5, the 50 of pro over the cap, other's first 5.
    assert value("creditapp_plan_credits", kind="allowance", credit_type="generation_credits") == 5 * 3 + 200
    assert value("creditapp_plan_credits", kind="rollover", credit_type="generation_credits") == 50
    assert value("creditapp_plan_credits", kind="expired", credit_type="generation_credits") == 5 + 50 + 5


@pytest.mark.parametrize("plans, default, message", [
    ({"pro": {**PLANS["pro"], "allowance": {"gold": 1}}}, None, "PLANS['pro'].allowance: unknown credit type 'gold'"),
    ({"pro": {**PLANS["pro"], "interval": "month"}}, None, "PLANS['pro']: give one of interval"),
    ({"pro": {**PLANS["pro"], "interval_seconds": 0}}, None, "PLANS['pro'].interval_seconds must be"),
    ({"pro": {**PLANS["pro"], "price": -1}}, None, "PLANS['pro'].price must be"),
    ({"pro": {**PLANS["pro"], "colour": "red"}}, None, "PLANS['pro']: unknown fields ['colour']"),
    (PLANS, "pro", "DEFAULT_PLAN 'pro' must be free"),
    (PLANS, "gold", "DEFAULT_PLAN must be one of PLANS's plans"),
], ids=["credit-type", "two-intervals", "zero-seconds", "price", "unknown-field", "paid-default", "unknown-default"])
def test_a_bad_catalogue_stops_the_app_naming_the_field(database_url, plans, default, message):
    from creditapp.testing import make_app

    with pytest.raises(RuntimeError) as raised:
        make_app(database_url, PLANS=plans, DEFAULT_PLAN=default)
    assert message in str(raised.value)


def test_the_plans_answer_without_a_token_and_bad_choices_change_nothing(app, client, make_user):
    listed = client.get("/api/plans")
    assert listed.status_code == 200
    assert [plan["id"] for plan in listed.json["plans"]] == list(PLANS)
    assert listed.json["plans"][1] | {} == {**listed.json["plans"][1], "price": 1500, "interval_seconds": MINUTE,
                                           "rollover_max": {"generation_credits": 50}}
    assert client.get("/api/subscription").status_code == 401
    user = make_user()
    for body in ({"plan": "gold"}, {"plan": ""}, {}, {"plan": 3}, {"plan": "free", "extra": 1}):
        response = client.post("/api/subscription", json=body, headers=user.headers)
        assert response.status_code == 422, (body, response.json)
        assert response.json["error"] in ("unknown_plan", "validation_error"), response.json
    assert client.post("/api/subscription", json={"plan": "gold"}, headers=user.headers).json["error"] == "unknown_plan"
    assert client.delete("/api/subscription", headers=user.headers).json["error"] == "no_subscription"
    assert credits(user) == 5 and subscription(client, user)["id"] is None  # the default plan, no row
    ledger_is_clean()


def test_staff_assign_a_plan_without_payment_by_api_and_cli(app, client, make_user, manual_clock):
    admin, user, other = make_user(admin=True), make_user(), make_user()
    assert client.post(f"/api/admin/users/{user.id}/subscription", json={"plan": "staff"},
                       headers=user.headers).status_code == 403
    assigned = client.post(f"/api/admin/users/{user.id}/subscription", json={"plan": "staff"}, headers=admin.headers)
    assert assigned.status_code == 200 and assigned.json["plan"] == "staff", assigned.json
    assert credits(user) == 1000  # the free period's 5, topped up to staff's 1000 for this period
    assert client.post("/api/admin/users/999999/subscription", json={"plan": "staff"},
                       headers=admin.headers).status_code == 404
    result = app.test_cli_runner().invoke(args=["plans", "assign", other.username, "staff"])
    assert result.exit_code == 0 and '"plan": "staff"' in result.output, result.output
    bad = app.test_cli_runner().invoke(args=["plans", "assign", other.username, "gold"])
    assert bad.exit_code != 0 and "no plan 'gold'" in bad.output
    # Back down to free: this period keeps what it has, the next is free's.
    assert client.post("/api/subscription", json={"plan": "free"}, headers=user.headers).status_code == 200
    assert credits(user) == 1000
    manual_clock.advance(MINUTE)
    assert credits(user) == 5 and credits(other) == 1000
    assert "refilled" in app.test_cli_runner().invoke(args=["plans", "refill"]).output
    ledger_is_clean()


class TestWithoutADefaultPlan:
    @pytest.fixture
    def creditapp_settings(self):
        return {"PLANS": PLANS, "DEFAULT_PLAN": None}

    def test_accounts_have_no_allowance_until_a_plan_and_none_after_it(self, app, client, make_user, manual_clock):
        user = make_user(credits=3)
        described = subscription(client, user)
        assert (described["plan"], described["status"], described["remaining"]) == (None, "none", {})
        assert client.post("/api/subscription", json={"plan": "staff"}, headers=user.headers).status_code == 200
        assert credits(user) == 1003
        assert client.delete("/api/subscription", headers=user.headers).json["cancel_at_period_end"] is True
        manual_clock.advance(MINUTE)
        described = subscription(client, user)
        assert (described["plan"], described["status"]) == (None, "canceled") and credits(user) == 3, described
        ledger_is_clean()


def test_a_hold_at_the_boundary_when_the_database_clock_is_ahead_of_this_host(app, make_user, manual_clock,
                                                                             database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one clock: this host's")
    from creditapp.testing.databases import DatabaseClock

    user = make_user()
    assert credits(user) == 5
    (end,) = db.session.execute(select(LOTS.c.expires_at).where(LOTS.c.wallet_id == user.id)).scalars().all()
    manual_clock.advance((end - manual_clock.current).total_seconds() - 0.5)  # this host: just before the end
    ahead = DatabaseClock(database_url)
    try:
        ahead.set(end + timedelta(seconds=0.5))  # the database's: just after it
        hold = credit_service.reserve(user.id, 5, "generation_credits")  # the new period's 5
        credit_service.close(hold, succeeded=False)
    finally:
        ahead.set(manual_clock.current)
        ahead.engine.dispose()
    assert db.session.execute(select(func.count()).select_from(LOTS).where(LOTS.c.wallet_id == user.id)).scalar() == 2


def test_a_new_default_plan_applies_from_each_accounts_next_period(app, client, make_user, manual_clock, database_url):
    from creditapp.testing import make_app

    user = make_user()
    assert credits(user) == 5
    manual_clock.advance(MINUTE // 2)
    for default, expected_now, expected_next in (("staff", 5, 1000), (None, 1000, 0)):
        other = make_app(database_url, PLANS=PLANS, DEFAULT_PLAN=default)
        with other.app_context():
            other.extensions["creditapp.plans"].sync_default()
            assert credits(user) == expected_now  # the period under way keeps its lot
            manual_clock.advance(MINUTE)
            assert credits(user) == expected_next, default
            ledger_is_clean()
            db.session.remove()


def test_a_refill_the_database_asked_for_after_another_write_did_it_grants_nothing_more(app, client, make_user,
                                                                                       manual_clock):
    # Two holds at a boundary both hear `refill`; the first refills and sets the next due time.
    # The second's refill must not take that next time (the next period) as the boundary.
    user = make_user()
    assert credits(user) == 5
    credit_service.refill(user.id, due=True)
    assert db.session.execute(select(func.count()).select_from(LOTS).where(LOTS.c.wallet_id == user.id)).scalar() == 1
    assert credits(user) == 5
    ledger_is_clean()
