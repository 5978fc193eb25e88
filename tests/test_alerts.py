"""Low balance alerts: `balance.low` is written once when the spendable balance goes below its
threshold, in the transaction that moved it, and again only after the balance has been back at
or above it; `/api/credits/alerts` sets and shows the thresholds (both databases)."""
import json
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from creditapp.settings import TestingConfig, low_balance_thresholds
from creditapp.extensions import db
from creditapp.ledger import CreditType, IdempotencyKeyInUse, InsufficientCredits, credit_service, team_wallet
from creditapp.ledger import procedures
from creditapp.ledger.alerts import settings as alert_settings
from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.testing import ledger_is_clean, make_app
from creditapp.webhooks.queue import webhook_queue
from creditapp.webhooks.tables import EVENTS

from .test_round_trips import count, only_postgresql

GEN = CreditType.GENERATION_CREDITS
ALERTS = "/api/credits/alerts"


@pytest.fixture
def creditapp_settings():
    return {"LOW_BALANCE_THRESHOLDS": "generation_credits=5", "WEBHOOK_ALLOW_PRIVATE": True}


def alerts(type_: str = "balance.low") -> list[dict]:
    with atomic(write=False) as session:
        rows = session.execute(select(EVENTS).where(EVENTS.c.type == type_).order_by(EVENTS.c.id)).all()
    return [json.loads(row.payload) for row in rows]


def generate(client, user, headers=None):
    return client.post("/api/generate", json={"prompt": "a lighthouse"}, headers={**user.headers, **(headers or {})})


def test_an_alert_fires_once_below_and_again_only_after_the_balance_came_back(app, client, make_user, stub):
    user = make_user(credits=7)
    for _ in range(2):  # 7 -> 5: at the threshold is not below it
        assert generate(client, user).status_code == 200
    assert alerts() == []
    assert generate(client, user).status_code == 200  # 4: below
    assert alerts() == [{"wallet_id": user.id, "user_id": user.id, "team_id": None, "credit_type": "generation_credits",
                         "threshold": 5, "balance": 4}]
    for _ in range(4):  # all the way down, and refused at 0: still the one alert
        generate(client, user)
    assert credit_service.get_credit_balance(user.id).generation_credits == 0 and len(alerts()) == 1

    credit_service.grant(user.id, 3, GEN, reason="not enough to re-arm")  # 3: still below
    generate(client, user)
    assert len(alerts()) == 1
    credit_service.grant(user.id, 3, GEN, reason="back to the threshold")  # 2 + 3 = 5: re-armed
    assert client.get(ALERTS, headers=user.headers).json["generation_credits"]["alerted"] is False
    assert generate(client, user).status_code == 200  # 4 again
    assert [alert["balance"] for alert in alerts()] == [4, 4]
    ledger_is_clean()


def test_a_failed_generation_gives_its_hold_back_and_that_re_arms_the_alert(app, client, make_user, stub):
    """Spendable is what the balance shows: a hold takes credits out of it, its release puts them back."""
    user = make_user(credits=5)
    stub.fail_next(1)
    assert generate(client, user).status_code == 502  # held 1 (4: below), then released (5)
    assert [alert["balance"] for alert in alerts()] == [4]
    assert client.get(ALERTS, headers=user.headers).json["generation_credits"]["alerted"] is False
    assert generate(client, user).status_code == 200
    assert [alert["balance"] for alert in alerts()] == [4, 4]


