"""A job's state changes, each one transaction. No Flask here.

Every change that touches a job's hold runs in `credit_service.holding(hold)`: the account lock
first, then the job's row, so a submit, a claim, a heartbeat, a finish, a cancel and an expiry
queue on one lock and each sees what the one before it decided. Only the attempt holding the
job's current `lease` may beat, finish or retry it: a worker that was given up on (its lease
lapsed and another took the job over) can neither charge nor store a result.
"""
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, update

from ..exceptions import JobFinished, JobRunning, UnknownJob
from ..ledger import CreditType, Hold, credit_service
from ..ledger import keys as idempotency
from ..ledger import procedures
from ..ledger.clock import utcnow
from ..ledger.keys import KEYS
from ..ledger.statements import HOLDS
from ..ledger.transactions import atomic, retry_conflicts
from ..webhooks import outbox
from . import params as job_params
from .tables import FINISHED, JOBS, UNFINISHED

# A repetition after a lost connection finds the job there (ON CONFLICT) and changes nothing.
SUBMIT = """
INSERT INTO jobs (id, user_id, wallet_id, feature, work, params, credit_type, amount, hold_id, status, attempts,
                  request_id, created_at)
VALUES (%(id)s, %(user_id)s, %(wallet_id)s, %(feature)s, %(work)s, %(params)s, %(credit_type)s, %(amount)s, %(hold_id)s,
        'queued', 0, %(request_id)s, %(now)s)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
ANSWER = """
UPDATE idempotency_keys SET status = 'completed', response_status = %(status)s, response_body = %(body)s,
       expires_at = %(kept)s
WHERE hold_id = %(hold_id)s AND status = 'in_flight'
RETURNING id
"""
# A job's end as an operator's event; a cancel is the user's own doing, told to nobody.
TOLD = {"succeeded": "job.succeeded", "failed": "job.failed", "expired": "job.failed"}
EXPIRED_ERROR = {"error": "reservation_expired",
                 "message": "The job's hold expired before it could finish; nothing was charged."}


@dataclass(frozen=True)
class Claim:
    """What a delivery of a job found: `outcome` is "claimed" (run it, as `lease`, with `hold`),
    "busy" (another attempt holds a live lease: come back in `retry_in` seconds), or the job's
    final status (nothing to do)."""

    outcome: str
    job: object = None  # the job as this delivery left it
    lease: str | None = None
    hold: Hold | None = None
    retry_in: float | None = None


def new_id() -> str:
    return uuid.uuid4().hex


@retry_conflicts
def submit(hold: Hold, *, job_id: str, feature: str, work: str, params: dict, request_id: str | None) -> None:
    """Record a queued job for `hold` (just taken). The hold's Idempotency-Key stays in flight
    until `queued` (a retry meanwhile is told the key is in use): the job is not queued yet. On
    PostgreSQL one statement in autocommit."""
    now = utcnow()
    row = {"id": job_id, "user_id": hold.client_id, "wallet_id": hold.wallet_id, "feature": feature, "work": work,
           "params": job_params.dumps(params), "credit_type": hold.credit_type.value, "amount": hold.amount,
           "hold_id": hold.hold_id, "request_id": request_id}
    if procedures.available():
        procedures.call(SUBMIT, {**row, "now": now})
        return
    with atomic() as session:
        session.execute(insert(JOBS).values(**row, status="queued", attempts=0, created_at=now))


def queued(hold: Hold, status: int, body: str) -> None:
    """The broker has the job: store its 202 for the hold's Idempotency-Key, so that a retry
    answers this job. Only once the send succeeded, because a client told "queued" must be
    able to rely on it (with the broker down the key is freed instead, by `abandon`)."""
    if hold.key is None:
        return
    kept = utcnow() + timedelta(seconds=credit_service.idempotency_ttl_seconds)
    if procedures.available():
        procedures.call(ANSWER, {"status": status, "body": body, "kept": kept, "hold_id": hold.hold_id})
        return
    with atomic() as session:
        idempotency.complete_for_hold(session, hold.hold_id, status, body, kept)


@retry_conflicts
def abandon(job_id: str, hold: Hold) -> bool:
    """A job the broker seemed to refuse: unless a worker has taken it already (a publish can
    fail after the broker got the message), it ends failed, its hold is given back and its key
    freed, so that the client's retry (after its 503) runs again. True if it was abandoned."""
    with credit_service.holding(hold) as held:
        job = _lock(held.session, job_id)
        if job.status != "queued" or job.attempts:
            return False
        if held.end_if_due():
            held.settle(0)
        held.session.execute(delete(KEYS).where(KEYS.c.hold_id == hold.hold_id))
        _finish(held.session, job_id, "failed", held.now, error={
            "error": "queue_unavailable", "message": "The job could not be queued; nothing was charged."})
        return True


