"""Jobs (`Prefer: respond-async`): the API, every state and error, and the money, on SQLite and
PostgreSQL. The queue is Dramatiq's in-memory broker with no worker (`stub://`): a test runs
what is queued with `drain()`, and moves time with the manual clock; nothing sleeps."""
import json
import threading
import time
from datetime import timedelta

import pytest

from creditapp.ai import StubAIProvider, set_provider
from creditapp.exceptions import GenerationFailed, JobRunning, QueueUnavailable
from creditapp.jobs import store
from creditapp.jobs.queue import job_queue
from creditapp.ledger import credit_service

from creditapp.testing import make_app
from .test_hold_expiry import AccountLock, in_thread

ASYNC = {"Prefer": "respond-async"}


def submit(client, user, path="/api/generate", body=None, **headers):
    return client.post(path, json=body or {"prompt": "a lighthouse"}, headers={**user.headers, **ASYNC, **headers})


def credits(user) -> int:
    return credit_service.get_credit_balance(user.id).generation_credits


def job_of(client, user, response):
    return client.get(response.headers["Location"], headers=user.headers)


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"] == code, response.json
    assert response.json["message"]


class FlakyProvider(StubAIProvider):
    """Fails its first `failures` calls."""

    def __init__(self, failures):
        super().__init__()
        self.failures = failures

    def generate_image(self, params, feature="basic_generation"):
        self.calls += 1
        if self.calls <= self.failures:
            raise GenerationFailed("the AI provider did not answer")
        return {"feature": feature, "image_url": f"https://images.stub.invalid/{self.calls}.png"}


def test_a_job_is_accepted_held_then_run_and_charged_once(app, client, make_user, stub):
    user = make_user(credits=3)
    response = submit(client, user)
    assert response.status_code == 202, response.json
    job_id = response.json["job_id"]
    assert response.json == {"job_id": job_id, "status": "queued", "feature": "basic_generation",
                             "held": {"credit_type": "generation_credits", "amount": 1}}
    assert response.headers["Location"] == f"/api/jobs/{job_id}"
    assert response.headers["Preference-Applied"] == "respond-async"
    # When to poll, whatever the paid rate limit's own Retry-After (its window's reset) said.
    assert response.headers["Retry-After"] == "1" and "X-RateLimit-Limit" in response.headers
    # Written as every other answer is: compact, keys sorted.
    assert response.get_data(as_text=True).startswith('{"feature":"basic_generation","held":{"amount":1,')
    queued = job_of(client, user, response)
    assert queued.status_code == 200
    assert (queued.json["status"], queued.json["attempts"], queued.headers["Retry-After"]) == ("queued", 0, "1")
    assert credits(user) == 2 and stub.calls == 0  # held, not yet run

    assert job_queue().drain() == 1
    done = job_of(client, user, response)
    assert done.json["status"] == "succeeded" and "Retry-After" not in done.headers
    assert done.get_data(as_text=True).startswith('{"attempts":1,"balance":{')
    assert done.json["charged"] == {"credit_type": "generation_credits", "amount": 1}
    assert done.json["balance"] == {"generation_credits": 2, "ai_tokens": 0}
    assert done.json["result"]["image_url"].startswith("https://images.stub.invalid/")
    assert done.json["attempts"] == 1 and done.json["started_at"] and done.json["finished_at"]
    assert (credits(user), stub.calls) == (2, 1)
    assert credit_service.verify() == []


def test_without_the_preference_a_paid_route_answers_at_once(client, make_user, stub):
    user = make_user(credits=1)
    response = client.post("/api/generate", json={"prompt": "x"}, headers={**user.headers, "Prefer": "return=minimal"})
    assert response.status_code == 200 and response.json["charged"]["amount"] == 1
    assert job_queue().drain() == 0


@pytest.mark.parametrize("path, body, feature, credit_type", [
    ("/api/generate/professional-photo", {"image_url": "https://example.com/a.png"}, "professional_photo",
     "generation_credits"),
    ("/api/generate/hairstyle", {"image_url": "https://example.com/a.png", "hairstyle": "bob"}, "change_hairstyle",
     "generation_credits"),
    ("/api/generate/upscale", {"image_url": "https://example.com/a.png", "scale": 4}, "upscale", "generation_credits"),
])
def test_every_image_route_takes_jobs(client, make_user, stub, path, body, feature, credit_type):
    user = make_user(credits=5)
    response = submit(client, user, path, body)
    assert response.status_code == 202, response.json
    assert response.json["feature"] == feature
    job_queue().drain()
    done = job_of(client, user, response).json
    assert done["status"] == "succeeded" and done["result"]["feature"] == feature
    assert credits(user) == 5 - done["charged"]["amount"]
    assert credit_service.verify() == []


