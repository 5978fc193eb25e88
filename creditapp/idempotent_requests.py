"""The request side of idempotency: reading the Idempotency-Key header and replaying answers."""
import re

from flask import Response, request
from marshmallow import ValidationError

from . import idempotency

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key() -> str | None:
    """The request's key, None without one; a malformed key is a 422 before anything happens."""
    key = request.headers.get(HEADER)
    if key is not None and not _VALID_KEY.fullmatch(key):
        raise ValidationError({HEADER: ["Must be 1 to 255 visible ASCII characters."]})
    return key


def request_fingerprint() -> str:
    return idempotency.fingerprint(request.method, request.path, request.get_data())


def replay(stored: idempotency.StoredResponse) -> Response:
    response = Response(stored.body, status=stored.status, mimetype="application/json")
    response.headers["Idempotent-Replayed"] = "true"
    return response
