"""Jobs at their edges, from an adversarial review: long request ids, a publish that fails after
the broker took the message, the API document, the list and a GET agreeing, metrics, CORS, and
the embedded queue after a restart. Each test states a rule."""
import threading
import time

import pytest

from creditapp.jobs import store
from creditapp.jobs.queue import job_queue
from creditapp.ai import StubAIProvider, set_provider
from creditapp.ledger import credit_service
from creditapp.testing import make_app

from .test_jobs import credits, submit


# --- 1. A valid X-Request-ID of 65..128 characters breaks every async submit on PostgreSQL ------

def test_a_long_but_valid_request_id_does_not_break_a_submit(client, make_user, stub):
    user = make_user(credits=2)
    request_id = "r" * 100  # logs._SANE_ID accepts 1..128 of [A-Za-z0-9._:-]; jobs.request_id is String(64)
    response = submit(client, user, **{"X-Request-ID": request_id})
    assert response.status_code == 202, (response.status_code, response.get_data(as_text=True))
    assert response.headers["X-Request-ID"] == request_id
    job_queue().drain()
    assert credits(user) == 1
    assert credit_service.verify() == []


# --- 2. A broker error after the broker took the message: abandon() overwrites a finished job ---

def test_an_ambiguous_publish_never_leaves_a_charge_without_its_result(client, make_user, stub, monkeypatch):
    """RabbitMQ confirm_delivery / a Redis connection cut can raise after the broker has the
    message. A worker may run the job before the API's abandon() runs."""
    user = make_user(credits=2)
    queue = job_queue()
    original_send = queue.actor.send

    def send_then_fail(job_id):
        original_send(job_id)  # the broker has it...
        worker = threading.Thread(target=queue.drain)  # ...and a fast worker runs it
        worker.start()
        worker.join()
        raise ConnectionError("publish confirm lost")  # ...but the publisher never heard back

    monkeypatch.setattr(queue.actor, "send", send_then_fail)
    response = submit(client, user, **{"Idempotency-Key": "k1"})
    job = store.page(user.id, status=None, limit=1, before=None)[0]
    charged = 2 - credits(user)
    # Money rule: a charge only with its result, and the job says what was charged.
    monkeypatch.setattr(queue.actor, "send", original_send)
    retry = submit(client, user, **{"Idempotency-Key": "k1"})  # the client retries after its 503
    queue.drain()
    facts = {"first": response.status_code, "job": job.status, "job_charged": job.charged, "charged": charged,
             "retry": retry.status_code, "charged_after_retry": 2 - credits(user), "ai_calls": stub.calls,
             "verify": [str(d) for d in credit_service.verify()]}
    assert (job.status, job.charged) == ("succeeded", charged) or (charged == 0 and job.status != "succeeded"), str(facts)


# --- 3. The OpenAPI document does not describe the 202 answer or the Prefer header -------------

@pytest.mark.parametrize("path", ["/api/generate", "/api/generate/professional-photo", "/api/generate/hairstyle",
                                  "/api/generate/upscale", "/api/ai/complete"])
def test_the_api_document_describes_async_submits(client, path):
    post = client.get("/api/openapi.json").json["paths"][path]["post"]
    assert "202" in post["responses"], sorted(post["responses"])
    assert any(p["in"] == "header" and p["name"].lower() == "prefer" for p in post.get("parameters", [])), \
        post.get("parameters")
    assert "503" in post["responses"], sorted(post["responses"])  # queue_unavailable


# --- 4. GET /api/jobs lists a job as queued that GET /api/jobs/<id> calls expired ----------------

def test_the_list_and_the_job_agree_on_a_job_whose_hold_ran_out(app, client, make_user, stub, manual_clock):
    user = make_user(credits=2)
    location = submit(client, user).headers["Location"]
    manual_clock.advance(app.config["CREDIT_HOLD_TTL_SECONDS"])
    listed = client.get("/api/jobs", headers=user.headers).json["items"][0]["status"]
    queued = client.get("/api/jobs", query_string={"status": "queued"}, headers=user.headers).json["items"]
    single = client.get(location, headers=user.headers).json["status"]
    assert single == "expired"
    assert (listed, len(queued)) == ("expired", 0)


# --- 5. Metrics --------------------------------------------------------------------------------

