"""A job's run: the worker's side of `require_credits`.

The guard registers every paid view here when it decorates it, and a worker runs the same view
body for a job as the synchronous request would have: with `g.credit_info` set and the job's
hold active, so the view's `deduct_credits` charges that hold. What the view returns is the
job's answer, committed with the charge (store.succeed); an error answer (status 400 or more)
ends the job charged nothing, as it would have left the request uncharged; a provider failure
is tried again up to JOB_MAX_ATTEMPTS times, then the hold is given back. A heartbeat thread keeps the hold and the
attempt's lease alive while the AI works.
"""
import json
import threading
import time

from flask import Flask, Response, current_app, g

from ..exceptions import GenerationFailed
from ..features import serves_work
from ..jobs import params as job_params
from ..jobs import store
from ..ledger import InsufficientCredits, credit_service
from ..ledger.clock import utcnow
from ..logs import job_log
from ..metrics import metrics
from .guard import WORK, CreditInfo


class ErrorAnswer(Exception):
    """The view answered an error: the job fails with it, charged nothing, and is not tried again."""

    def __init__(self, status: int, body):
        super().__init__(f"the view answered {status}")
        self.error = body if isinstance(body, dict) and {"error", "message"} <= body.keys() else {
            "error": "work_refused", "message": f"The work answered {status}; nothing was charged."}


def run(job_id: str) -> float | None:
    """Run one delivery of a job. Returns None when the delivery is done with, or the seconds after
    which it should be delivered again (a retry's backoff, or another attempt still holds it)."""
    config = current_app.config
    claim = store.claim(job_id, lease_seconds=config["JOB_LEASE_SECONDS"], hold_seconds=_hold_seconds(config),
                        max_attempts=config["JOB_MAX_ATTEMPTS"])
    if claim.outcome == "busy":
        return claim.retry_in + config["JOB_HEARTBEAT_SECONDS"]
    if claim.outcome != "claimed":
        if claim.outcome in ("expired", "failed"):  # ended by this delivery, not before
            job_ended(claim.job, claim.outcome)
        return None
    job, hold, lease = claim.job, claim.hold, claim.lease
    if job.attempts == 1:
        metrics().job_wait.labels(job.feature).observe((job.started_at - job.created_at).total_seconds())
    _log(job, "job_started", attempt=job.attempts)
    started = time.perf_counter()
    retry_in, error = None, None
    with Heartbeat(current_app._get_current_object(), job.id, lease, hold):
        try:
            answer = _perform(job, hold)
        except ErrorAnswer as refused:
            error = refused.error
        except InsufficientCredits:
            error = {"error": "usage_exceeded_hold",
                     "message": "The work used more than was held and the balance could not cover it."}
        except Exception as exc:
            if not isinstance(exc, GenerationFailed):
                current_app.logger.exception("job %s: its work raised", job.id)
            error = {"error": "generation_failed", "message": "The AI provider failed; nothing was charged."}
            if job.attempts < config["JOB_MAX_ATTEMPTS"]:
                retry_in = config["JOB_RETRY_BACKOFF_SECONDS"] * 2 ** (job.attempts - 1)
    if error is None:
        outcome = store.succeed(job.id, lease, hold, answer)
    else:
        outcome = store.fail(job.id, lease, hold, error, retry_in=retry_in, hold_seconds=_hold_seconds(config))
    metrics().job_run.labels(job.feature, outcome).observe(time.perf_counter() - started)
    if outcome == "queued":
        _log(job, "job_retry", attempt=job.attempts, retry_in=retry_in, error=error["error"])
        return retry_in
    if outcome != "lost":
        job_ended(job, outcome, charged=hold.pending if outcome == "succeeded" else 0)
    return None


def _perform(job, hold) -> dict:
    if not serves_work(job.work):
        # Queued by an app that serves the feature (or before FEATURES left it out): this app
        # does not sell it, so it does not run it either.
        raise ErrorAnswer(404, {"error": "feature_not_served",
                                "message": f"This app does not serve {job.feature}; nothing was charged."})
    params = job_params.loads(job.params)
    g.credit_info = CreditInfo(user_id=job.user_id, credit_type=hold.credit_type, required=job.amount,
                               available=job.amount, hold_id=job.hold_id, wallet_id=job.wallet_id)
    with credit_service.activate(hold):
        answer = WORK[job.work](*params["args"], **params["kwargs"])
    status = 200
    if isinstance(answer, Response):
        status, answer = answer.status_code, answer.get_json(silent=True)
    elif isinstance(answer, tuple):
        answer, status = answer[0], next((item for item in answer[1:] if isinstance(item, int)), 200)
    if status >= 400:
        raise ErrorAnswer(status, answer)
    if not isinstance(answer, dict):
        raise TypeError(f"a paid view run as a job must return a dict, got {type(answer).__name__}")
    # The answer is stored as JSON: what the view's response schema would dump.
    return json.loads(json.dumps(answer, default=str))


def _hold_seconds(config) -> float:
    # Longer than the lease, so that another worker can take over a lost attempt before its hold
    # runs out (see store.claim).
    return 2 * config["JOB_LEASE_SECONDS"]


def job_ended(job, outcome: str, charged: int = 0) -> None:
    """Count and log a job's end (once, by whoever ended it: a worker, a cancel, a read)."""
    metrics().jobs.labels(job.feature, outcome).inc()
    metrics().count("charged", job.feature, job.credit_type, charged)
    metrics().count("released", job.feature, job.credit_type, max(0, job.amount - charged))
    if outcome != "succeeded":
        metrics().job_holds_ended.labels(outcome).inc()
    job_log.info("job_finished", extra={"job_id": job.id, "outcome": outcome, "charged": charged,
                                        "request_id": job.request_id, "feature": job.feature})


def _log(job, event: str, **fields) -> None:
    job_log.info(event, extra={"job_id": job.id, "request_id": job.request_id, "feature": job.feature, **fields})


class Heartbeat:
    """Extends the attempt's hold and lease every JOB_HEARTBEAT_SECONDS until the work returns."""

    def __init__(self, app: Flask, job_id: str, lease: str, hold):
        self.app, self.job_id, self.lease, self.hold = app, job_id, lease, hold
        self.interval = app.config["JOB_HEARTBEAT_SECONDS"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        with self.app.app_context():
            config = self.app.config
            while not self._stop.wait(self.interval):
                try:
                    alive = store.beat(self.job_id, self.lease, self.hold, lease_seconds=config["JOB_LEASE_SECONDS"],
                                       hold_seconds=_hold_seconds(config))
                except Exception:
                    # The next beat tries again; if none gets through, the hold runs out and the
                    # job ends failed, charged nothing.
                    self.app.logger.exception("job %s: heartbeat failed", self.job_id)
                    continue
                if not alive:
                    job_log.warning("job_lost", extra={"job_id": self.job_id, "at": utcnow().isoformat()})
                    return
                metrics().job_holds_extended.inc()