def test_every_kind_of_change_decides_the_alert_in_its_own_transaction(app, make_user, manual_clock):
    """A charge without a hold, a refund, an expiry by time, a void, a take-back that leaves debt."""
    user = make_user(credits=6)
    credit_service.deduct_credits(user.id, 2, GEN)  # 4
    assert [a["balance"] for a in alerts()] == [4]
    hold = credit_service.reserve(user.id, 1, GEN)
    hold.pending = 1
    credit_service.close(hold, succeeded=True)  # 3
    credit_service.refund(hold.hold_id, reason="a bad image")  # 4: still below
    grant = credit_service.grant(user.id, 10, GEN, reason="expires", expires_at=utcnow() + timedelta(hours=1))
    assert len(alerts()) == 1  # 14: re-armed
    manual_clock.advance(3601)
    credit_service.release_expired()  # the lot lapses: 4, and the sweep's write tells
    assert [a["balance"] for a in alerts()] == [4, 4]
    credit_service.grant(user.id, 10, GEN, reason="paid")
    lot = credit_service.grant(user.id, 10, GEN, reason="paid, then reversed")
    credit_service.void_lot(lot.lot_id, reason="chargeback")  # 24 -> 14
    assert len(alerts()) == 2
    credit_service.take_back(user.id, 20, GEN, reason="refunded at the provider")  # 0, and 6 owed
    assert [(a["balance"], a["threshold"]) for a in alerts()] == [(4, 5), (4, 5), (0, 5)]
    assert grant.created
    ledger_is_clean()


def test_a_balance_read_decides_nothing_and_a_lot_past_its_expiry_counts_for_nothing(app, make_user, manual_clock):
    user = make_user(credits=2, lots=[{"amount": 10, "expires_at": utcnow() + timedelta(hours=1)}])
    manual_clock.advance(3601)
    assert credit_service.get_credit_balance(user.id).generation_credits == 2 and alerts() == []
    hold = credit_service.reserve(user.id, 1, GEN)  # the hold writes the lot off: 1
    credit_service.close(hold, succeeded=False)  # 2: still below
    assert [a["balance"] for a in alerts()] == [1]


def test_a_change_that_rolls_back_leaves_no_alert(app, make_user):
    user = make_user(credits=6)
    with pytest.raises(RuntimeError), credit_service.writing() as writes:
        writes.take_back(user.id, 3, GEN, reason="a refund whose own write then failed")
        raise RuntimeError("the purchase could not be marked refunded")
    with pytest.raises(InsufficientCredits):
        credit_service.deduct_credits(user.id, 7, GEN)
    assert alerts() == []
    assert credit_service.alert_thresholds(user.id)["generation_credits"]["alerted"] is False
    credit_service.deduct_credits(user.id, 2, GEN)
    assert [a["balance"] for a in alerts()] == [4]


def test_a_hold_call_that_the_database_rolls_back_leaves_no_alert(app, make_user, database_url):
    """The function's last step refuses (its key was claimed meanwhile): the hold, and the alert
    it had written on the way, go with the call's rollback."""
    only_postgresql(database_url)
    user = make_user(credits=10)
    credit_service.hold_or_replay(user.id, 1, GEN, key="taken", fingerprint="f")  # 9, and the key claimed
    call = (user.id, GEN.value, 5, 60, None, user.id, "taken", "f", "r" * 32, False, user.id, None, [], None,
            alert_settings.as_json)  # no replay step: it finds the key only when it claims it, last
    with pytest.raises(IdempotencyKeyInUse):
        procedures.call(procedures.HOLD, call)
    assert credit_service.get_credit_balance(user.id).generation_credits == 9 and alerts() == []


def test_the_thresholds_route_shows_defaults_and_sets_overrides(app, client, make_user, stub):
    user = make_user(credits=10, tokens=100)
    shown = client.get(ALERTS, headers=user.headers)
    assert shown.status_code == 200
    assert shown.json == {"generation_credits": {"threshold": 5, "default": True, "alerted": False},
                          "ai_tokens": {"threshold": None, "default": True, "alerted": False}}
    changed = client.put(ALERTS, json={"generation_credits": 9, "ai_tokens": 0}, headers=user.headers)
    assert changed.status_code == 200
    assert changed.json == {"generation_credits": {"threshold": 9, "default": False, "alerted": False},
                            "ai_tokens": {"threshold": 0, "default": False, "alerted": False}}
    assert client.get(ALERTS, headers=user.headers).json == changed.json
    generate(client, user)  # 9: at the threshold
    generate(client, user)  # 8
    assert [(a["threshold"], a["balance"]) for a in alerts()] == [(9, 8)]
    # Back to the default (5), which the balance is above: re-armed, and it tells again below 5.
    back = client.put(ALERTS, json={"generation_credits": None}, headers=user.headers)
    assert back.json["generation_credits"] == {"threshold": 5, "default": True, "alerted": False}
    assert back.json["ai_tokens"] == {"threshold": 0, "default": False, "alerted": False}  # untouched
    for _ in range(4):
        generate(client, user)
    assert [(a["threshold"], a["balance"]) for a in alerts()] == [(9, 8), (5, 4)]


