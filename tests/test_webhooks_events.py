"""Every event creditapp emits reaches a real receiver, signed: purchases (paid, refunded,
disputed) through the test provider, subscriptions (renewed, past due) through the provider's
invoices, jobs (succeeded, failed) through the job queue; each written in the transaction of
its change, so a change that rolls back sends nothing. Both databases."""
import pytest

from creditapp.ledger.transactions import atomic
from creditapp.webhooks.queue import webhook_queue
from creditapp.webhooks.tables import EVENTS
from tests.test_jobs import submit
from tests.test_plans import MINUTE, PLANS
from tests.test_plans_invoices import Paid
from tests.test_purchases import buy, page_path

TYPES = ["purchase.paid", "purchase.refunded", "purchase.disputed", "subscription.renewed",
         "subscription.past_due", "job.succeeded", "job.failed"]


@pytest.fixture
def creditapp_settings():
    return {"WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": "0", "PLANS": PLANS, "DEFAULT_PLAN": "free",
            "JOB_RETRY_BACKOFF_SECONDS": 0}


@pytest.fixture
def receiver(client, make_user, webhook_receiver):
    admin = make_user(admin=True)
    answer = client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": TYPES},
                         headers=admin.headers)
    webhook_receiver.secret = answer.json["secret"]
    return webhook_receiver


def delivered(receiver, event_type: str) -> list[dict]:
    webhook_queue().sweep(inline=True)
    return [r.payload["data"] for r in receiver.verified() if r.type == event_type]


def test_purchases_tell_when_paid_refunded_and_disputed(app, client, make_user, receiver):
    user = make_user()
    first, second = buy(client, user), buy(client, user)
    client.post(page_path(first), data={"action": "pay"})
    (paid,) = delivered(receiver, "purchase.paid")
    assert paid["purchase_id"] == first["id"] and paid["user_id"] == user.id and paid["wallet_id"] == user.id
    assert (paid["status"], paid["credits"], paid["credit_type"], paid["amount"], paid["currency"]) == (
        "paid", 20, "generation_credits", 500, "usd")
    assert paid["lot_id"] is not None and paid["paid_at"].endswith("Z")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["purchases", "simulate", str(first["id"]), "refund", "--amount", "250"])
    assert "applied" in result.output, result.output
    (refunded,) = delivered(receiver, "purchase.refunded")
    assert (refunded["status"], refunded["refunded"], refunded["refunded_now"], refunded["credits_taken_back"]) == (
        "partially_refunded", 250, 250, 10)
    runner.invoke(args=["purchases", "simulate", str(second["id"]), "pay"])
    runner.invoke(args=["purchases", "simulate", str(second["id"]), "dispute"])
    (disputed,) = delivered(receiver, "purchase.disputed")
    assert (disputed["purchase_id"], disputed["status"], disputed["dispute"]) == (second["id"], "disputed", "opened")
    # A repeated provider event moves nothing, and tells nothing.
    runner.invoke(args=["purchases", "simulate", str(second["id"]), "dispute"])
    assert len(delivered(receiver, "purchase.disputed")) == 1
    assert len(delivered(receiver, "purchase.paid")) == 2


def test_subscriptions_tell_when_renewed_and_when_past_due(app, client, make_user, receiver, manual_clock):
    manual_clock.advance(-manual_clock.current.microsecond / 1e6)  # Stripe's whole seconds
    user = make_user()
    paid = Paid(app, client, user)
    assert delivered(receiver, "subscription.renewed") == []  # the first period is the start, not a renewal
    manual_clock.advance(MINUTE)
    invoice = paid.paid(1)
    (renewed,) = delivered(receiver, "subscription.renewed")
    assert (renewed["subscription_id"], renewed["user_id"], renewed["plan"], renewed["status"]) == (
        paid.id, user.id, "pro", "active")
    assert renewed["invoice_id"] == invoice and renewed["amount"] == 1500 and renewed["currency"] == "usd"
    assert renewed["allowance"]["generation_credits"] == 100
    manual_clock.advance(MINUTE)
    paid.send("invoice.payment_failed", paid.invoice(2, status="open"))
    (past_due,) = delivered(receiver, "subscription.past_due")
    assert (past_due["subscription_id"], past_due["status"], past_due["wallet_id"]) == (paid.id, "past_due", user.id)
    # The period the failed invoice was for: the one after the renewed (paid) one.
    assert past_due["period_start"] == renewed["period_end"] and past_due["period_end"] > past_due["period_start"]


def test_jobs_tell_when_they_succeed_and_when_they_fail(app, client, make_user, receiver, job_queue, fake_ai):
    user = make_user(credits=5)
    assert submit(client, user).status_code == 202
    job_queue.drain()
    (succeeded,) = delivered(receiver, "job.succeeded")
    assert (succeeded["user_id"], succeeded["feature"], succeeded["status"], succeeded["charged"]) == (
        user.id, "basic_generation", "succeeded", 1)
    assert succeeded["credit_type"] == "generation_credits" and succeeded["error"] is None
    fake_ai.fail_next(app.config["JOB_MAX_ATTEMPTS"])
    job = submit(client, user).json
    job_queue.drain()
    (failed,) = delivered(receiver, "job.failed")
    assert (failed["job_id"], failed["status"], failed["charged"], failed["error"]) == (
        job["job_id"], "failed", 0, "generation_failed")
    assert failed["attempts"] == app.config["JOB_MAX_ATTEMPTS"]


def test_a_change_that_rolls_back_sends_nothing(app, client, make_user, receiver, monkeypatch):
    """The purchase is paid, its lot granted and its event emitted, then the transaction fails
    before its commit: none of it stays, and nothing is sent until the move is made for real."""
    from creditapp.payments import notices

    user = make_user()
    purchase = buy(client, user)
    real_moved = notices.moved

    def emit_then_fail(*args):
        real_moved(*args)
        raise RuntimeError("the database went away before the commit")

    monkeypatch.setattr(notices, "moved", emit_then_fail)
    result = app.test_cli_runner().invoke(args=["purchases", "simulate", str(purchase["id"]), "pay"])
    assert "applied" not in result.output, result.output
    monkeypatch.undo()
    with atomic(write=False) as session:
        assert session.execute(EVENTS.select()).all() == []
    assert delivered(receiver, "purchase.paid") == [] and receiver.received == []
    # The provider's event waits in the inbox; applied later (a read of the purchase does it),
    # it moves the purchase and tells it, once.
    assert client.get(f"/api/purchases/{purchase['id']}", headers=user.headers).json["status"] == "paid"
    assert [data["purchase_id"] for data in delivered(receiver, "purchase.paid")] == [purchase["id"]]