def test_a_completion_job_charges_the_tokens_used_not_the_estimate(client, make_user, stub):
    user = make_user(tokens=1000)
    response = submit(client, user, "/api/ai/complete", {"prompt": "write a haiku about the sea", "max_tokens": 200})
    assert response.status_code == 202
    held = response.json["held"]["amount"]
    assert credit_service.get_credit_balance(user.id).ai_tokens == 1000 - held
    job_queue().drain()
    done = job_of(client, user, response).json
    used = done["usage"]["total_tokens"]
    assert used < held and done["charged"] == {"credit_type": "ai_tokens", "amount": used}
    assert credit_service.get_credit_balance(user.id).ai_tokens == 1000 - used == done["balance"]["ai_tokens"]
    assert done["result"]["text"]


def test_the_guard_answers_before_anything_is_held_or_queued(client, make_user, stub):
    user = make_user(credits=1)
    assert_error(client.post("/api/generate", json={"prompt": "x"}, headers=ASYNC), 401, "authorization_required")
    assert_error(submit(client, user, body={"prompt": ""}), 422, "validation_error")
    assert_error(submit(client, user, **{"Idempotency-Key": "bad key"}), 422, "validation_error")
    poor = make_user(credits=0)
    refused = submit(client, poor)
    assert_error(refused, 403, "insufficient_credits")
    assert (refused.json["required"], refused.json["available"]) == (1, 0)
    assert job_queue().drain() == 0 and credits(user) == 1
    assert store.page(user.id, status=None, limit=10, before=None) == []


@pytest.mark.parametrize("creditapp_settings", [{"PAID_RATE_LIMIT": "2 per minute"}])
def test_the_paid_rate_limit_counts_submits(client, make_user, stub):
    user = make_user(credits=5)
    assert [submit(client, user).status_code for _ in range(3)] == [202, 202, 429]
    assert credits(user) == 3


def test_a_retry_with_the_same_key_answers_the_same_job(client, make_user, stub):
    user = make_user(credits=5)
    first = submit(client, user, **{"Idempotency-Key": "job-1"})
    again = submit(client, user, **{"Idempotency-Key": "job-1"})
    assert again.status_code == 202 and again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert credits(user) == 4
    job_queue().drain()
    after = submit(client, user, **{"Idempotency-Key": "job-1"})  # still the same job once it ran
    assert after.json["job_id"] == first.json["job_id"] and job_queue().drain() == 0
    assert (credits(user), stub.calls) == (4, 1)


def test_one_key_cannot_stand_for_a_job_and_an_answer(client, make_user, stub):
    user = make_user(credits=5)
    assert submit(client, user, **{"Idempotency-Key": "k"}).status_code == 202
    sync = client.post("/api/generate", json={"prompt": "a lighthouse"},
                       headers={**user.headers, "Idempotency-Key": "k"})
    assert_error(sync, 422, "idempotency_key_reused")
    assert credits(user) == 4


def test_another_users_job_and_unknown_ids_are_404(client, make_user, stub):
    owner, other = make_user(credits=1), make_user(credits=1)
    location = submit(client, owner).headers["Location"]
    for user, path in ((other, location), (owner, "/api/jobs/" + "0" * 32), (owner, "/api/jobs/not-a-job"),
                       (owner, "/api/jobs/%EF%BC%91")):
        assert_error(client.get(path, headers=user.headers), 404, "unknown_job")
        assert_error(client.delete(path, headers=user.headers), 404, "unknown_job")
    assert_error(client.get(location), 401, "authorization_required")


def test_cancelling_a_queued_job_gives_its_hold_back_and_it_never_runs(client, make_user, stub):
    user = make_user(credits=2)
    response = submit(client, user)
    cancelled = client.delete(response.headers["Location"], headers=user.headers)
    assert cancelled.status_code == 200
    assert cancelled.json["status"] == "cancelled" and cancelled.json["error"]["error"] == "cancelled"
    assert credits(user) == 2
    assert job_queue().drain() == 1 and stub.calls == 0  # the message still comes; the row says no
    assert job_of(client, user, response).json["status"] == "cancelled"
    assert_error(client.delete(response.headers["Location"], headers=user.headers), 409, "job_finished")
    assert credit_service.verify() == []


