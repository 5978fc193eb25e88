"""Outgoing webhooks through the API and the sweep, to a real receiver on loopback that verifies
every signature with the `standardwebhooks` package: retries on the schedule through errors and
timeouts with one webhook-id, URL checks at subscription and at delivery, endpoints disabled
after failing for days, the deliveries endpoint and a manual retry."""
import json

import pytest

from creditapp.ledger.clock import utcnow
from creditapp.testing.servers import fire_together
from creditapp.ledger.transactions import atomic
from creditapp.webhooks import addresses, outbox
from creditapp.webhooks.queue import webhook_queue

SCHEDULE = "0,5,60"


@pytest.fixture
def creditapp_settings():
    return {"WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": SCHEDULE, "WEBHOOK_TIMEOUT_SECONDS": 0.5}


@pytest.fixture
def admin(make_user):
    return make_user(admin=True)


def subscribe(client, admin, receiver, events=("purchase.paid",), **more) -> dict:
    response = client.post("/api/admin/webhooks", json={"url": receiver.url, "events": list(events), **more},
                           headers=admin.headers)
    assert response.status_code == 201, response.json
    receiver.secret = response.json["secret"]
    return response.json


def emit(event_type="purchase.paid", **data) -> None:
    with atomic() as session:
        outbox.emit(session, event_type, data or {"purchase_id": 1}, at=utcnow())


def sweep() -> dict:
    return webhook_queue().sweep(inline=True)


def deliveries(client, admin, endpoint_id) -> list:
    response = client.get(f"/api/admin/webhooks/{endpoint_id}/deliveries", headers=admin.headers)
    assert response.status_code == 200, response.json
    return response.json["items"]


def test_a_subscription_answers_its_secret_once_and_an_event_arrives_signed(client, admin, webhook_receiver):
    endpoint = subscribe(client, admin, webhook_receiver, events=["purchase.paid", "job.failed"],
                         description="CRM")
    assert endpoint["secret"].startswith("whsec_")
    assert endpoint["events"] == ["purchase.paid", "job.failed"] and endpoint["disabled"] is False
    listed = client.get("/api/admin/webhooks", headers=admin.headers).json["items"]
    assert [e["id"] for e in listed] == [endpoint["id"]] and "secret" not in listed[0]
    assert "secret" not in client.get(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).json
    emit("purchase.paid", purchase_id=7, amount=500)
    emit("purchase.refunded", purchase_id=7)  # not subscribed
    assert sweep() == {"dispatched": 1, "sent": 1}
    (got,) = webhook_receiver.verified()
    assert got.payload["type"] == "purchase.paid" and got.payload["data"] == {"purchase_id": 7, "amount": 500}
    assert got.payload["timestamp"].endswith("Z")
    assert got.signature.startswith("v1,") and got.webhook_id.startswith("msg_")
    (delivery,) = deliveries(client, admin, endpoint["id"])
    assert delivery["status"] == "succeeded" and delivery["webhook_id"] == got.webhook_id
    assert [(a["status"], a["response_code"]) for a in delivery["attempts"]] == [("succeeded", 200)]
    assert sweep() == {"dispatched": 0, "sent": 0}  # nothing twice
    assert len(webhook_receiver.received) == 1


def test_errors_and_timeouts_are_retried_on_the_schedule_with_one_webhook_id(
        client, admin, webhook_receiver, manual_clock):
    endpoint = subscribe(client, admin, webhook_receiver)
    webhook_receiver.fail_next(1, status=500)
    webhook_receiver.hang_next(1, seconds=1.5)  # past WEBHOOK_TIMEOUT_SECONDS
    emit()
    sweep()
    assert [r.answered for r in webhook_receiver.received] == [500]
    manual_clock.advance(4.9)
    assert sweep()["sent"] == 0  # the second attempt is due 5 s after the first
    manual_clock.advance(0.1)
    sweep()
    manual_clock.advance(60)
    sweep()
    got = webhook_receiver.wait_for(1)
    ids = {r.webhook_id for r in webhook_receiver.received}
    assert len(webhook_receiver.received) == 3 and len(ids) == 1 and got[0].webhook_id in ids
    (delivery,) = deliveries(client, admin, endpoint["id"])
    assert delivery["status"] == "succeeded"
    statuses = [(a["status"], a["response_code"]) for a in delivery["attempts"]]
    assert statuses == [("failed", 500), ("failed", None), ("succeeded", 200)]
    assert "timeout" in delivery["attempts"][1]["error"]