def hold_of(job) -> Hold:
    return Hold(hold_id=job.hold_id, wallet_id=job.wallet_id, credit_type=CreditType(job.credit_type),
                amount=job.amount, available_before=0, available_after=0, client_id=job.user_id)


@retry_conflicts
def claim(job_id: str, *, lease_seconds: float, hold_seconds: float, max_attempts: int) -> Claim:
    """Start an attempt of the job, or say why not: "done" when it had ended before. A job whose
    hold has run out ends here (`expired` if no attempt ever started, else `failed`), without
    calling the AI."""
    job = find(job_id)
    if job is None:
        return Claim("unknown")
    if job.status in FINISHED:
        return Claim("done", job)
    hold = hold_of(job)
    with credit_service.holding(hold) as held:
        job = _lock(held.session, job_id)
        now = held.now
        if job.status in FINISHED:
            return Claim("done", job)
        if job.status == "running" and job.lease_expires_at > now and held.open and held.expires_at > now:
            return Claim("busy", retry_in=(job.lease_expires_at - now).total_seconds())
        if not held.end_if_due():
            status = "expired" if job.attempts == 0 else "failed"
            _finish(held.session, job_id, status, now, error=EXPIRED_ERROR)
            return Claim(status, job)
        if job.attempts >= max_attempts:
            # Its last attempt's worker died: nothing more is tried, nothing is charged.
            held.settle(0)
            _finish(held.session, job_id, "failed", now, error={
                "error": "worker_lost", "message": "The job's last attempt did not finish; nothing was charged."})
            return Claim("failed", job)
        lease = uuid.uuid4().hex
        held.extend(hold_seconds)
        held.session.execute(update(JOBS).where(JOBS.c.id == job_id).values(
            status="running", attempts=job.attempts + 1, lease=lease,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            started_at=func.coalesce(JOBS.c.started_at, now),
        ))
        hold.amount = held.amount  # the hold as it is now (an earlier attempt may have grown it)
        return Claim("claimed", job=_lock(held.session, job_id), lease=lease, hold=hold)


@retry_conflicts
def beat(job_id: str, lease: str, hold: Hold, *, lease_seconds: float, hold_seconds: float) -> bool:
    """A running attempt's heartbeat: extend its hold and its lease. False when the attempt may
    not go on (it lost its lease, or its hold ran out: then the job ends `failed` here)."""
    with credit_service.holding(hold) as held:
        if _attempt_ended(held, job_id, lease):
            return False
        held.extend(hold_seconds)
        held.session.execute(update(JOBS).where(JOBS.c.id == job_id).values(
            lease_expires_at=held.now + timedelta(seconds=lease_seconds)))
        return True


@retry_conflicts
def succeed(job_id: str, lease: str, hold: Hold, answer: dict) -> str:
    """Charge what the work charged (`hold.pending`) and store its answer, in one transaction:
    "succeeded"; or "failed" if the hold ran out first (nothing charged); or "lost" if this
    attempt no longer holds the job (nothing written)."""
    with credit_service.holding(hold) as held:
        if ended := _attempt_ended(held, job_id, lease):
            return ended
        held.settle(hold.pending)
        answer = {**answer, "balance": held.balance().as_dict()}
        _finish(held.session, job_id, "succeeded", held.now, answer=answer, charged=hold.pending)
        return "succeeded"


