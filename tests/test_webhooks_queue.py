"""Deliveries on the job queue, as they run in production: the embedded queue of a server with
no broker (a commit's dispatch gets them going, retries through errors and timeouts with one
webhook-id), `flask webhooks dispatch` for events whose dispatch never ran, and a `flask jobs
worker` on Redis or RabbitMQ SIGKILLed in the middle of a delivery: it is delivered once more."""
import signal

import pytest

from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.testing import make_app
from creditapp.testing.brokers import broker_queue
from creditapp.testing.servers import flask_cli, job_workers, server_env, stop
from creditapp.jobs.queue import job_queue
from creditapp.webhooks import outbox
from creditapp.webhooks.queue import webhook_queue
from creditapp.webhooks.tables import ATTEMPTS

FAST = {"WEBHOOK_ALLOW_PRIVATE": 1, "WEBHOOK_RETRY_SCHEDULE": "0,0.3,0.3", "WEBHOOK_TIMEOUT_SECONDS": 1,
        "WEBHOOK_SWEEP_SECONDS": 3600}  # no sweep: what is delivered was dispatched by its commit


@pytest.fixture
def creditapp_settings():
    return {"WEBHOOK_ALLOW_PRIVATE": True}


def emit(event_type: str, **data) -> None:
    with atomic() as session:
        outbox.emit(session, event_type, data, at=utcnow())


def test_a_commit_gets_its_event_delivered_by_the_embedded_queue_through_errors_and_a_timeout(
        database_url, make_user, webhook_receiver):
    """A server with no broker: the job runs on its embedded worker, the job's commit dispatches
    its event, and the retries follow the schedule (no sweep runs meanwhile)."""
    server = make_app(database_url, JOBS_BROKER_URL="", JOBS_EMBEDDED_THREADS=2, **FAST)
    with server.app_context():
        client = server.test_client()
        admin, user = make_user(admin=True), make_user(credits=3)
        answer = client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": ["job.succeeded"]},
                             headers=admin.headers)
        webhook_receiver.secret = answer.json["secret"]
        webhook_receiver.fail_next(1, status=500)
        webhook_receiver.hang_next(1, seconds=2)  # past the attempt's timeout
        job = client.post("/api/generate", json={"prompt": "a kite"},
                          headers={**user.headers, "Prefer": "respond-async"})
        assert job.status_code == 202, job.json
        try:
            (got,) = webhook_receiver.wait_for(1, timeout=30)
        finally:
            job_queue()._worker.stop()
            webhook_queue().stop_sweeper()
    assert got.payload["data"]["job_id"] == job.json["job_id"]
    attempts = webhook_receiver.received
    assert [(r.answered, bool(r.delayed)) for r in attempts] == [(500, False), (200, True), (200, False)]
    assert {r.webhook_id for r in attempts} == {got.webhook_id}
    assert len({r.signature for r in attempts}) >= 2  # signed anew for each attempt's timestamp


@pytest.mark.slow
def test_an_event_whose_dispatch_never_ran_is_sent_by_the_sweep(client, database_url, make_user, webhook_receiver):
    admin = make_user(admin=True)
    env = server_env(database_url, **FAST)
    answer = client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": ["purchase.paid"]},
                         headers=admin.headers)
    webhook_receiver.secret = answer.json["secret"]
    emit("purchase.paid", purchase_id=9)  # committed; the stub queue of the tests sends no dispatch
    assert webhook_receiver.received == []
    result = flask_cli(env, "webhooks", "dispatch")
    assert result.returncode == 0, result.stderr
    # Its delivery may have been made by the test app's own after-commit dispatch (the stub
    # queue sends nothing): what matters is that the sweep sends it, once.
    assert "1 due delivery(ies) delivered here" in result.stdout, result.stdout
    (got,) = webhook_receiver.verified()
    assert got.payload["data"] == {"purchase_id": 9}
    assert "dispatched 0" in flask_cli(env, "webhooks", "dispatch").stdout
    assert len(webhook_receiver.received) == 1


@pytest.mark.slow
def test_a_worker_killed_mid_delivery_leaves_it_to_be_delivered_again(
        app, client, database_url, make_user, webhook_receiver, tmp_path):
    # Both brokers, one on each database (the broker's redelivery is Dramatiq's; what is tested
    # is the lease), to keep the run short.
    broker = "redis" if database_url.startswith("sqlite") else "rabbitmq"
    admin = make_user(admin=True)
    answer = client.post("/api/admin/webhooks", json={"url": webhook_receiver.url, "events": ["job.failed"]},
                         headers=admin.headers)
    webhook_receiver.secret = answer.json["secret"]
    webhook_receiver.hang_next(1, seconds=10)  # the first attempt is under way when its worker dies
    with broker_queue(broker) as queue:
        settings = {**FAST, **queue, "WEBHOOK_TIMEOUT_SECONDS": 2, "JOBS_REDIS_HEARTBEAT_TIMEOUT_SECONDS": 2,
                    "JOBS_REDIS_MAINTENANCE_CHANCE": 1_000_000}
        env = server_env(database_url, **settings)
        sender = make_app(database_url, **settings)  # this process, sending on the broker
        emit("job.failed", job_id="j-killed")
        with sender.app_context():
            sender.extensions["creditapp.webhooks"].sweep()
        with job_workers(env, 1, tmp_path, threads=2, name="first") as (first,):
            webhook_receiver.wait_for(1, timeout=30, verified_only=False)
            stop(first, signal.SIGKILL)
        with job_workers(env, 1, tmp_path, threads=2, name="second"):
            got = webhook_receiver.wait_for(1, timeout=40)
    assert [r.webhook_id for r in webhook_receiver.received] == [got[0].webhook_id] * 2
    with atomic(write=False) as session:
        attempts = session.execute(ATTEMPTS.select().order_by(ATTEMPTS.c.id)).all()
    assert [(a.number, a.status) for a in attempts] == [(1, "lost"), (2, "succeeded")]
