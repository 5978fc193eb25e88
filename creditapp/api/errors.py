"""Every error the app produces, in one JSON shape: {"error", "message", ...details}.

Domain errors are mapped to HTTP here and only here.
"""
from flask import Flask, jsonify
from marshmallow import ValidationError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from ..auth import unchecked_session_refusal
from ..database import migrations_pending
from ..exceptions import (
    GenerationFailed, InvalidCredentials, InvalidIdentity, JobFinished, JobRunning, NotAdmin, OwnAccess,
    QueueUnavailable, UnknownJob, UsernameTaken,
)
from ..access.errors import (
    AlreadyMember, BudgetExceeded, FeatureOutsideKey, InvalidKey, KeyAlreadyRevoked, KeyExpired, KeyRevoked,
    LoginTokenRequired,
    NotAllowed, UnknownKey, UnknownMember, UnknownTeam,
)
from ..payments.errors import (
    InvalidBody, InvalidSignature, LivemodeMismatch, PaymentsUnavailable, UnknownPack, UnknownPurchase,
)
from ..plans.errors import NoSubscription, PlanChangeDeclined, SubscriptionAtProvider, UnknownPlan
from ..webhooks.errors import EndpointDisabled, InvalidEndpointUrl, UnknownDelivery, UnknownEndpoint
from ..webhooks.outbox import UnknownEventType
from ..ledger.errors import (
    AccountDisabled, AlreadyRefunded, ExpiryNotInTheFuture, IdempotencyKeyInUse, IdempotencyKeyReused, InsufficientCredits, LotAlreadyVoided, NotACharge, NotRefundable,
    ReferenceConflict, RefundExceedsCharge, HoldExpired, SessionRevoked, UnknownCharge, UnknownLot, UnknownUser,
)
from ..ledger.errors import InvalidRange, TooManyBuckets

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
}

DOMAIN_ERRORS = {
    InvalidCredentials: (401, "invalid_credentials"),
    InvalidIdentity: (401, "invalid_token"),
    NotAdmin: (403, "forbidden"),
    AccountDisabled: (403, "account_disabled"),
    OwnAccess: (409, "cannot_change_own_access"),
    UnknownUser: (404, "unknown_user"),
    UnknownCharge: (404, "unknown_charge"),
    UnknownLot: (404, "unknown_lot"),
    UnknownJob: (404, "unknown_job"),
    JobRunning: (409, "job_running"),
    JobFinished: (409, "job_finished"),
    QueueUnavailable: (503, "queue_unavailable"),
    NotACharge: (409, "not_a_charge"),
    NotRefundable: (409, "not_refundable"),
    AlreadyRefunded: (409, "already_refunded"),
    LotAlreadyVoided: (409, "lot_voided"),
    UsernameTaken: (409, "username_taken"),
    IdempotencyKeyInUse: (409, "idempotency_key_in_use"),
    ReferenceConflict: (409, "reference_conflict"),
    IdempotencyKeyReused: (422, "idempotency_key_reused"),
    GenerationFailed: (502, "generation_failed"),
    HoldExpired: (503, "reservation_expired"),
    InvalidKey: (401, "invalid_key"),
    KeyRevoked: (401, "key_revoked"),
    KeyExpired: (401, "key_expired"),
    LoginTokenRequired: (403, "login_token_required"),
    NotAllowed: (403, "forbidden"),
    FeatureOutsideKey: (403, "feature_not_allowed"),
    UnknownKey: (404, "unknown_key"),
    UnknownTeam: (404, "unknown_team"),
    UnknownMember: (404, "unknown_member"),
    AlreadyMember: (409, "already_member"),
    KeyAlreadyRevoked: (409, "key_revoked"),
    UnknownPack: (422, "unknown_pack"),
    UnknownPurchase: (404, "unknown_purchase"),
    PaymentsUnavailable: (503, "payments_unavailable"),
    InvalidSignature: (400, "invalid_signature"),
    LivemodeMismatch: (400, "livemode_mismatch"),
    InvalidBody: (400, "invalid_body"),
    UnknownPlan: (422, "unknown_plan"),
    NoSubscription: (409, "no_subscription"),
    SubscriptionAtProvider: (409, "subscription_at_provider"),
    PlanChangeDeclined: (402, "payment_declined"),
    InvalidRange: (422, "invalid_range"),
    UnknownEndpoint: (404, "unknown_webhook_endpoint"),
    UnknownDelivery: (404, "unknown_webhook_delivery"),
    InvalidEndpointUrl: (422, "invalid_webhook_url"),
    UnknownEventType: (422, "unknown_event_type"),
    EndpointDisabled: (409, "webhook_endpoint_disabled"),
}


def error_response(status: int, error: str, message: str, **details):
    response = jsonify({"error": error, "message": message, **details})
    response.status_code = status
    return response


def _field_errors(messages) -> dict:
    """webargs nests field errors under the location ("json", "query"); clients want the fields."""
    if isinstance(messages, dict) and len(messages) == 1:
        (location, fields), = messages.items()
        if location in ("json", "query", "form", "headers", "view_args") and isinstance(fields, dict):
            return fields
    return messages