def test_a_threshold_above_the_balance_tells_at_the_next_change_not_at_once(app, client, make_user, stub):
    user = make_user(credits=10)
    assert client.put(ALERTS, json={"generation_credits": 50}, headers=user.headers).status_code == 200
    assert alerts() == []  # no balance moved
    generate(client, user)
    assert [(a["threshold"], a["balance"]) for a in alerts()] == [(50, 9)]


BAD_BODIES = [{"generation_credits": -1}, {"generation_credits": 1.5}, {"generation_credits": "5"},
              {"generation_credits": True}, {"generation_credits": 10**13}, {"gold_coins": 5}, [5], "5"]


def test_a_bad_threshold_is_a_422_and_changes_nothing(app, client, make_user):
    user = make_user(credits=10)
    for body in BAD_BODIES:
        response = client.put(ALERTS, json={**body, "ai_tokens": 7} if isinstance(body, dict) else body,
                              headers=user.headers)
        assert (response.status_code, response.json["error"]) == (422, "validation_error"), (body, response.json)
    assert client.get(ALERTS, headers=user.headers).json == {
        "generation_credits": {"threshold": 5, "default": True, "alerted": False},
        "ai_tokens": {"threshold": None, "default": True, "alerted": False}}


def test_keys_read_their_wallets_thresholds_and_only_a_login_token_changes_them(app, client, make_user):
    user = make_user(credits=10)
    key = client.post("/api/keys", json={"name": "ci"}, headers=user.headers).json["key"]
    by_key = {"X-API-Key": key}
    assert client.get(ALERTS, headers=by_key).json["generation_credits"]["threshold"] == 5
    refused = client.put(ALERTS, json={"generation_credits": 1}, headers=by_key)
    assert (refused.status_code, refused.json["error"]) == (403, "login_token_required")
    assert client.get(ALERTS).status_code == 401
    assert client.put(ALERTS, json={"generation_credits": 1}).status_code == 401


def test_a_team_wallet_has_its_own_thresholds_set_by_its_owner_and_admins(app, client, make_user, stub):
    owner, member = make_user(), make_user()
    team = client.post("/api/teams", json={"name": "acme"}, headers=owner.headers).json
    client.post(f"/api/teams/{team['id']}/members", json={"username": member.username, "role": "member"},
                headers=owner.headers)
    wallet = team_wallet(team["id"])
    credit_service.grant(wallet, 10, GEN, reason="team credits")
    as_team = {"X-Team": str(team["id"])}
    refused = client.put(ALERTS, json={"generation_credits": 8}, headers={**member.headers, **as_team})
    assert (refused.status_code, refused.json["error"]) == (403, "forbidden")
    assert client.put(ALERTS, json={"generation_credits": 8}, headers={**owner.headers, **as_team}).status_code == 200
    assert client.get(ALERTS, headers={**member.headers, **as_team}).json["generation_credits"]["threshold"] == 8
    assert client.get(ALERTS, headers=member.headers).json["generation_credits"]["default"] is True  # their own
    stranger = make_user()
    assert client.get(ALERTS, headers={**stranger.headers, **as_team}).status_code == 404
    for _ in range(3):
        assert generate(client, member, as_team).status_code == 200  # 10 -> 7
    assert alerts() == [{"wallet_id": wallet, "user_id": None, "team_id": team["id"],
                         "credit_type": "generation_credits", "threshold": 8, "balance": 7}]


def test_a_paid_request_that_alerts_is_still_two_statements(app, client, make_user, stub, database_url):
    """The hold and the close decide the alert inside their own function call on PostgreSQL."""
    only_postgresql(database_url)
    user = make_user(credits=7)
    generate(client, user)  # warm-up: 6
    response, sent = count(lambda: generate(client, user))  # 5
    assert response.status_code == 200 and len(sent) == 2 and alerts() == []
    response, sent = count(lambda: generate(client, user))  # 4: below
    assert response.status_code == 200 and len(sent) == 2
    assert [a["balance"] for a in alerts()] == [4]


