"""The OpenAPI pieces every route shares, defined once: bearer security, the Idempotency-Key and
Prefer headers, the common error answers, and `documented()`, which adds them to a view's entry."""
from collections.abc import Callable
from copy import deepcopy

from .schemas import ErrorSchema

BEARER = [{"bearerAuth": []}]
IDEMPOTENCY_KEY = {
    "in": "header", "name": "Idempotency-Key", "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[\\x21-\\x7e]+$"},
    "description": "Retries with the same key (and the same request) replay the first answer; "
                   "nothing is done or charged again.",
}
PREFER_ASYNC = {
    "in": "header", "name": "Prefer", "required": False, "schema": {"type": "string", "example": "respond-async"},
    "description": "`respond-async` (RFC 7240): answer 202 with a job to poll at its Location instead of waiting "
                   "for the AI; the credits stay held until the job ends.",
}
UNAUTHORIZED = (401, ErrorSchema, "Missing, expired, revoked or invalid token")
KEY_IN_USE = (409, ErrorSchema, "idempotency_key_in_use: a request with this key is still running")
INVALID = (422, ErrorSchema, "validation_error, or idempotency_key_reused; nothing was done")
RATE_LIMITED = (429, ErrorSchema, "too_many_requests: over the rate limit; nothing was done")


def documented(view: Callable, *, responses=(), parameters=(), security=BEARER) -> Callable:
    """Add answers and parameters to a view's OpenAPI entry. flask-smorest reads it from
    `_apidoc`, which its own decorators copy outwards (tests/test_api_errors.py checks the
    document)."""
    doc = view._apidoc = deepcopy(getattr(view, "_apidoc", {}))
    answers = doc.setdefault("response", {}).setdefault("responses", {})
    for status, schema, description in responses:
        answers.setdefault(status, []).append(
            {"schema": schema() if isinstance(schema, type) else schema, "description": description,
             "content_type": None})
    if security is not None:
        doc.setdefault("manual_doc", {}).setdefault("security", security)
    # With the parameters flask-smorest makes of the view's `arguments` (a query schema's
    # fields): a manual_doc list would replace those.
    doc.setdefault("arguments", {}).setdefault("parameters", []).extend(deepcopy(list(parameters)))
    return view


def document(*, responses=(), parameters=(), security=BEARER) -> Callable:
    """`documented` as a decorator."""
    return lambda view: documented(view, responses=responses, parameters=parameters, security=security)
