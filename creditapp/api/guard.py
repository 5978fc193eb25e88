"""`require_credits`: the guard in front of every paid view.

It reserves the credits before the view runs (so two requests can never both spend the last
credit); the view's `deduct_credits` charges that hold; when the request ends the charge
is committed if the response succeeded, and everything is given back if it did not. With an
`Idempotency-Key`, a retry replays the first answer and is not charged again.

With `Prefer: respond-async` (RFC 7240) the same checks run and the same hold is taken, then the
work becomes a job (202 and its Location): the hold lives until a worker finishes the job, which
runs the same view body (creditapp.api.running).
"""
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Response, after_this_request, current_app, g, request
from limits import parse_many
from werkzeug.exceptions import MethodNotAllowed, TooManyRequests

from ..auth import caller_must_exist, current_user_id, require_csrf, session_checked_by_ledger, session_to_check
from ..exceptions import QueueUnavailable
from ..features import feature_of_route
from ..jobs import store as jobs
from ..jobs.queue import job_queue
from ..ledger import Admission, CreditType, InsufficientCredits, Hold, HoldExpired, RateLimited, credit_service
from ..ledger.keys import StoredResponse
from ..ledger.tables import MAX_AMOUNT
from ..metrics import metrics
from .errors import error_response
from .idempotency import accepted_headers, idempotent_request, replay
from .spending import caps_explained, spender
from .openapi import IDEMPOTENCY_KEY, INVALID, KEY_IN_USE, PREFER_ASYNC, RATE_LIMITED, UNAUTHORIZED, documented
from .schemas import ErrorSchema, InsufficientCreditsSchema, JobAcceptedSchema

Amount = int | Callable[..., int]
# Every paid view by name, so that a worker can run it as a job.
WORK: dict[str, Callable] = {}


@dataclass(frozen=True)
class CreditInfo:
    """What the guard found: `available` is the balance before this request reserved `required`."""

    user_id: int
    credit_type: CreditType
    required: int
    available: int
    hold_id: int
    wallet_id: int | None = None  # what the hold is taken from: the user's own wallet unless a team's

    def __post_init__(self):
        if self.wallet_id is None:
            object.__setattr__(self, "wallet_id", self.user_id)


@functools.lru_cache(maxsize=8)
def _limits(setting: str) -> tuple:
    # Shortest window first, whatever order the setting lists them in: Flask-Limiter sorted a
    # route's limits so, and a request refused by one window is not counted in the later ones.
    return tuple(sorted(parse_many(setting)))


def _paid_limits() -> tuple:
    """PAID_RATE_LIMIT's limits (none with RATELIMIT_ENABLED off): one budget per user across
    every paid route, whichever blueprint declares it, counted by the hold's own call."""
    if not current_app.config["RATELIMIT_ENABLED"]:
        return ()
    return _limits(str(current_app.config["PAID_RATE_LIMIT"]))


def _admission(user_id: int) -> Admission:
    limits = _paid_limits()
    return Admission(user_id, tuple((item.amount, item.get_expiry()) for item in limits),
                     session_id=session_to_check())


@contextmanager
def _admitted(admission: Admission) -> Iterator[None]:
    """Whatever stops the request before its hold is answered only once the request was
    admitted (its session checked, counted against the paid limit), as when the limit ran
    first: a 429 before a 409 of its key, a 401 before anything."""
    try:
        yield
    except Exception:
        credit_service.admit(admission)
        raise


def _rate_limit_headers(admission: Admission):
    """The paid limit's headers on every answer of a counted request, as Flask-Limiter's were:
    X-RateLimit-Limit, -Remaining, -Reset (epoch seconds) and Retry-After (seconds to the reset)."""

    def add(response):
        counted = admission.counted
        if counted is not None and current_app.config.get("RATELIMIT_HEADERS_ENABLED", True):
            limit = _paid_limits()[counted.window].amount
            reset = int(counted.resets_at.timestamp() + 1)  # rounded as Flask-Limiter rounds it
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(max(0, limit - counted.hits))
            response.headers["X-RateLimit-Reset"] = str(reset)
            response.headers["Retry-After"] = str(int(reset - time.time()))
        return response

    return add


def _too_many_requests(exc: RateLimited) -> TooManyRequests:
    return TooManyRequests(description=str(_paid_limits()[exc.counted.window]))