def test_a_delivery_whose_schedule_runs_out_fails_and_can_be_retried_by_hand(
        client, admin, webhook_receiver, manual_clock):
    endpoint = subscribe(client, admin, webhook_receiver)
    webhook_receiver.fail_next(3, status=503)
    emit()
    for wait in (0, 5, 60, 3600):
        manual_clock.advance(wait)
        sweep()
    (delivery,) = deliveries(client, admin, endpoint["id"])
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == 3
    assert webhook_receiver.verified() == []
    answer = client.post(f"/api/admin/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/retry",
                         headers=admin.headers)
    assert answer.status_code == 202 and answer.json["status"] == "pending"
    sweep()
    (got,) = webhook_receiver.verified()
    assert got.webhook_id == delivery["webhook_id"]
    assert deliveries(client, admin, endpoint["id"])[0]["status"] == "succeeded"
    for path in (f"{endpoint['id']}/deliveries/{delivery['id'] + 1}/retry",
                 f"{endpoint['id'] + 1}/deliveries/{delivery['id']}/retry"):
        missing = client.post(f"/api/admin/webhooks/{path}", headers=admin.headers)
        assert missing.status_code == 404 and missing.json["error"] == "unknown_webhook_delivery"


def test_an_endpoint_failing_every_attempt_for_days_is_disabled_and_shown_so(
        client, admin, webhook_receiver, manual_clock):
    endpoint = subscribe(client, admin, webhook_receiver)
    webhook_receiver.fail_next(100, status=500)
    emit()
    sweep()
    manual_clock.advance(4 * 86400)
    emit()
    sweep()
    assert client.get(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).json["disabled"] is False
    manual_clock.advance(86400)
    emit()
    sweep()
    shown = client.get(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).json
    assert shown["disabled"] is True and shown["disabled_at"] is not None
    assert "every attempt failed since" in shown["disabled_reason"]
    before = len(webhook_receiver.received)
    emit()
    manual_clock.advance(3600)
    sweep()
    assert len(webhook_receiver.received) == before  # nothing more is sent to it
    # The first two events' retries stopped (skipped once it was disabled); the last made none.
    statuses = [d["status"] for d in deliveries(client, admin, endpoint["id"])]
    assert len(statuses) == 3 and set(statuses) == {"failed", "skipped"}
    enabled = client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"disabled": False}, headers=admin.headers)
    assert enabled.json["disabled"] is False and enabled.json["failing_since"] is None


def test_a_success_between_failures_starts_the_count_again(client, admin, webhook_receiver, manual_clock):
    endpoint = subscribe(client, admin, webhook_receiver)
    webhook_receiver.fail_next(1)
    emit()
    sweep()
    manual_clock.advance(3 * 86400)
    emit()
    sweep()  # the second event goes through (so does the first's retry)
    webhook_receiver.fail_next(1)
    manual_clock.advance(2 * 86400 + 1)
    emit()
    sweep()
    shown = client.get(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).json
    assert shown["disabled"] is False and shown["failing_since"] is not None


