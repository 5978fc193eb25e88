import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from flask import current_app

from .. import users
from ..auth import caller_must_exist, current_user_id, require_login
from ..ledger import (
    AlreadyRefunded, Grant, IdempotencyKeyInUse, ReferenceConflict, Refund, RefundExceedsCharge, UnknownUser,
    credit_service, keys,
)
from ..ledger.clock import utcnow
from ..ledger.tables import MAX_USER_ID
from .bodies import Blueprint
from .idempotency import idempotency_key, replay, request_fingerprint
from .schemas import (
    ErrorSchema, GrantResultSchema, GrantSchema, RefundResultSchema, RefundSchema, VoidResultSchema, VoidSchema,
)

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Administration.")
blp.before_request(require_login())
grant_result_schema = GrantResultSchema()
refund_result_schema = RefundResultSchema()


@blp.post("/users/<id:user_id>/credits")
@blp.arguments(GrantSchema)
@blp.response(201, GrantResultSchema, description="Granted")
@blp.alt_response(200, schema=GrantResultSchema, description="A grant with this reference existed; nothing added")
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown user")
@blp.alt_response(409, schema=ErrorSchema, description="Idempotency-Key in use, or reference used differently")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input, or Idempotency-Key reused")
@blp.doc(security=[{"bearerAuth": []}], parameters=[{
    "in": "header", "name": "Idempotency-Key", "required": False, "schema": {"type": "string"},
    "description": "Retries with the same key replay the first answer and grant nothing more"}])
def grant_credits(grant, user_id):
    """Grant credits to a user as a new lot, with its priority and expiry (administrators only)."""
    admin_id = _administrator()
    if user_id > MAX_USER_ID:
        raise UnknownUser(f"no user with id {user_id}")  # no such id can exist; spare the database
    key, fingerprint, replayed = _idempotent(admin_id)
    if replayed is not None:
        return replayed

    def store_answer(session, result: Grant):
        _store(session, admin_id, key, fingerprint, _status(result), grant_result_schema.dump(_answer(result)))

    expires_at = grant["expires_at"]
    if grant["expires_in_days"] is not None:
        expires_at = utcnow() + timedelta(days=grant["expires_in_days"])
    with _replay_if_it_won(admin_id, key, fingerprint) as replayed:
        result = credit_service.grant(
            user_id, grant["amount"], grant["credit_type"], reason=grant["reason"] or "admin grant",
            reference=grant["reference"], priority=grant["priority"], expires_at=expires_at, also=store_answer,
        )
    return replayed.response or (_answer(result), _status(result))


@blp.post("/charges/<id:hold_id>/refund")
@blp.arguments(RefundSchema)
@blp.response(200, RefundResultSchema, description="Refunded")
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_charge")
@blp.alt_response(409, schema=ErrorSchema, description="already_refunded, refund_exceeds_charge (with `refundable`), "
                  "not_a_charge, or Idempotency-Key in use")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input, or Idempotency-Key reused")
@blp.doc(security=[{"bearerAuth": []}], parameters=[{
    "in": "header", "name": "Idempotency-Key", "required": False, "schema": {"type": "string"},
    "description": "Retries with the same key replay the first answer and refund nothing more"}])
def refund_charge(body, hold_id):
    """Give back all or part of what a charge took, to the lots it came from (administrators only)."""
    admin_id = _administrator()
    key, fingerprint, replayed = _idempotent(admin_id)
    if replayed is not None:
        return replayed

    def store_answer(session, result: Refund):
        _store(session, admin_id, key, fingerprint, 200, refund_result_schema.dump(_refund_answer(result)))

    with _replay_if_it_won(admin_id, key, fingerprint) as replayed:
        result = credit_service.refund(hold_id, body["amount"], reason=body["reason"], also=store_answer)
    return replayed.response or _refund_answer(result)


@blp.post("/lots/<id:lot_id>/void")
@blp.arguments(VoidSchema)
@blp.response(200, VoidResultSchema, description="Voided")
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="unknown_lot")
@blp.alt_response(409, schema=ErrorSchema, description="lot_voided: it was voided before")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input")
@blp.doc(security=[{"bearerAuth": []}])
def void_lot(body, lot_id):
    """Remove what nobody holds of a lot, e.g. when its payment was reversed (administrators only)."""
    _administrator()
    result = credit_service.void_lot(lot_id, reason=body["reason"])
    return {"user_id": result["user_id"], **result["balance"].as_dict(), "voided": result["voided"],
            "lot": result["lot"]}


def _administrator() -> int:
    admin_id = current_user_id()
    with caller_must_exist():
        users.require_admin(admin_id)
    return admin_id


def _idempotent(caller_id: int):
    """The request's Idempotency-Key, its fingerprint, and the stored answer to replay (or None)."""
    key = idempotency_key()
    fingerprint = request_fingerprint() if key else None
    stored = credit_service.replay_or_free(caller_id, key, fingerprint) if key else None
    return key, fingerprint, replay(stored) if stored is not None else None


class _Replayed:
    response = None


@contextmanager
def _replay_if_it_won(caller_id: int, key: str | None, fingerprint: str | None) -> Iterator[_Replayed]:
    """Two requests with one key at once both find it free; the second then fails on the key (or
    on what the first already did). When the first has stored its answer by then, replay it."""
    replayed = _Replayed()
    try:
        yield replayed
    except (IdempotencyKeyInUse, AlreadyRefunded, RefundExceedsCharge, ReferenceConflict):
        stored = credit_service.replay_or_free(caller_id, key, fingerprint) if key else None
        if stored is None:
            raise
        replayed.response = replay(stored)


def _store(session, caller_id: int, key: str | None, fingerprint: str | None, status: int, body: dict) -> None:
    """Store the answer for the key inside the transaction that did the work."""
    if key:
        kept_until = utcnow() + timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])
        key_id = keys.claim(session, caller_id, key, fingerprint, kept_until)
        keys.complete(session, key_id, status, json.dumps(body), kept_until)


def _refund_answer(result: Refund) -> dict:
    return {
        "user_id": result.user_id, **result.balance.as_dict(),
        "refund": {"hold_id": result.hold_id, "credit_type": result.credit_type.value, "amount": result.amount,
                   "charged": result.charged, "refunded_total": result.refunded_total,
                   "refundable": result.refundable, "lots": result.lots},
    }


def _answer(result: Grant) -> dict:
    return {
        "user_id": result.user_id, **result.balance.as_dict(),
        "grant": {"id": result.id, "amount": result.amount, "credit_type": result.credit_type.value,
                  "reason": result.reason, "reference": result.reference},
        "lot": result.lot,
    }


def _status(result: Grant) -> int:
    return 201 if result.created else 200
