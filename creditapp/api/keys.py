"""API keys: `POST/GET /api/keys`, `GET/PATCH/DELETE /api/keys/<id>` (with a login token only)."""
from marshmallow import ValidationError

from .. import features
from ..access import keys
from ..auth import current_user_id, require_csrf, require_login, require_login_token
from ..ledger.clock import utcnow
from .access_schemas import KeyChangeSchema, KeyCreateSchema, KeyListSchema, KeySchema
from .bodies import Blueprint
from .openapi import INVALID, UNAUTHORIZED, document
from .schemas import ErrorSchema

blp = Blueprint("keys", __name__, url_prefix="/api/keys", description="API keys for servers and scripts.")
blp.before_request(require_login())


def _owner() -> int:
    require_login_token()
    require_csrf()
    return current_user_id()


@blp.post("")
@blp.arguments(KeyCreateSchema)
@blp.response(201, KeySchema, description="The key, with `key` shown this once")
@blp.alt_response(403, schema=ErrorSchema, description="login_token_required, or not the team's owner or admin")
@document(responses=[UNAUTHORIZED, INVALID])
def create_key(body):
    """Make a key that spends from your wallet (or a team's, as its owner or admin) within its budget."""
    user_id = _owner()
    if body["expires_at"] is not None and body["expires_at"] <= utcnow():
        raise ValidationError({"expires_at": ["Must be in the future."]})
    _known_features(body["features"])
    period, seconds = body["budget_period"], body["budget_period_seconds"]
    described, secret = keys.create(user_id, name=body["name"], budget=body["budget"], period=period,
                                    period_seconds=seconds, features=body["features"], expires_at=body["expires_at"],
                                    team_id=body["team"])
    return {**described, "key": secret}, 201


@blp.get("")
@blp.response(200, KeyListSchema)
@document(responses=[UNAUTHORIZED])
def list_keys():
    """Your keys that are not revoked (without the keys themselves)."""
    return {"items": [keys.describe(key) for key in keys.mine(_owner())]}


@blp.get("/<id:key_id>")
@blp.response(200, KeySchema)
@blp.alt_response(404, schema=ErrorSchema, description="unknown_key")
@document(responses=[UNAUTHORIZED])
def get_key(key_id):
    """One key: its budget and what it spent this period."""
    return keys.describe(keys.find(key_id, _owner()))


@blp.patch("/<id:key_id>")
@blp.arguments(KeyChangeSchema)
@blp.response(200, KeySchema)
@blp.alt_response(404, schema=ErrorSchema, description="unknown_key")
@document(responses=[UNAUTHORIZED, INVALID])
def change_key(body, key_id):
    """Rename a key, or change its budget (applies at once) or its features."""
    _known_features(body.get("features"))
    return keys.change(key_id, _owner(), name=body.get("name"), budget=body.get("budget"),
                       features=body.get("features", ...))


@blp.delete("/<id:key_id>")
@blp.response(200, KeySchema)
@blp.alt_response(404, schema=ErrorSchema, description="unknown_key")
@document(responses=[UNAUTHORIZED])
def revoke_key(key_id):
    """Revoke a key: refused from now on (401 key_revoked), by every worker and host."""
    return keys.revoke(key_id, _owner())


def _known_features(names: list[str] | None) -> None:
    unknown = sorted(set(names or ()) - set(features.served()))
    if unknown:
        raise ValidationError({"features": [f"Unknown features {unknown}; see GET /api/credits/costs."]})