def test_a_running_job_cannot_be_cancelled_and_a_finished_one_neither(app, client, make_user, stub):
    user = make_user(credits=2)
    response = submit(client, user)
    job_id = response.json["job_id"]
    claim = store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)
    assert claim.outcome == "claimed"
    assert_error(client.delete(response.headers["Location"], headers=user.headers), 409, "job_running")
    assert store.succeed(job_id, claim.lease, claim.hold, {"result": {}}) == "succeeded"
    assert_error(client.delete(response.headers["Location"], headers=user.headers), 409, "job_finished")


def test_a_provider_failure_is_tried_again_then_charges_once(app, client, make_user):
    provider = FlakyProvider(failures=1)
    set_provider(app, provider)
    user = make_user(credits=2)
    response = submit(client, user)
    assert job_queue().drain() == 2  # the first attempt, and the retry it sent
    done = job_of(client, user, response).json
    assert (done["status"], done["attempts"], done["charged"]["amount"]) == ("succeeded", 2, 1)
    assert (credits(user), provider.calls) == (1, 2)


def test_the_last_failure_gives_the_hold_back_and_charges_nothing(app, client, make_user):
    set_provider(app, StubAIProvider(failure_rate=1.0))
    user = make_user(credits=2)
    response = submit(client, user)
    job_queue().drain()
    done = job_of(client, user, response).json
    assert (done["status"], done["attempts"]) == ("failed", app.config["JOB_MAX_ATTEMPTS"])
    assert done["error"]["error"] == "generation_failed" and "charged" not in done
    assert credits(user) == 2
    assert credit_service.verify() == []


def test_a_job_whose_hold_expired_in_the_queue_ends_expired_and_never_calls_the_ai(
        app, client, make_user, stub, manual_clock):
    user = make_user(credits=2)
    response = submit(client, user)
    manual_clock.advance(app.config["CREDIT_HOLD_TTL_SECONDS"])  # exactly its hold's expiry
    job_queue().drain()
    done = job_of(client, user, response).json
    assert (done["status"], done["attempts"], done["error"]["error"]) == ("expired", 0, "reservation_expired")
    assert (credits(user), stub.calls) == (2, 0)
    assert credit_service.verify() == []


def test_a_job_ends_when_its_hold_does_though_no_worker_looks(app, client, make_user, stub, manual_clock):
    user = make_user(credits=2)
    response = submit(client, user)
    manual_clock.advance(app.config["CREDIT_HOLD_TTL_SECONDS"] - 1)
    assert job_of(client, user, response).json["status"] == "queued"
    manual_clock.advance(1)
    assert job_of(client, user, response).json["status"] == "expired"  # decided by the read
    assert credits(user) == 2
    assert_error(client.delete(response.headers["Location"], headers=user.headers), 409, "job_finished")


def test_a_second_delivery_of_a_finished_job_neither_runs_nor_charges(client, make_user, stub):
    user = make_user(credits=3)
    response = submit(client, user)
    job_queue().drain()
    for _ in range(2):
        job_queue().actor.send(response.json["job_id"])
    assert job_queue().drain() == 2
    assert (credits(user), stub.calls) == (2, 1)


def test_the_heartbeat_keeps_a_running_jobs_hold_past_its_first_expiry(app, make_user, client, stub, manual_clock):
    user = make_user(credits=2)
    job_id = submit(client, user).json["job_id"]
    hold_seconds = app.config["CREDIT_HOLD_TTL_SECONDS"] + 100
    claim = store.claim(job_id, lease_seconds=30, hold_seconds=hold_seconds, max_attempts=3)
    first = claim.hold.expires_at
    assert first == manual_clock() + timedelta(seconds=hold_seconds)
    manual_clock.advance(hold_seconds - 1)
    assert store.beat(job_id, claim.lease, claim.hold, lease_seconds=30, hold_seconds=hold_seconds)
    assert claim.hold.expires_at == manual_clock() + timedelta(seconds=hold_seconds)
    manual_clock.advance(hold_seconds - 1)  # far past the first expiry
    claim.hold.pending = 1
    assert store.succeed(job_id, claim.lease, claim.hold, {"result": {}}) == "succeeded"
    assert credits(user) == 1