def test_urls_that_are_not_http_or_carry_credentials_or_are_private_are_refused(app, client, admin):
    refused = [("ftp://example.com/hook", "http and https"), ("https://user:pass@example.com/hook", "credentials"),
               ("https://token@example.com/hook", "credentials"), ("http:///nohost", "no host"),
               ("not a url", "spaces")]
    private = ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/", "http://169.254.169.254/latest",
               "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://192.168.0.10/", "http://0.0.0.0/",
               "http://2130706433/",
               # IPv6 forms a gateway turns into an IPv4 address: NAT64, 6to4, IPv4-compatible.
               "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/",
               "http://[::127.0.0.1]/"]
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    refused += [(url, "private, loopback or link-local") for url in private]
    for url, why in refused:
        response = client.post("/api/admin/webhooks", json={"url": url, "events": ["job.failed"]},
                               headers=admin.headers)
        assert response.status_code == 422 and response.json["error"] == "invalid_webhook_url", (url, response.json)
        assert why in response.json["message"], (url, response.json)
    assert client.get("/api/admin/webhooks", headers=admin.headers).json["items"] == []
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True  # the setting lets loopback through, never ftp or credentials
    assert client.post("/api/admin/webhooks", json={"url": private[0], "events": ["job.failed"]},
                       headers=admin.headers).status_code == 201
    assert client.post("/api/admin/webhooks", json={"url": refused[1][0], "events": ["job.failed"]},
                       headers=admin.headers).status_code == 422


def test_the_address_is_checked_again_at_delivery_against_the_one_connected_to(
        app, client, admin, webhook_receiver, monkeypatch):
    """DNS rebinding: a name public when subscribed, 127.0.0.1 when delivered to, gets nothing."""
    app.config["WEBHOOK_ALLOW_PRIVATE"] = False
    answers = {"hooks.example.test": ["93.184.215.14"]}
    monkeypatch.setattr(addresses, "resolve", lambda host, port: answers[host])
    port = webhook_receiver.url.split(":")[2].split("/")[0]
    endpoint = client.post(
        "/api/admin/webhooks", json={"url": f"http://hooks.example.test:{port}/hooks", "events": ["job.failed"]},
        headers=admin.headers).json
    webhook_receiver.secret = endpoint["secret"]
    answers["hooks.example.test"] = ["127.0.0.1"]
    emit("job.failed", job_id="j1")
    sweep()
    assert webhook_receiver.received == []
    (delivery,) = deliveries(client, admin, endpoint["id"])
    assert delivery["attempts"][0]["status"] == "failed" and "refused" in delivery["attempts"][0]["error"]
    # The same name, allowed to be private: the attempt goes to the address it checked.
    app.config["WEBHOOK_ALLOW_PRIVATE"] = True
    client.post(f"/api/admin/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/retry", headers=admin.headers)
    sweep()
    (got,) = webhook_receiver.verified()
    assert json.loads(got.body)["data"] == {"job_id": "j1"}


def test_bad_input_is_a_422_and_unknown_ids_are_404(client, admin, make_user, webhook_receiver):
    for body in ({"url": webhook_receiver.url, "events": ["purchase.eaten"]},
                 {"url": webhook_receiver.url, "events": []},
                 {"url": webhook_receiver.url},
                 {"url": 7, "events": ["job.failed"]},
                 {"url": webhook_receiver.url, "events": ["job.failed"], "secret": "mine"}):
        response = client.post("/api/admin/webhooks", json=body, headers=admin.headers)
        assert response.status_code == 422 and response.json["error"] == "validation_error", (body, response.json)
    endpoint = subscribe(client, admin, webhook_receiver)
    patched = client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"events": ["nope"]}, headers=admin.headers)
    assert patched.status_code == 422 and patched.json["error"] == "validation_error"
    moved = client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"url": "ftp://example.com/"},
                         headers=admin.headers)
    assert moved.status_code == 422 and moved.json["error"] == "invalid_webhook_url"
    assert client.get(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).json["url"] == endpoint["url"]
    bad_query = client.get(f"/api/admin/webhooks/{endpoint['id']}/deliveries?limit=0", headers=admin.headers)
    assert bad_query.status_code == 422
    for method in ("get", "patch", "delete"):
        missing = getattr(client, method)(f"/api/admin/webhooks/{endpoint['id'] + 1}", json={}, headers=admin.headers)
        assert missing.status_code == 404 and missing.json["error"] == "unknown_webhook_endpoint"
    assert client.get(f"/api/admin/webhooks/{endpoint['id'] + 1}/deliveries", headers=admin.headers).status_code == 404
    user = make_user()
    assert client.get("/api/admin/webhooks", headers=user.headers).status_code == 403
    assert client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": ["job.failed"]},
                       headers=user.headers).status_code == 403


