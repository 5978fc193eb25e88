import uuid

from flask import current_app, jsonify, request
from flask_jwt_extended import (
    create_access_token, create_refresh_token, get_jwt, get_jwt_identity, set_access_cookies,
    set_refresh_cookies, unset_jwt_cookies, verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import CSRFError
from jwt import ExpiredSignatureError

from .. import users
from ..auth import caller_must_exist, token_user_id
from ..extensions import limiter
from ..ledger import Balance
from ..revocation import revoke_session
from .bodies import Blueprint
from .schemas import CredentialsSchema, ErrorSchema, LoggedOutSchema, TokenSchema, UserSchema

blp = Blueprint("auth", __name__, url_prefix="/api/auth", description="Accounts and tokens.")
BEARER = [{"bearerAuth": []}]
# Per client IP: guessing passwords and mass sign-ups are what this slows down.
auth_limit = limiter.limit(lambda: current_app.config["AUTH_RATE_LIMIT"])


@blp.post("/register")
@auth_limit
@blp.arguments(CredentialsSchema)
@blp.response(201, UserSchema)
@blp.alt_response(409, schema=ErrorSchema, description="Username taken")
@blp.alt_response(422, schema=ErrorSchema, description="Invalid input")
@blp.alt_response(429, schema=ErrorSchema, description="Too many attempts from this address")
def register(credentials):
    """Create an account; it starts with the signup grant."""
    config = current_app.config
    return users.create_user(
        credentials["username"], credentials["password"],
        signup_grant=Balance(config["CREDITS_SIGNUP_GRANT"], config["AI_TOKENS_SIGNUP_GRANT"]),
        hash_method=config["PASSWORD_HASH_METHOD"], signup_expires_in_days=config["SIGNUP_GRANT_EXPIRES_DAYS"],
    )


@blp.post("/login")
@auth_limit
@blp.arguments(CredentialsSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Wrong username or password")
@blp.alt_response(429, schema=ErrorSchema, description="Too many attempts from this address")
def login(credentials):
    """Start a session: an access token, and a refresh token to renew it."""
    user_id = str(users.authenticate(credentials["username"], credentials["password"]))
    claims = {"sid": uuid.uuid4().hex}
    access = create_access_token(identity=user_id, additional_claims=claims)
    refresh = create_refresh_token(identity=user_id, additional_claims=claims)
    return _tokens(access, refresh)


@blp.post("/refresh")
@blp.response(200, TokenSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing, expired, revoked or non-refresh token")
@blp.doc(security=BEARER, description="Send the refresh token as the bearer token.")
def refresh():
    """A new access token for the session of a refresh token."""
    verify_jwt_in_request(refresh=True)
    with caller_must_exist():  # no access token for a user that is gone
        users.require_user(token_user_id())
    access = create_access_token(identity=get_jwt_identity(), additional_claims={"sid": get_jwt().get("sid")})
    return _tokens(access, None)


@blp.post("/logout")
@blp.response(200, LoggedOutSchema)
@blp.alt_response(401, schema=ErrorSchema, description="Missing, expired or revoked token")
@blp.doc(security=BEARER)
def logout():
    """End the session: its access and refresh tokens are refused from now on, everywhere."""
    # Either token will do. In cookie mode they sit in two cookies: the access cookie is read
    # first, and without it (or when it has expired, as a session cookie outliving its token
    # does, or when the CSRF token sent is the refresh cookie's) the refresh cookie, which then
    # needs its own CSRF token.
    try:
        found = verify_jwt_in_request(optional=True, verify_type=False)
    except (ExpiredSignatureError, CSRFError):
        if not _refresh_cookie_sent():
            raise
        found = None
    if found is None:
        verify_jwt_in_request(refresh=True)
    user_id = token_user_id()
    with caller_must_exist():  # a deleted user's token is a 401 here too, as everywhere
        users.require_user(user_id)
    sid = get_jwt().get("sid")
    if sid:
        revoke_session(current_app, sid, user_id)
    response = jsonify(status="logged_out")
    if "cookies" in current_app.config["JWT_TOKEN_LOCATION"]:
        unset_jwt_cookies(response)
    return response


def _refresh_cookie_sent() -> bool:
    config = current_app.config
    return "cookies" in config["JWT_TOKEN_LOCATION"] and config["JWT_REFRESH_COOKIE_NAME"] in request.cookies


def _tokens(access: str, refresh: str | None):
    config = current_app.config
    body = {
        "access_token": access, "token_type": "Bearer",
        "expires_in": int(config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds()),
    }
    if refresh:
        body.update(refresh_token=refresh,
                    refresh_expires_in=int(config["JWT_REFRESH_TOKEN_EXPIRES"].total_seconds()))
    if "cookies" not in config["JWT_TOKEN_LOCATION"]:
        return body
    # Browser clients: the tokens travel as HttpOnly cookies, with CSRF double-submit cookies.
    response = jsonify(body)
    set_access_cookies(response, access)
    if refresh:
        set_refresh_cookies(response, refresh)
    return response