@retry_conflicts
def fail(job_id: str, lease: str, hold: Hold, error: dict, *, retry_in: float | None,
         hold_seconds: float = 0) -> str:
    """An attempt failed. With `retry_in`, the job goes back to the queue and its hold is kept for
    `retry_in` + `hold_seconds` ("queued"); otherwise the hold is given back and the job ends
    ("failed"). "lost" if this attempt no longer holds the job."""
    with credit_service.holding(hold) as held:
        if ended := _attempt_ended(held, job_id, lease):
            return ended
        if retry_in is not None:
            held.extend(retry_in + hold_seconds)
            held.session.execute(update(JOBS).where(JOBS.c.id == job_id).values(
                status="queued", lease=None, lease_expires_at=None, error=json.dumps(error)))
            return "queued"
        held.settle(0)
        _finish(held.session, job_id, "failed", held.now, error=error)
        return "failed"


@retry_conflicts
def cancel(job_id: str, user_id: int, ended: list | None = None, wallet_id: int | None = None):
    """Cancel a queued job of the user's and give its hold back; JobRunning or JobFinished
    otherwise. A cancel and a worker's claim queue on the account lock: exactly one wins. The job
    it ended (cancelled, or expired when its hold had run out) is added to `ended`."""
    ended = [] if ended is None else ended
    job = find(job_id, user_id, wallet_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    with credit_service.holding(hold_of(job)) as held:
        job = _lock(held.session, job_id)
        if job.status != "queued":
            raise (JobRunning if job.status == "running" else JobFinished)(f"job {job_id} is {job.status}")
        if held.end_if_due():
            held.settle(0)
            _finish(held.session, job_id, "cancelled", held.now,
                    error={"error": "cancelled", "message": "Cancelled by the user; nothing was charged."})
            ended.append(_lock(held.session, job_id))
            return ended[-1]
        # Its hold ran out before the cancel came: it ends as it would have anyway.
        _finish(held.session, job_id, "expired" if job.attempts == 0 else "failed", held.now, error=EXPIRED_ERROR)
        ended.append(_lock(held.session, job_id))
    raise JobFinished(f"job {job_id} has finished")


def get(job_id: str, user_id: int | None = None, ended: list | None = None, wallet_id: int | None = None):
    """The job as it is now: one whose hold has run out ends when it is read, not when a worker
    or a sweep next looks at it (and is added to `ended`)."""
    job = find(job_id, user_id, wallet_id)
    if job is None:
        raise UnknownJob(f"no job {job_id}")
    if job.status in UNFINISHED and _hold_overdue(job):
        return end_if_overdue(job, ended)
    return job


def end_overdue(user_id: int, ended: list | None = None) -> None:
    """End the user's unfinished jobs whose hold has run out (before they are listed)."""
    with atomic(write=False) as session:
        overdue = session.execute(
            select(JOBS).join(HOLDS, HOLDS.c.id == JOBS.c.hold_id)
            .where(JOBS.c.user_id == user_id, JOBS.c.status.in_(UNFINISHED),
                   (HOLDS.c.status != "open") | (HOLDS.c.expires_at <= utcnow()))
        ).all()
    for job in overdue:
        end_if_overdue(job, ended)


@retry_conflicts
def end_if_overdue(job, ended: list | None = None):
    with credit_service.holding(hold_of(job)) as held:
        job = _lock(held.session, job.id)
        if job.status in UNFINISHED and not held.end_if_due():
            _finish(held.session, job.id, "expired" if job.attempts == 0 else "failed", held.now,
                    error=EXPIRED_ERROR)
            job = _lock(held.session, job.id)
            if ended is not None:
                ended.append(job)
        return job


def find(job_id: str, user_id: int | None = None, wallet_id: int | None = None):
    """The job (the user's when `user_id` is given; of that wallet too when `wallet_id` is: an API
    key sees the jobs of its own wallet only)."""
    query = select(JOBS).where(JOBS.c.id == job_id)
    if user_id is not None:
        query = query.where(JOBS.c.user_id == user_id)
    if wallet_id is not None:
        query = query.where(JOBS.c.wallet_id == wallet_id)
    with atomic(write=False) as session:
        return session.execute(query).one_or_none()


def page(user_id: int, *, status: str | None, limit: int, before: tuple[datetime, str] | None,
         wallet_id: int | None = None) -> list:
    """The user's jobs (of `wallet_id` only, when given), newest first, `limit` of them after the
    cursor `before`."""
    query = select(JOBS).where(JOBS.c.user_id == user_id)
    if wallet_id is not None:
        query = query.where(JOBS.c.wallet_id == wallet_id)
    if status is not None:
        query = query.where(JOBS.c.status == status)
    if before is not None:
        created_at, job_id = before
        query = query.where((JOBS.c.created_at < created_at)
                            | ((JOBS.c.created_at == created_at) & (JOBS.c.id < job_id)))
    query = query.order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit)
    with atomic(write=False) as session:
        return session.execute(query).all()