def handle_http_exception(exc: HTTPException):
    status = exc.code or 500
    data = getattr(exc, "data", None) or {}
    details = {}
    if "messages" in data:
        details["errors"] = _field_errors(data["messages"])
    message = exc.description or exc.name
    if status == 422 and "errors" in details:
        message = "The request is not valid; see errors for each field."
    response = error_response(status, HTTP_CODES.get(status, "http_error"), message, **details)
    if getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def handle_insufficient_credits(exc: InsufficientCredits):
    return error_response(
        403, "insufficient_credits",
        f"This needs {exc.required} {exc.credit_type}; {exc.available} available.",
        required=exc.required, available=exc.available, credit_type=exc.credit_type,
    )


def handle_budget_exceeded(exc: BudgetExceeded):
    code = "key_budget_exceeded" if exc.whose == "key" else "member_cap_exceeded"
    return error_response(403, code, str(exc), budget=exc.budget, spent=exc.spent, required=exc.required,
                          credit_type=exc.credit_type)


def handle_refund_exceeds_charge(exc: RefundExceedsCharge):
    return error_response(
        409, "refund_exceeds_charge", f"{exc.asked} asked, {exc.refundable} left to refund.",
        refundable=exc.refundable,
    )


def handle_expiry_not_in_the_future(exc: ExpiryNotInTheFuture):
    # The schema checked it too; the clock can pass it between the check and the grant.
    return error_response(422, "validation_error", "The request is not valid; see errors for each field.",
                          errors={"expires_at": ["Must be in the future."]})


def handle_too_many_buckets(exc: TooManyBuckets):
    return error_response(422, "too_many_buckets", str(exc), buckets=exc.buckets, max_buckets=exc.limit)


def handle_validation_error(exc: ValidationError):
    """A schema loaded inside a view (rather than with @blp.arguments) fails the same way."""
    return error_response(
        422, "validation_error", "The request is not valid; see errors for each field.",
        errors=exc.messages,
    )


def token_revoked(*_args):
    """A token of a logged-out session, found by flask-jwt-extended's check or by the ledger call
    that folds the check in (SessionRevoked): the same answer either way."""
    return error_response(401, "token_revoked", "The token has been revoked.")


def refuse_unchecked_session(response):
    """A session check left to a ledger call the request never made (it failed before: a 422
    of its body, say) is made here, before anything else sees the answer: a logged-out token
    gets its 401 whatever else went wrong, as if it had been checked first."""
    refusal = unchecked_session_refusal()
    if refusal == "revoked":
        return token_revoked()
    if refusal == "disabled":
        return error_response(403, "account_disabled", "this account is disabled")
    return response


def _domain_handler(status: int, code: str):
    def handle(exc: Exception):
        return error_response(status, code, str(exc))

    return handle


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(InsufficientCredits, handle_insufficient_credits)
    app.register_error_handler(RefundExceedsCharge, handle_refund_exceeds_charge)
    app.register_error_handler(BudgetExceeded, handle_budget_exceeded)
    app.register_error_handler(ExpiryNotInTheFuture, handle_expiry_not_in_the_future)
    app.register_error_handler(TooManyBuckets, handle_too_many_buckets)
    app.register_error_handler(SessionRevoked, token_revoked)
    # Registered after every extension's, so it runs before theirs (CORS, the request log).
    app.after_request(refuse_unchecked_session)
    for exc_class, (status, code) in DOMAIN_ERRORS.items():
        app.register_error_handler(exc_class, _domain_handler(status, code))

    def handle_migrations_pending():
        # Said once at start (creditapp.startup); each request only answers it.
        return error_response(503, "migrations_pending",
                              "The database is not migrated to this version yet (flask db upgrade).")

    @app.errorhandler(OperationalError)
    def handle_database_unavailable(exc):
        if migrations_pending(exc):
            return handle_migrations_pending()
        app.logger.warning("database unavailable: %s", exc.orig)
        return error_response(503, "database_unavailable", "The database is not reachable; retry later.")

    @app.errorhandler(PoolTimeout)
    def handle_pool_exhausted(exc):
        app.logger.warning("no database connection free within the pool timeout")
        return error_response(503, "database_unavailable", "The service is busy; retry later.")

    @app.errorhandler(DBAPIError)
    def handle_database_error(exc):
        if exc.connection_invalidated:
            return handle_database_unavailable(exc)
        if migrations_pending(exc):
            return handle_migrations_pending()
        app.logger.exception("database error")
        return error_response(500, "internal_error", "Internal server error.")

    @app.errorhandler(Exception)
    def handle_unexpected(exc):
        app.logger.exception("unhandled error")
        return error_response(500, "internal_error", "Internal server error.")


def register_jwt_handlers(jwt) -> None:
    """flask-jwt-extended answers some token errors with 422 by default; every one is a 401 here."""

    @jwt.unauthorized_loader
    def missing_token(reason: str):
        return error_response(401, "authorization_required", f"Authorization required: {reason}")

    @jwt.invalid_token_loader
    def invalid_token(reason: str):
        return error_response(401, "invalid_token", f"Invalid token: {reason}")

    @jwt.expired_token_loader
    def expired_token(_header, _payload):
        return error_response(401, "token_expired", "The token has expired; log in again.")

    jwt.revoked_token_loader(token_revoked)

    @jwt.needs_fresh_token_loader
    def stale_token(_header, _payload):
        return error_response(401, "fresh_token_required", "A fresh token is required.")

    @jwt.user_lookup_error_loader
    def unknown_identity(_header, _payload):
        return error_response(401, "invalid_token", "The token's user no longer exists.")
