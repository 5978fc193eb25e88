"""Jobs on real brokers (Redis and RabbitMQ) and real worker processes (`flask jobs worker`), with
a provider that fails 30% of its calls and one worker SIGKILLed in the middle: every job ends, a
job with a result is charged exactly once, a job without one is charged nothing."""
import json
import random
import signal
import time

import pytest
import requests
from sqlalchemy import select

from creditapp.jobs.tables import FINISHED, JOBS
from creditapp.ledger import credit_service
from creditapp.ledger.statements import HOLDS
from creditapp.ledger.transactions import atomic

from creditapp.testing.brokers import broker_queue
from creditapp.testing.servers import fire_together, gunicorn, job_workers, server_env, stop

JOBS_PER_USER = 5


def job_rows() -> list:
    with atomic(write=False) as session:
        return session.execute(
            select(JOBS.c.id, JOBS.c.user_id, JOBS.c.status, JOBS.c.answer, JOBS.c.charged, JOBS.c.attempts,
                   HOLDS.c.status.label("hold_status"), HOLDS.c.settled_amount)
            .join(HOLDS, HOLDS.c.id == JOBS.c.hold_id)
        ).all()


def all_finished() -> list | None:
    rows = job_rows()
    return rows if all(row.status in FINISHED for row in rows) else None


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_200_jobs_on_a_real_broker_survive_failures_and_a_killed_worker(
        broker, app, make_user, database_url, tmp_path):
    chance = random.Random(7)
    users = [make_user(credits=chance.randint(0, 8)) for _ in range(200 // JOBS_PER_USER)]
    grants = {user.id: credit_service.get_credit_balance(user.id).generation_credits for user in users}
    results = tmp_path / "ai-results.log"
    with broker_queue(broker) as queue:
        env = server_env(
            database_url, **queue, AI_STUB_FAILURE_RATE=0.3, AI_STUB_LATENCY_MS=800, AI_STUB_RESULT_LOG=results,
            JOB_HEARTBEAT_SECONDS=0.5, JOB_LEASE_SECONDS=2, JOB_RETRY_BACKOFF_SECONDS=0.1, JOB_MAX_ATTEMPTS=3,
            JOBS_REDIS_HEARTBEAT_TIMEOUT_SECONDS=3, JOBS_REDIS_MAINTENANCE_CHANCE=1_000_000,
        )
        with job_workers(env, 2, tmp_path) as workers:
            with gunicorn(env, workers=2, threads=4, log_path=tmp_path / "gunicorn.log") as server:
                def submit(i):
                    user = users[i // JOBS_PER_USER]
                    response = requests.post(
                        f"{server.url}/api/generate", json={"prompt": f"job {i}"},
                        headers={**user.headers, "Prefer": "respond-async"}, timeout=60)
                    return response.status_code

                statuses = fire_together(200, submit)
            assert sorted(set(statuses)) <= [202, 403], statuses
            accepted = statuses.count(202)
            # At least what the balances cover; more where a job failed early and gave its credit back.
            assert accepted >= sum(min(grant, JOBS_PER_USER) for grant in grants.values())
            # Kill one worker mid-run: what it had taken must be delivered again or run out.
            def a_quarter_finished_and_one_running():
                rows = job_rows()
                return (sum(row.status in FINISHED for row in rows) >= accepted // 4
                        and any(row.status == "running" for row in rows))

            # Both at once, so that the kill meets a running job; and jobs long enough (800 ms) that
            # the workers do not finish them all while the 200 submits are still going on (seen on
            # RabbitMQ, where delivery starts sooner).
            wait_until(a_quarter_finished_and_one_running, 60, "a quarter of the jobs finished, one running")
            running_at_kill = sum(row.status == "running" for row in job_rows())
            stop(workers[0], signal.SIGKILL)
            rows = wait_until(all_finished, 120, "every job finished")
        if broker == "redis":  # the worker stopped with SIGTERM took its heartbeat entry with it
            import redis
            client = redis.Redis.from_url(queue["JOBS_BROKER_URL"])
            assert client.zcard(f"{queue['JOBS_NAMESPACE']}:__heartbeats__") <= 1  # the killed one's may stay
            client.close()
    logs = "".join((tmp_path / f"jobs-worker{i}.log").read_text() for i in range(2))
    succeeded = [row for row in rows if row.status == "succeeded"]
    counts = {status: sum(row.status == status for row in rows) for status in ("succeeded", "failed", "expired")}
    delivered = results.read_text().splitlines() if results.exists() else []
    print(f"\n[figures] {broker}: {accepted} jobs accepted of 200, {running_at_kill} running at the kill, {counts}, "
          f"{sum(row.attempts for row in rows)} attempts, {len(delivered)} AI results")
    assert running_at_kill > 0
    assert len(rows) == accepted and counts["succeeded"] + counts["failed"] + counts["expired"] == accepted
    # The provider failed (0.3 of calls): jobs were tried again; about 0.3³ of them failed all three times.
    assert counts["succeeded"] > 0 and sum(row.attempts for row in rows) > len(rows), counts
    # A result for every succeeded job, each a real AI result, each charged once.
    urls = [json.loads(row.answer)["result"]["image_url"] for row in succeeded]
    assert len(set(urls)) == len(succeeded) and set(urls) <= set(delivered)
    assert all(row.hold_status == "settled" and row.settled_amount == row.charged == 1 for row in succeeded)
    # Nothing charged for a job without a result.
    assert all(row.hold_status in ("released", "expired") and not row.charged for row in rows if row.status != "succeeded")
    for user in users:
        charged = sum(row.charged for row in succeeded if row.user_id == user.id)
        assert charged <= grants[user.id]
        assert credit_service.get_credit_balance(user.id).generation_credits == grants[user.id] - charged
    assert credit_service.verify() == [], logs[-3000:]