def test_a_patched_endpoint_gets_what_it_subscribes_to_and_a_deleted_one_nothing(
        client, admin, webhook_receiver):
    endpoint = subscribe(client, admin, webhook_receiver)
    changed = client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"events": ["job.succeeded"]},
                           headers=admin.headers)
    assert changed.status_code == 200 and changed.json["events"] == ["job.succeeded"]
    emit("purchase.paid")
    emit("job.succeeded", job_id="j")
    sweep()
    assert [r.type for r in webhook_receiver.verified()] == ["job.succeeded"]
    assert client.delete(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).status_code == 204
    emit("job.succeeded", job_id="k")
    sweep()
    assert len(webhook_receiver.received) == 1
    assert client.get("/api/admin/webhooks", headers=admin.headers).json["items"] == []


def test_sweeps_running_at_once_deliver_each_event_once(app, client, admin, webhook_receiver):
    """Fan-out and claims lock their rows: six sweeps started at the same instant make one
    delivery per event and send each once."""
    endpoint = subscribe(client, admin, webhook_receiver)
    for n in range(30):
        emit("purchase.paid", purchase_id=n)

    def sweep_in_a_thread(_i):
        with app.app_context():
            return sweep()

    counts = fire_together(6, sweep_in_a_thread)
    assert sum(c["dispatched"] for c in counts) == 30
    got = webhook_receiver.verified()
    assert sorted(r.payload["data"]["purchase_id"] for r in got) == list(range(30))
    assert len({r.webhook_id for r in got}) == 30 == len(webhook_receiver.received)
    assert {d["status"] for d in deliveries(client, admin, endpoint["id"])} == {"succeeded"}


def test_every_change_of_an_endpoint_is_an_admin_action(client, admin, webhook_receiver):
    endpoint = subscribe(client, admin, webhook_receiver)
    assert client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"description": "CRM"},
                        headers=admin.headers).status_code == 200
    emit()
    sweep()
    (delivery,) = deliveries(client, admin, endpoint["id"])
    assert client.post(f"/api/admin/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/retry",
                       headers=admin.headers).status_code == 202
    refused = client.patch(f"/api/admin/webhooks/{endpoint['id']}", json={"url": "ftp://example.com/"},
                           headers=admin.headers)
    assert refused.status_code == 422
    assert client.delete(f"/api/admin/webhooks/{endpoint['id']}", headers=admin.headers).status_code == 204
    logged = client.get("/api/admin/actions", headers=admin.headers)
    assert logged.status_code == 200, logged.json
    mine = [a for a in logged.json["items"] if a["action"].startswith("webhook.")]
    assert [a["action"] for a in reversed(mine)] == [
        "webhook.created", "webhook.changed", "webhook.retried", "webhook.deleted"]  # the refused PATCH: none
    assert all(a["actor_user_id"] == admin.id for a in mine)
    assert mine[-1]["details"]["endpoint_id"] == endpoint["id"]


def test_a_deleted_endpoints_id_is_never_given_to_a_new_one(client, admin, webhook_receiver):
    first = subscribe(client, admin, webhook_receiver)
    assert client.delete(f"/api/admin/webhooks/{first['id']}", headers=admin.headers).status_code == 204
    second = subscribe(client, admin, webhook_receiver)
    assert second["id"] > first["id"]
    stale = client.delete(f"/api/admin/webhooks/{first['id']}", headers=admin.headers)
    assert stale.status_code == 404 and stale.json["error"] == "unknown_webhook_endpoint"
    assert [e["id"] for e in client.get("/api/admin/webhooks", headers=admin.headers).json["items"]] == [second["id"]]