def test_a_running_job_whose_hold_ran_out_is_failed_and_charges_nothing(app, make_user, client, stub, manual_clock):
    user = make_user(credits=2)
    job_id = submit(client, user).json["job_id"]
    hold_seconds = app.config["CREDIT_HOLD_TTL_SECONDS"] + 100
    claim = store.claim(job_id, lease_seconds=30, hold_seconds=hold_seconds, max_attempts=3)
    manual_clock.advance(hold_seconds)  # no heartbeat came: the hold ends exactly now
    claim.hold.pending = 1
    assert store.succeed(job_id, claim.lease, claim.hold, {"result": {}}) == "failed"
    job = store.find(job_id)
    assert (job.status, json.loads(job.error)["error"]) == ("failed", "reservation_expired")
    assert credits(user) == 2
    assert not store.beat(job_id, claim.lease, claim.hold, lease_seconds=30, hold_seconds=hold_seconds)
    assert credit_service.verify() == []


def test_a_live_attempt_keeps_the_job_and_a_lapsed_one_loses_it(app, make_user, client, stub, manual_clock):
    user = make_user(credits=2)
    job_id = submit(client, user).json["job_id"]
    first = store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)
    manual_clock.advance(29)
    busy = store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)
    assert busy.outcome == "busy" and busy.retry_in == pytest.approx(1)
    manual_clock.advance(1)  # the first attempt's lease lapsed: its worker is taken for dead
    second = store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)
    assert (second.outcome, second.job.attempts) == ("claimed", 2)
    first.hold.pending = second.hold.pending = 1
    assert not store.beat(job_id, first.lease, first.hold, lease_seconds=30, hold_seconds=60)
    assert store.succeed(job_id, first.lease, first.hold, {"result": {"from": "first"}}) == "lost"
    assert store.fail(job_id, first.lease, first.hold, {"error": "x", "message": "x"}, retry_in=1) == "lost"
    assert store.succeed(job_id, second.lease, second.hold, {"result": {"from": "second"}}) == "succeeded"
    assert json.loads(store.find(job_id).answer)["result"] == {"from": "second"}
    assert credits(user) == 1
    assert credit_service.verify() == []


def test_a_job_whose_last_attempt_died_ends_failed_and_charges_nothing(app, make_user, client, stub, manual_clock):
    user = make_user(credits=2)
    job_id = submit(client, user).json["job_id"]
    for _ in range(3):
        claim = store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)
        assert claim.outcome == "claimed"
        manual_clock.advance(30)  # each worker dies
    assert store.claim(job_id, lease_seconds=30, hold_seconds=60, max_attempts=3).outcome == "failed"
    assert json.loads(store.find(job_id).error)["error"] == "worker_lost"
    assert credits(user) == 2


def test_the_list_is_newest_first_filtered_and_paged(client, make_user, stub, manual_clock):
    user = make_user(credits=10)
    ids = []
    for _ in range(5):
        ids.append(submit(client, user).json["job_id"])
        manual_clock.advance(1)
    client.delete(f"/api/jobs/{ids[1]}", headers=user.headers)
    seen, cursor = [], None
    while True:
        page = client.get("/api/jobs", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=user.headers)
        assert page.status_code == 200, page.json
        seen += [item["job_id"] for item in page.json["items"]]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    cancelled = client.get("/api/jobs", query_string={"status": "cancelled"}, headers=user.headers).json
    assert [item["job_id"] for item in cancelled["items"]] == [ids[1]]
    assert client.get("/api/jobs", headers=make_user().headers).json == {"items": [], "next_cursor": None}
    for query in ({"status": "done"}, {"limit": 0}, {"limit": "١"}, {"cursor": "abc"}, {"cursor": "1." + "g" * 32}):
        assert_error(client.get("/api/jobs", query_string=query, headers=user.headers), 422, "validation_error")


@pytest.mark.parametrize("creditapp_settings", [{"JOBS_BROKER_URL": "redis://127.0.0.1:1/0"}])
def test_a_broker_that_refuses_the_job_is_a_503_and_changes_nothing(client, make_user, stub):
    user = make_user(credits=2)
    for _ in range(2):  # the key was freed: the retry runs again, and is refused again
        assert_error(submit(client, user, **{"Idempotency-Key": "k"}), 503, "queue_unavailable")
    assert credits(user) == 2
    assert stub.calls == 0
    assert credit_service.verify() == []


def test_cancelling_races_a_worker_taking_the_job_and_exactly_one_wins(app, database_url, make_user, client, stub):
    for _ in range(6):
        user = make_user(credits=1)
        job_id = submit(client, user).json["job_id"]
        with AccountLock(database_url, user.id) as lock:
            canceller, cancel = in_thread(lambda: _in_context(app, lambda: store.cancel(job_id, user.id)))
            claimer, claim = in_thread(lambda: _in_context(app, lambda: store.claim(
                job_id, lease_seconds=30, hold_seconds=60, max_attempts=3)))
            lock.wait_for_a_waiter(waiters=2)
        canceller.join(30), claimer.join(30)
        status = store.find(job_id).status
        if status == "cancelled":
            assert "value" in cancel and claim["value"].outcome == "done"
            assert credits(user) == 1
        else:
            assert status == "running" and claim["value"].outcome == "claimed"
            assert isinstance(cancel["error"], JobRunning)
            assert credits(user) == 0  # still held by the running attempt
    assert credit_service.verify() == []


