from flask import current_app
from flask_jwt_extended import create_access_token
from flask_smorest import Blueprint

from .. import users
from ..credits.types import Balance
from ..schemas import CredentialsSchema, ErrorSchema, TokenSchema, UserSchema

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Accounts and tokens.")


@blp.post("/register")
@blp.arguments(CredentialsSchema)
@blp.response(201, UserSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Username taken")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input")
def register(credentials):
    """Create an account; it starts with the signup grant."""
    config = current_app.config
    return users.create_user(
        credentials["username"], credentials["password"],
        signup_grant=Balance(config["CREDITS_SIGNUP_GRANT"], config["AI_TOKENS_SIGNUP_GRANT"]),
        hash_method=config["PASSWORD_HASH_METHOD"],
    )


@blp.post("/login")
@blp.arguments(CredentialsSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password")
def login(credentials):
    """Exchange a username and password for a bearer token."""
    user_id = users.authenticate(credentials["username"], credentials["password"])
    expires = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    return {
        "access_token": create_access_token(identity=str(user_id)),
        "token_type": "Bearer",
        "expires_in": int(expires.total_seconds()),
    }
