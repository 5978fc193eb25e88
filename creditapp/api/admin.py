import json
from datetime import timedelta

from flask import current_app

from .. import users
from ..auth import caller_must_exist, current_user_id, require_login
from ..ledger import Grant, UnknownUser, credit_service, keys
from ..ledger.clock import utcnow
from ..ledger.tables import MAX_USER_ID
from .bodies import Blueprint
from .idempotency import idempotency_key, replay, request_fingerprint
from .schemas import ErrorSchema, GrantResultSchema, GrantSchema

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Administration.")
blp.before_request(require_login())
grant_result_schema = GrantResultSchema()


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
    admin_id = current_user_id()
    with caller_must_exist():
        users.require_admin(admin_id)
    if user_id > MAX_USER_ID:
        raise UnknownUser(f"no user with id {user_id}")  # no such id can exist; spare the database
    key = idempotency_key()
    fingerprint = request_fingerprint() if key else None
    if key and (stored := credit_service.replay_or_free(admin_id, key, fingerprint)):
        return replay(stored)

    def store_answer(session, result: Grant):
        if key:
            kept_until = utcnow() + timedelta(seconds=current_app.config["IDEMPOTENCY_TTL_SECONDS"])
            key_id = keys.claim(session, admin_id, key, fingerprint, kept_until)
            body = json.dumps(grant_result_schema.dump(_answer(result)))
            keys.complete(session, key_id, _status(result), body, kept_until)

    expires_at = grant["expires_at"]
    if grant["expires_in_days"] is not None:
        expires_at = utcnow() + timedelta(days=grant["expires_in_days"])
    result = credit_service.grant(
        user_id, grant["amount"], grant["credit_type"], reason=grant["reason"] or "admin grant",
        reference=grant["reference"], priority=grant["priority"], expires_at=expires_at, also=store_answer,
    )
    return _answer(result), _status(result)


def _answer(result: Grant) -> dict:
    return {
        "user_id": result.user_id, **result.balance.as_dict(),
        "grant": {"id": result.id, "amount": result.amount, "credit_type": result.credit_type.value,
                  "reason": result.reason, "reference": result.reference},
        "lot": result.lot,
    }


def _status(result: Grant) -> int:
    return 201 if result.created else 200