def require_credits(amount: Amount, credit_type) -> Callable:
    """Reserve `amount` credits of `credit_type` for the decorated view, or answer 403.

    `amount` is an int, or a callable given the view's arguments that returns one (for prices
    read from config, or that depend on the request). Verifies the JWT itself, and counts the
    request against the caller's paid rate limit (PAID_RATE_LIMIT) before anything is held: in
    the hold's own call, with the session check when that was left to it (ledger/admission.py).
    """
    credit_type = CreditType(credit_type)

    def decorator(view: Callable) -> Callable:
        work = f"{view.__module__}:{view.__qualname__}"
        WORK[work] = view

        @functools.wraps(view)
        def guarded(*args, **kwargs):
            try:
                return paid(*args, **kwargs)
            except RateLimited as exc:
                raise _too_many_requests(exc) from None

        def paid(*args, **kwargs):
            if request.method == "HEAD":
                # Flask answers HEAD on every GET route; a paid view must not run (and charge) for
                # an answer whose body is thrown away. Not counted, as it never was.
                raise MethodNotAllowed(valid_methods=["GET"])
            user_id = current_user_id()
            admission = _admission(user_id)
            after_this_request(_rate_limit_headers(admission))
            with _admitted(admission):
                require_csrf()
                spent_by = spender()
                # The declared feature's name, as jobs are labelled: one name in metrics and logs
                # whether a request ran at once or as a job, so per-feature totals do not split.
                feature = feature_of_route(request.method, request.url_rule.rule) or request.endpoint or view.__name__
                g.credit_log = {"feature": feature, "credit_type": credit_type.value}
                asynchronous = prefers_async()
                idempotent = idempotent_request(asynchronous)
                key, fingerprint = idempotent.key, idempotent.fingerprint
                required = amount(*args, **kwargs) if callable(amount) else amount
            if required > MAX_AMOUNT:  # more than any balance can hold: a price times a huge input
                g.credit_log["outcome"] = "insufficient_credits"
                credit_service.admit(admission)
                available = getattr(credit_service.get_credit_balance(spent_by.wallet_id), credit_type.value)
                raise InsufficientCredits(required, available, credit_type.value)
            try:
                with caller_must_exist(), caps_explained(spent_by):
                    hold = credit_service.hold_or_replay(
                        spent_by.wallet_id, required, credit_type, key=key, fingerprint=fingerprint,
                        spender=spent_by, feature=feature_of_route(request.method, request.url_rule.rule),
                        admission=admission,
                    )
            except InsufficientCredits:
                metrics().insufficient.labels(feature, credit_type.value).inc()
                g.credit_log["outcome"] = "insufficient_credits"
                raise
            if isinstance(hold, StoredResponse):
                g.credit_log["outcome"] = "replayed"
                return replay(hold)
            g.credit_log.update(reserved=required, hold_id=hold.hold_id)
            if asynchronous:
                return _submit(hold, work, args, kwargs)
            metrics().count("reserved", feature, credit_type.value, required)
            metrics().open_holds.inc()
            g.credit_info = CreditInfo(
                user_id=user_id, credit_type=credit_type, required=required,
                available=hold.available_before, hold_id=hold.hold_id, wallet_id=spent_by.wallet_id,
            )
            answered = key is not None
            g.credit_hold = hold

            @after_this_request
            def close_hold(response):
                if g.get("credit_hold_streamed") and response.is_streamed:
                    return response  # the stream closes it when it ends (creditapp.api.streaming)
                return _close(hold, response, answered)

            try:
                with credit_service.activate(hold):
                    return view(*args, **kwargs)
            except InsufficientCredits:
                # The work used more than was held and the rest of the balance could not cover
                # it: the AI was already called, but an unpaid result is never handed out.
                _close(hold, None, answered)
                metrics().usage_exceeded.labels(feature, credit_type.value).inc()
                g.credit_log["outcome"] = "usage_exceeded_hold"
                raise
            except Exception:
                _close(hold, None, answered)
                raise

        # Carried outwards by every decorator's functools.wraps: what lets creditapp.features.serve
        # tell which work an app's routes can submit.
        guarded.creditapp_work = work
        return _documented(session_checked_by_ledger(guarded), credit_type)

    return decorator


def hold_for_stream() -> Hold:
    """The request's hold, for a view that answers with a stream: the stream closes it when it
    ends (creditapp.api.streaming), not the guard when the view returns."""
    g.credit_hold_streamed = True
    g.credit_log["outcome"] = "streaming"  # how it ends: the stream's own log line
    return g.credit_hold


def close_streamed(hold: Hold, answer: str | None) -> str | None:
    """Close a stream's hold: charged what was added to it with `answer` (its final body, stored
    for the Idempotency-Key) or, with None, given back whole. None when it closed as asked, else
    the error code of why nothing was charged (reservation_expired, database_unavailable)."""
    if hold.closed:  # the ledger ended it already (an extension found it expired)
        _closed(hold, charged=0)
        g.credit_log["outcome"] = "reservation_expired"
        return "reservation_expired"
    response = Response(answer, status=200, mimetype="application/json") if answer is not None else None
    closed = _close(hold, response, hold.key is not None)
    return None if closed is response else closed.get_json()["error"]


def prefers_async() -> bool:
    """Whether the request asks for `Prefer: respond-async` (RFC 7240), among any others."""
    for header in request.headers.getlist("Prefer"):
        for preference in header.split(","):
            if preference.split(";")[0].split("=")[0].strip().lower() == "respond-async":
                return True
    return False