def _in_context(app, call):
    with app.app_context():
        return call()


def test_the_embedded_queue_runs_jobs_in_the_server_process(database_url, make_user):
    app = make_app(database_url, JOBS_BROKER_URL="", JOBS_EMBEDDED_THREADS=2)
    with app.app_context():
        provider = StubAIProvider()
        set_provider(app, provider)
        client = app.test_client()
        user = make_user(credits=3)
        locations = [submit(client, user).headers["Location"] for _ in range(3)]
        queue = job_queue()
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and any(
                    client.get(loc, headers=user.headers).json["status"] != "succeeded" for loc in locations):
                time.sleep(0.05)
        finally:
            queue._worker.stop()
        assert [client.get(loc, headers=user.headers).json["status"] for loc in locations] == ["succeeded"] * 3
        assert (credits(user), provider.calls) == (0, 3)


def test_jobs_are_counted_and_logged_with_their_request(client, make_user, stub, caplog):
    user = make_user(credits=1)
    response = submit(client, user, **{"X-Request-ID": "req-123"})
    with caplog.at_level("INFO", logger="creditapp.jobs"):
        job_queue().drain()
    finished = [r for r in caplog.records if r.getMessage() == "job_finished"]
    assert [(r.job_id, r.request_id, r.outcome) for r in finished] == [(response.json["job_id"], "req-123", "succeeded")]
    text = client.get("/metrics").get_data(as_text=True)
    assert 'creditapp_jobs_total{feature="basic_generation",outcome="succeeded"} 1.0' in text
    assert "creditapp_job_queue_wait_seconds_count" in text


def test_the_api_document_has_the_jobs(client):
    paths = client.get("/api/openapi.json").json["paths"]
    assert {"get", "delete"} <= set(paths["/api/jobs/{job_id}"])
    assert "get" in paths["/api/jobs"]


def test_the_jobs_commands_report_requeue_and_refuse_a_worker_without_a_broker(app, client, make_user, stub):
    user = make_user(credits=3)
    for _ in range(2):
        submit(client, user)
    runner = app.test_cli_runner()
    assert runner.invoke(args=["jobs", "status"]).output.strip() == "queued 2, running 0"
    job_queue().drain()
    assert runner.invoke(args=["jobs", "status"]).output.strip() == "queued 0, running 0"
    submit(client, user)
    job_queue().broker.flush_all()  # the broker lost its messages
    assert "sent 1 unfinished job(s) again" in runner.invoke(args=["jobs", "requeue"]).output
    assert job_queue().drain() == 1 and credits(user) == 0
    refused = runner.invoke(args=["jobs", "worker"])
    assert refused.exit_code != 0 and "JOBS_BROKER_URL is not set" in refused.output


def test_a_retry_while_the_broker_refuses_is_never_told_queued(app, client, make_user, stub, monkeypatch):
    """A retry that lands between the job row's commit and the broker's refusal used to replay a
    stored `202 queued` for a job that then failed: it is told the key is in use, and once the
    original's 503 has freed the key a retry submits afresh."""
    from creditapp.jobs.queue import JobQueue

    user = make_user(credits=2)
    headers = {"Idempotency-Key": "broker-down"}
    during = {}

    def refused(self, job_id):
        retry = threading.Thread(target=lambda: during.setdefault("answer", submit(app.test_client(), user, **headers)))
        retry.start()
        retry.join(30)
        raise QueueUnavailable(f"could not queue job {job_id}: connection refused")

    monkeypatch.setattr(JobQueue, "send", refused)
    assert_error(submit(client, user, **headers), 503, "queue_unavailable")
    assert_error(during["answer"], 409, "idempotency_key_in_use")
    assert credits(user) == 2

    monkeypatch.undo()
    accepted = submit(client, user, **headers)
    assert accepted.status_code == 202 and accepted.headers.get("Idempotent-Replayed") is None
    replayed = submit(client, user, **headers)
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json["job_id"] == accepted.json["job_id"]
    job_queue().drain()
    assert job_of(client, user, accepted).json["status"] == "succeeded"
    assert (credits(user), stub.calls) == (1, 1)
    assert credit_service.verify() == []
