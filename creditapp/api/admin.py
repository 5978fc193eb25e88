from flask_smorest import Blueprint

from .. import users
from ..auth import current_user_id, require_login
from ..credits import credit_service
from ..schemas import ErrorSchema, GrantResultSchema, GrantSchema

blp = Blueprint("admin", __name__, url_prefix="/api/admin", description="Administration.")
blp.before_request(require_login())


@blp.post("/users/<int:user_id>/credits")
@blp.arguments(GrantSchema)
@blp.response(201, GrantResultSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid token")
@blp.alt_response(403, schema=ErrorSchema, description="Not an administrator")
@blp.alt_response(404, schema=ErrorSchema, description="Unknown user")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input")
@blp.doc(security=[{"bearerAuth": []}])
def grant_credits(grant, user_id):
    """Add credits to a user's balance (administrators only)."""
    users.require_admin(current_user_id())
    balance = credit_service.add_credits(
        user_id, grant["amount"], grant["credit_type"], reason=grant["reason"] or "admin grant"
    )
    return {"user_id": user_id, **balance.as_dict()}