def _submit(hold: Hold, work: str, args: tuple, kwargs: dict) -> Response:
    """Turn the held request into a queued job: 202 with its Location. The 202 is stored for the
    Idempotency-Key once the broker has the job, so a retry answers the same job (and, before
    that, is told the key is in use: never "queued" for a job that may not be)."""
    job_id = jobs.new_id()
    feature = feature_of_route(request.method, request.url_rule.rule) or request.endpoint
    body = current_app.json.dumps({"job_id": job_id, "status": "queued", "feature": feature,
                                   "held": {"credit_type": hold.credit_type.value, "amount": hold.amount}},
                                  separators=(",", ":"))
    try:
        jobs.submit(hold, job_id=job_id, feature=feature, work=work,
                    params={"args": list(args), "kwargs": kwargs}, request_id=g.get("request_id"))
    except Exception:
        try:
            credit_service.close(hold, succeeded=False)
        except Exception:
            current_app.logger.exception("hold %s stays until it expires", hold.hold_id)
        raise
    metrics().count("reserved", feature, hold.credit_type.value, hold.amount)
    try:
        job_queue().send(job_id)
    except QueueUnavailable:
        current_app.logger.exception("job %s could not be queued", job_id)
        if jobs.abandon(job_id, hold):
            metrics().count("released", feature, hold.credit_type.value, hold.amount)
            g.credit_log.update(charged=0, outcome="queue_unavailable")
            raise
        # A worker has it already: the broker got the message after all.
    try:
        jobs.queued(hold, 202, body)
    except Exception:
        # The job is queued and will run: a retry is told the key is in use until it ends.
        current_app.logger.exception("the 202 of job %s was not stored for its key", job_id)
    g.credit_log.update(outcome="queued", job_id=job_id)
    return job_accepted(body)


def job_accepted(body: str) -> Response:
    response = Response(body, status=202, mimetype="application/json")
    return accepted_headers(response)


def _documented(view: Callable, credit_type: CreditType) -> Callable:
    """What the guard can answer goes into the view's OpenAPI entry, so that a new paid route is
    documented without extra work."""
    return documented(view, parameters=[IDEMPOTENCY_KEY, PREFER_ASYNC], responses=[
        (202, JobAcceptedSchema, "With `Prefer: respond-async`: the job, queued; poll its Location"),
        UNAUTHORIZED,
        (403, InsufficientCreditsSchema, f"Not enough {credit_type.value}; nothing was charged"),
        KEY_IN_USE, INVALID, RATE_LIMITED,
        (502, ErrorSchema, "generation_failed: the AI provider failed; nothing was charged"),
        (503, ErrorSchema, "reservation_expired, database_unavailable or queue_unavailable; nothing was charged"),
    ])


def _close(hold: Hold, response: Response | None, answered: bool):
    """Commit the charge with the answer it paid for, or give everything back."""
    if hold.closed:
        return response
    succeeded = response is not None and response.status_code < 400
    answer = (response.status_code, response.get_data(as_text=True)) if succeeded and answered else None
    try:
        credit_service.close(hold, succeeded=succeeded, answer=answer)
        _closed(hold, charged=hold.pending if succeeded else 0)
        return response
    except HoldExpired as exc:
        # The close ended the hold (or found it ended) and freed its key: nothing to give back.
        current_app.logger.warning("%s", exc)
        _closed(hold, charged=0)
        g.credit_log["outcome"] = "reservation_expired"
        return error_response(503, "reservation_expired", "The request took too long; nothing was charged.")
    except Exception:
        current_app.logger.exception("could not close credit hold %s", hold.hold_id)
        if succeeded and _settled_anyway(hold):
            _closed(hold, charged=hold.pending)
            return response
    _give_back(hold)
    if not succeeded:
        return response
    # Not charged, so the result must not be handed out either.
    return error_response(503, "database_unavailable", "The charge could not be recorded; nothing was charged.")


def _closed(hold: Hold, charged: int) -> None:
    feature, credit_type = g.credit_log["feature"], hold.credit_type.value
    metrics().count("charged", feature, credit_type, charged)
    metrics().count("released", feature, credit_type, hold.amount - charged)
    metrics().open_holds.dec()
    g.credit_log.update(charged=charged, outcome="charged" if charged else "not_charged")


def _give_back(hold: Hold) -> None:
    """Second try on a fresh connection; failing that, the hold expires after its TTL."""
    try:
        credit_service.close(hold, succeeded=False)
        _closed(hold, charged=0)
    except Exception:
        current_app.logger.exception("hold %s stays until it expires", hold.hold_id)
        g.credit_log.update(charged=0, outcome="hold_left_to_expire")


def _settled_anyway(hold: Hold) -> bool:
    """A connection lost during COMMIT leaves it unknown whether the commit happened: ask."""
    try:
        return credit_service.hold_status(hold.hold_id) == "settled"
    except Exception:
        return False
