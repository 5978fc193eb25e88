"""The request side of idempotency, for every route that takes an Idempotency-Key (the paid
routes, the admin grant and refund): the header, the request's fingerprint, replaying a stored
answer. The keys themselves live in the ledger (creditapp.ledger.keys): a paid request's key is
bound to its hold; an admin request stores its answer in the transaction that did the work.
"""
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

from flask import Response, current_app, request
from marshmallow import ValidationError

from ..auth import current_key
from ..ledger import AlreadyRefunded, IdempotencyKeyInUse, ReferenceConflict, RefundExceedsCharge, credit_service
from ..ledger import keys
from ..ledger.clock import utcnow
from ..ledger.keys import StoredResponse
from ..ledger.transactions import atomic

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key() -> str | None:
    """The request's key, None without one; a malformed key is a 422 before anything happens."""
    key = request.headers.get(HEADER)
    if key is not None and not _VALID_KEY.fullmatch(key):
        raise ValidationError({HEADER: ["Must be 1 to 255 visible ASCII characters."]})
    return key


def fingerprint(method: str, path: str, body: bytes) -> str:
    """Same route and same JSON (whatever its key order or spacing) give the same fingerprint."""
    try:
        canonical = json.dumps(json.loads(body or b"null"), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, RecursionError):
        canonical = body
    return hashlib.sha256(f"{method} {path}\n".encode() + canonical).hexdigest()


def request_fingerprint(asynchronous: bool = False) -> str:
    """Method, path, query (in a canonical order) and JSON body; a job and a synchronous answer are
    different requests too: one key cannot stand for both."""
    path = request.path
    if request.args:
        path += "?" + urlencode(sorted(request.args.items(multi=True)))
    path += " respond-async" if asynchronous else ""
    # Who spends is part of the request: one Idempotency-Key from the user's token, an API key
    # and a team (X-Team) names three requests, and none replays another's answer.
    key = current_key()
    path += f" key:{key.id}" if key is not None else ""
    path += f" team:{request.headers.get('X-Team', '').strip()}" if "X-Team" in request.headers else ""
    return fingerprint(request.method, path, request.get_data())


def replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    if stored.status == 202:
        accepted_headers(response)
    return response


def accepted_headers(response: Response) -> Response:
    """A queued job's 202: where to poll it (and when: creditapp.jobs.queue sets Retry-After once
    the rate limiter has set its own)."""
    response.headers["Location"] = f"/api/jobs/{json.loads(response.get_data())['job_id']}"
    response.headers["Preference-Applied"] = "respond-async"
    return response


@dataclass
class IdempotentRequest:
    """This request's Idempotency-Key (None without one) and fingerprint."""

    key: str | None
    fingerprint: str | None
    replayed: Response | None = None  # set by replay_if_it_won

    def stored(self, caller_id: int) -> Response | None:
        """The answer stored for the key, to replay; None when the request should run."""
        if self.key is None:
            return None
        answer = credit_service.replay_or_free(caller_id, self.key, self.fingerprint)
        return replay(answer) if answer is not None else None

    def store(self, session, caller_id: int, status: int, body: dict) -> None:
        """Store the answer for the key inside the transaction that did the work."""
        if self.key is not None:
            kept_until = utcnow() + timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])
            key_id = keys.claim(session, caller_id, self.key, self.fingerprint, kept_until)
            keys.complete(session, key_id, status, json.dumps(body), kept_until)

    def claim(self, caller_id: int, seconds: float) -> int | None:
        """Mark the key in flight, for work that calls outside before it can answer (a checkout at
        the provider): a retry meanwhile is 409 idempotency_key_in_use. Lapses after `seconds`,
        should this process die before `complete` or `release`."""
        if self.key is None:
            return None
        with atomic() as session:
            return keys.claim(session, caller_id, self.key, self.fingerprint, utcnow() + timedelta(seconds=seconds))

    def complete(self, key_id: int | None, status: int, body: dict) -> None:
        if key_id is not None:
            kept_until = utcnow() + timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])
            with atomic() as session:
                keys.complete(session, key_id, status, json.dumps(body), kept_until)

    def release(self, key_id: int | None) -> None:
        """Free the key of work that failed: a retry runs again."""
        if key_id is not None:
            with atomic() as session:
                keys.forget(session, key_id)

    @contextmanager
    def replay_if_it_won(self, caller_id: int) -> Iterator["IdempotentRequest"]:
        """Two requests with one key at once both find it free; the second then fails on the key
        (or on what the first already did). When the first has stored its answer by then, the
        second replays it (in `replayed`)."""
        try:
            yield self
        except (IdempotencyKeyInUse, AlreadyRefunded, RefundExceedsCharge, ReferenceConflict):
            self.replayed = self.stored(caller_id)
            if self.replayed is None:
                raise


def idempotent_request(asynchronous: bool = False) -> IdempotentRequest:
    """Read this request's Idempotency-Key (a malformed one is a 422 before anything happens)."""
    key = idempotency_key()
    return IdempotentRequest(key, request_fingerprint(asynchronous) if key is not None else None)