def test_the_database_functions_and_the_service_write_the_same_event(app, make_user, database_url):
    """The close (a function call on PostgreSQL) and a grant's take-back (the service on both)."""
    user = make_user(credits=6)
    hold = credit_service.reserve(user.id, 2, GEN)  # 4: the hold alerts
    credit_service.close(hold, succeeded=False)  # 6: re-armed
    credit_service.take_back(user.id, 2, GEN, reason="refunded")  # 4
    first, second = alerts()
    assert first == second == {"wallet_id": user.id, "user_id": user.id, "team_id": None,
                               "credit_type": "generation_credits", "threshold": 5, "balance": 4}


def test_no_threshold_means_no_alert_and_no_work(database_url):
    app = make_app(database_url)  # LOW_BALANCE_THRESHOLDS unset
    with app.app_context():
        user_id = credit_service_user(app)
        credit_service.deduct_credits(user_id, 3, GEN)
        assert alerts() == []
        assert credit_service.alert_thresholds(user_id)["generation_credits"] == {
            "threshold": None, "default": True, "alerted": False}
        db.session.remove()
        db.engine.dispose()


def credit_service_user(app) -> int:
    from creditapp import users
    from creditapp.ledger import Balance

    return users.create_user("nobody-alerted", "correct-horse-battery", signup_grant=Balance(3, 0),
                             hash_method=app.config["PASSWORD_HASH_METHOD"])["id"]


@pytest.mark.parametrize("value, message", [
    ("generation_credits", "credit_type=threshold pairs"),
    ("gold=5", "'gold', not a credit type"),
    ("generation_credits=-1", "whole number"),
    ("generation_credits=five", "whole number"),
    ("generation_credits=5,generation_credits=6", "twice"),
    ("ai_tokens=1000000000001", "from 0 to"),
])
def test_a_bad_setting_is_one_line_naming_it(value, message):
    with pytest.raises(RuntimeError) as refused:
        make_app("sqlite://", LOW_BALANCE_THRESHOLDS=value)  # refused before any database is used
    assert "LOW_BALANCE_THRESHOLDS" in str(refused.value) and message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_the_setting_reads_pairs_with_spaces_and_nothing_as_no_default():
    assert low_balance_thresholds(" generation_credits = 5 , ai_tokens=1000 ") == {
        "generation_credits": 5, "ai_tokens": 1000}
    assert low_balance_thresholds("") == {} and TestingConfig.LOW_BALANCE_THRESHOLDS == ""


@pytest.mark.slow
def test_fifty_spends_at_once_across_the_threshold_send_one_alert(app, client, make_user, live_server,
                                                                   webhook_receiver):
    """On gunicorn: 50 generations at once take a balance of 60 past a threshold of 30. The holds
    queue on the account's lock, so exactly one of them is the one that goes below: one
    balance.low is written, and delivered (by the sweep: the testing server has no job worker),
    signed, to a real receiver."""
    admin = make_user(admin=True)
    user = make_user(credits=60)
    assert client.put(ALERTS, json={"generation_credits": 30}, headers=user.headers).status_code == 200
    endpoint = client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": ["balance.low"]},
                           headers=admin.headers)
    assert endpoint.status_code == 201, endpoint.json
    webhook_receiver.secret = endpoint.json["secret"]
    with live_server(AI_STUB_LATENCY_MS=20) as server:
        answers = server.fire(50, "POST", "/api/generate", json={"prompt": "at once"}, headers=user.headers)
    assert [answer.status for answer in answers] == [200] * 50
    assert webhook_queue().sweep(inline=True)["sent"] == 1
    (got,) = webhook_receiver.wait_for(1)
    assert alerts() == [{"wallet_id": user.id, "user_id": user.id, "team_id": None,
                         "credit_type": "generation_credits", "threshold": 30, "balance": 29}]
    assert got.type == "balance.low" and got.payload["data"] == alerts()[0]
    assert len(webhook_receiver.received) == 1
    assert credit_service.get_credit_balance(user.id).generation_credits == 10
    ledger_is_clean()