def unfinished(limit: int = 10_000) -> list:
    with atomic(write=False) as session:
        return session.execute(
            select(JOBS.c.id).where(JOBS.c.status.in_(UNFINISHED)).order_by(JOBS.c.created_at).limit(limit)
        ).scalars().all()


def depth() -> dict[str, int]:
    """How many jobs are queued and running now."""
    with atomic(write=False) as session:
        rows = session.execute(select(JOBS.c.status, func.count()).where(JOBS.c.status.in_(UNFINISHED))
                               .group_by(JOBS.c.status)).all()
    return {"queued": 0, "running": 0, **dict(rows)}


def _hold_overdue(job) -> bool:
    with atomic(write=False) as session:
        status, expires_at = session.execute(
            select(HOLDS.c.status, HOLDS.c.expires_at).where(HOLDS.c.id == job.hold_id)).one()
    return status != "open" or expires_at <= utcnow()


def _attempt_ended(held, job_id: str, lease: str) -> str | None:
    """Why a running attempt may not go on, in its transaction: "lost" (it no longer holds the
    job), "failed" (the job's hold ran out: the job ends here, charged nothing), or None."""
    job = _lock(held.session, job_id)
    if job.status != "running" or job.lease != lease:
        return "lost"
    if not held.end_if_due():
        _finish(held.session, job_id, "failed", held.now, error=EXPIRED_ERROR)
        return "failed"
    return None


def _lock(session, job_id: str):
    return session.execute(select(JOBS).where(JOBS.c.id == job_id).with_for_update()).one()


def _finish(session, job_id: str, status: str, now: datetime, *, error: dict | None = None,
            answer: dict | None = None, charged: int | None = None) -> None:
    job = session.execute(update(JOBS).where(JOBS.c.id == job_id).values(
        status=status, finished_at=now, lease=None, lease_expires_at=None,
        error=json.dumps(error) if error is not None else None,
        answer=json.dumps(answer) if answer is not None else None,
        charged=charged if charged is not None else 0,
    ).returning(JOBS)).one()
    if status in TOLD:  # operators hear of it in the same transaction (creditapp.webhooks)
        outbox.emit(session, TOLD[status], {
            "job_id": job.id, "user_id": job.user_id, "wallet_id": job.wallet_id, "feature": job.feature,
            "status": status, "credit_type": job.credit_type, "held": job.amount, "charged": job.charged,
            "attempts": job.attempts, "error": (error or {}).get("error"), "created_at": job.created_at,
            "finished_at": now}, at=now)
