"""The caller's jobs: poll one, list them, cancel a queued one. Jobs are submitted on the paid
routes themselves, with `Prefer: respond-async` (see guard.py)."""
import json
import re
from datetime import datetime, timedelta, timezone

from flask import Response, current_app

from ..auth import current_key, caller_must_exist, current_user_id, require_login
from ..exceptions import UnknownJob
from ..jobs import store
from ..jobs.queue import POLL_AFTER_SECONDS
from ..jobs.tables import FINISHED
from .bodies import Blueprint
from .running import job_ended
from .schemas import ErrorSchema, JobPageSchema, JobQuerySchema, JobSchema

blp = Blueprint("jobs", __name__, url_prefix="/api/jobs", description="Paid work that outlives its request.")
blp.before_request(require_login())
job_schema = JobSchema()
_JOB_ID = re.compile(r"[0-9a-f]{32}\Z")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def described(job) -> dict:
    body = {
        "job_id": job.id, "status": job.status, "feature": job.feature,
        "held": {"credit_type": job.credit_type, "amount": job.amount}, "attempts": job.attempts,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
    }
    if job.status == "succeeded":
        body.update(json.loads(job.answer))
    elif job.error is not None and job.status in FINISHED:
        body["error"] = json.loads(job.error)
    return body


def _answer(job) -> Response:
    # As jsonify writes every other answer: compact, keys sorted.
    body = current_app.json.dumps(job_schema.dump(described(job)), separators=(",", ":"))
    response = Response(body, mimetype="application/json")
    if job.status not in FINISHED:
        response.headers["Retry-After"] = str(POLL_AFTER_SECONDS)
    return response


def _own(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise UnknownJob(f"no job {job_id}")
    return job_id


@blp.get("/<job_id>")
@blp.response(200, JobSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_job: no job of the caller's has this id")
@blp.doc(security=[{"bearerAuth": []}])
def get_job(job_id):
    """One of the caller's jobs; `Retry-After` says when to poll again while it is not finished."""
    ended = []
    with caller_must_exist():
        job = store.get(_own(job_id), current_user_id(), ended, wallet_id=_key_wallet())
    _count(ended)
    return _answer(job)


@blp.delete("/<job_id>")
@blp.response(200, JobSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_job: no job of the caller's has this id")
@blp.alt_response(409, schema=ErrorSchema, description="job_running or job_finished: too late to cancel")
@blp.doc(security=[{"bearerAuth": []}])
def cancel_job(job_id):
    """Cancel a queued job: its hold is given back and nothing is charged."""
    ended = []
    try:
        with caller_must_exist():
            job = store.cancel(_own(job_id), current_user_id(), ended, wallet_id=_key_wallet())
    finally:
        _count(ended)
    return _answer(job)


@blp.get("")
@blp.arguments(JobQuerySchema, location="query", as_kwargs=True)
@blp.response(200, JobPageSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.doc(security=[{"bearerAuth": []}])
def list_jobs(status, limit, cursor):
    """The caller's jobs, newest first, a page at a time."""
    before = None
    if cursor:
        micros, job_id = cursor.split(".")
        try:
            before = (EPOCH + timedelta(microseconds=int(micros)), job_id)
        except OverflowError:  # later than any job
            before = (datetime.max.replace(tzinfo=timezone.utc), job_id)
    ended = []
    with caller_must_exist():
        store.end_overdue(current_user_id(), ended)  # the list says what a GET of each would
        rows = store.page(current_user_id(), status=status, limit=limit + 1, before=before, wallet_id=_key_wallet())
    _count(ended)
    items = [described(job) for job in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = f"{_micros(last.created_at)}.{last.id}"
    return {"items": items, "next_cursor": next_cursor}


def _count(ended: list) -> None:
    for job in ended:
        job_ended(job, job.status)


def _micros(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def _key_wallet() -> int | None:
    """An API key sees the jobs of its own wallet only (a team key not its maker's own)."""
    key = current_key()
    return key.wallet_id if key is not None else None