def _metrics(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def test_a_cancelled_job_is_counted(client, make_user, stub):
    user = make_user(credits=1)
    location = submit(client, user).headers["Location"]
    assert client.delete(location, headers=user.headers).status_code == 200
    job_queue().drain()
    assert 'creditapp_jobs_total{feature="basic_generation",outcome="cancelled"} 1.0' in _metrics(client)


def test_an_expired_job_is_counted_once_under_its_feature(app, client, make_user, stub, manual_clock):
    user = make_user(credits=1)
    response = submit(client, user)
    manual_clock.advance(app.config["CREDIT_HOLD_TTL_SECONDS"])
    assert client.get(response.headers["Location"], headers=user.headers).json["status"] == "expired"
    job_queue().drain()
    job_queue().actor.send(response.json["job_id"])  # at-least-once: a second delivery
    job_queue().drain()
    text = _metrics(client)
    assert 'outcome="expired"} 2.0' not in text
    assert 'creditapp_jobs_total{feature="basic_generation",outcome="expired"} 1.0' in text, \
        [line for line in text.splitlines() if line.startswith("creditapp_jobs_total")]


def test_a_jobs_charge_is_counted_like_a_requests(client, make_user, stub):
    user = make_user(credits=2)
    client.post("/api/generate", json={"prompt": "x"}, headers=user.headers)  # sync: reserved 1, charged 1
    submit(client, user)
    job_queue().drain()
    lines = [line for line in _metrics(client).splitlines() if line.startswith("creditapp_credits_total")]
    reserved = sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'event="reserved"' in line)
    charged = sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'event="charged"' in line)
    assert (reserved, charged) == (2.0, 2.0), lines


# --- 6. CORS: a browser on another origin cannot send Prefer, nor read the 202's Location -------

def test_a_browser_may_submit_a_job_and_follow_its_location(client):
    preflight = client.options("/api/generate", headers={
        "Origin": "http://web.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, prefer"})
    assert preflight.status_code == 200
    assert "prefer" in preflight.headers.get("Access-Control-Allow-Headers", "").lower(), dict(preflight.headers)


def test_a_browser_can_read_the_location_of_a_202(client, make_user, stub):
    user = make_user(credits=1)
    response = submit(client, user, Origin="http://web.test")
    assert response.status_code == 202
    exposed = response.headers.get("Access-Control-Expose-Headers", "").lower()
    assert "location" in exposed, exposed


# --- 7. Embedded queue: a restarted server does not send the unfinished jobs until a new submit --

def test_the_next_server_start_sends_an_unfinished_job_again(database_url, make_user, client, stub):
    user = make_user(credits=1)
    location = submit(client, user).headers["Location"]  # queued; then its server stops (stub: message gone)
    server = make_app(database_url, JOBS_BROKER_URL="", JOBS_EMBEDDED_THREADS=1)
    with server.app_context():
        set_provider(server, StubAIProvider())
        polling = server.test_client()
        deadline, status = time.monotonic() + 5, None
        while time.monotonic() < deadline:
            status = polling.get(location, headers=user.headers).json["status"]
            if status == "succeeded":
                break
            time.sleep(0.1)
        worker = job_queue()._worker
        if worker is not None:
            worker.stop()
    assert status == "succeeded", (status, "embedded worker started" if worker else "no worker was ever started")


# --- things that should hold (and did) ----------------------------------------------------------

@pytest.mark.parametrize("query", [
    {"cursor": "9" * 20 + "." + "f" * 32}, {"cursor": "253402300799999999." + "a" * 32},
    {"cursor": "0." + "0" * 32}, {"limit": "9" * 30}, {"limit": "-1"}, {"status": "QUEUED"},
    {"cursor": "1.\u0660" + "a" * 31}, {"limit": "1e3"}, {"cursor": ""},
])
def test_hostile_list_queries_are_never_a_500(client, make_user, stub, query):
    user = make_user(credits=1)
    submit(client, user)
    response = client.get("/api/jobs", query_string=query, headers=user.headers)
    assert response.status_code in (200, 422), response.get_data(as_text=True)
    assert response.status_code == 200 or response.json["error"] == "validation_error"


@pytest.mark.parametrize("prefer", ["respond-async;wait=abc", ", , ,", "=", "respond-async=", ";;",
                                    "RESPOND-ASYNC", "x" * 5000, "respond-async\u00e9", "wait=1, respond-async"])
def test_odd_prefer_headers_are_never_a_500(client, make_user, stub, prefer):
    user = make_user(credits=1)
    response = client.post("/api/generate", json={"prompt": "x"}, headers={**user.headers, "Prefer": prefer})
    assert response.status_code in (200, 202), response.get_data(as_text=True)
    job_queue().drain()
    assert credits(user) == 0 and credit_service.verify() == []


def test_many_concurrent_submits_never_overdraw(app, make_user, stub):
    user = make_user(credits=3)
    statuses = []

    def post():
        with app.test_client() as c:
            statuses.append(submit(c, user).status_code)

    threads = [threading.Thread(target=post) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses).count(202) == 3 and set(statuses) <= {202, 403, 409, 503}, statuses
    job_queue().drain()
    assert credits(user) == 0 and credit_service.verify() == []
