"""The request side of idempotency: the Idempotency-Key header, the request's fingerprint and
replaying a stored answer. The keys themselves live in the ledger (creditapp.ledger.keys)."""
import hashlib
import json
import re

from flask import Response, request
from marshmallow import ValidationError

from ..ledger.keys import StoredResponse

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
    """A job and a synchronous answer are different requests: one key cannot stand for both."""
    path = request.path + (" respond-async" if asynchronous else "")
    return fingerprint(request.method, path, request.get_data())


def replay(stored: StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    if stored.status == 202:
        accepted_headers(response)
    return response


def accepted_headers(response: Response) -> Response:
    """A queued job's 202: where to poll it. (Polling GET /api/jobs/<id> says when to come back:
    here the paid rate limit's own Retry-After, its window's reset, would overwrite any.)"""
    response.headers["Location"] = f"/api/jobs/{json.loads(response.get_data())['job_id']}"
    response.headers["Preference-Applied"] = "respond-async"
    return response
