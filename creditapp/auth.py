"""Who is calling: the verified JWT identity as a user id."""
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from flask import request
from flask_jwt_extended import get_jwt_identity, verify_jwt_in_request

from .exceptions import InvalidIdentity, UnknownUser
from .models import MAX_USER_ID


def require_login(public_endpoints: Collection[str] = ()) -> Callable[[], None]:
    """A blueprint's before_request guard, so that a request is authenticated before its body
    is validated (401 before 422) and no route of the blueprint can forget to check."""

    def guard() -> None:
        if request.endpoint not in public_endpoints:
            verify_access_token()

    return guard


_VERIFIED = "creditapp.access_token_verified"


def verify_access_token() -> None:
    """Verify the request's access token, once: the rate limiter, the blueprint guard and
    require_credits all need it, and decoding (and the revocation check) is not free.

    The mark lives in the request's WSGI environ, not in `g`: `g` belongs to the app context,
    which can outlive one request (a test's pushed context), and a stale mark would let a
    forged token through."""
    if not request.environ.get(_VERIFIED):
        verify_jwt_in_request()
        request.environ[_VERIFIED] = True


def current_user_id() -> int:
    verify_access_token()
    return token_user_id()


def token_user_id() -> int:
    """The user id of the token verified in this request (access or refresh)."""
    identity = get_jwt_identity()
    try:
        user_id = int(identity)
    except (TypeError, ValueError):
        user_id = 0
    if not 1 <= user_id <= MAX_USER_ID:
        raise InvalidIdentity("the token does not name a user")
    return user_id


@contextmanager
def caller_must_exist() -> Iterator[None]:
    """A valid token whose user is gone is a 401 (not a 404 that would confirm the id is free)."""
    try:
        yield
    except UnknownUser:
        raise InvalidIdentity("the token's user no longer exists") from None


def rate_limit_key() -> str:
    """Paid routes are limited per user (not per IP: many users share a NAT); the token is
    verified here because the limiter runs before the blueprint's own guard."""
    verify_access_token()
    return f"user:{get_jwt_identity()}"
