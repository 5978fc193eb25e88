"""Who is calling: the verified JWT identity as a user id."""
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from hmac import compare_digest

from flask import Flask, current_app, request
from flask_jwt_extended import JWTManager, get_jwt, get_jwt_identity, get_jwt_request_location, verify_jwt_in_request
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.exceptions import CSRFError

from . import revocation
from .access import keys
from .access.errors import InvalidKey, LoginTokenRequired
from .exceptions import InvalidIdentity
from .ledger import credit_service
from .ledger.errors import AccountDisabled, UnknownUser
from .ledger.tables import MAX_USER_ID

# What login puts in a token: the user id in canonical ASCII decimal, and a session id of 32 hex
# digits. Anything else (" 2 ", "0002", "٢", a number) is refused before it reaches a query.
_USER_ID = re.compile(r"[1-9][0-9]{0,9}")
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


def init_app(app: Flask, jwt: JWTManager) -> None:
    @jwt.token_in_blocklist_loader
    def session_revoked(_header, payload) -> bool:
        # flask-jwt-extended asks this first, for every token: the claims are checked here so
        # that a malformed session id never reaches the revocation lookup.
        sid = canonical_session(payload)
        if sid is not None and payload.get("type") == "access" and _ledger_checks_session():
            request.environ[_SESSION_TO_CHECK] = sid  # that call refuses a disabled account too
            return False
        # current_app, not `app`: the one JWTManager serves every app of the process, and this
        # loader is the last app's; each app's logouts are in its own blocklist.
        refusal = revocation.refusal(current_app, sid, _canonical_user_id(payload.get("sub")))
        if refusal == "disabled":
            raise AccountDisabled("this account is disabled")
        return refusal == "revoked"


_SESSION_TO_CHECK = "creditapp.session_to_check"


def session_checked_by_ledger(view: Callable) -> Callable:
    """Mark a view whose first database call is a ledger call that takes `session_to_check()`
    (the balance read, a paid route's hold): on PostgreSQL that call refuses a revoked session
    or a disabled account itself (SessionRevoked, AccountDisabled), which saves a round trip.

    Whatever the view does before that call must stay harmless for a logged-out token, which
    has not been refused yet: anything that fails (a 422 of its body, say) is answered only
    after the check, made then (`unchecked_session_refusal`), so a logged-out token still gets
    its 401 first. Apply it first (innermost): decorators built with functools.wraps carry the
    mark outwards, and a view that loses it is checked the ordinary way."""
    view.creditapp_checks_session = True
    return view


def session_to_check() -> str | None:
    """The session id the ledger call about to be made must check for this request (None when
    it was checked already); the check is that call's from now on."""
    return request.environ.pop(_SESSION_TO_CHECK, None)


def unchecked_session_refusal() -> str | None:
    """For a request that ends without the ledger call its session check was left to: the
    check, made now ("revoked", "disabled" or None)."""
    sid = request.environ.pop(_SESSION_TO_CHECK, None)
    if sid is None:
        return None
    return revocation.refusal(current_app, sid, token_user_id())


def _ledger_checks_session() -> bool:
    view = current_app.view_functions.get(request.endpoint)
    return (
        getattr(view, "creditapp_checks_session", False)
        and revocation.kept_in_database(current_app)
        and credit_service.checks_sessions
    )


def canonical_session(payload: dict) -> str | None:
    """The token's session id, after checking that its claims are the ones login makes."""
    _canonical_user_id(payload.get("sub"))
    sid = payload.get("sid")
    if sid is not None and not (isinstance(sid, str) and _SESSION_ID.fullmatch(sid)):
        raise InvalidIdentity("the token's session id is malformed")
    return sid


def _canonical_user_id(identity) -> int:
    if not (isinstance(identity, str) and _USER_ID.fullmatch(identity)) or int(identity) > MAX_USER_ID:
        raise InvalidIdentity("the token does not name a user")
    return int(identity)


def require_login(public_endpoints: Collection[str] = ()) -> Callable[[], None]:
    """A blueprint's before_request guard, so that a request is authenticated before its body
    is validated (401 before 422) and no route of the blueprint can forget to check."""

    def guard() -> None:
        if request.endpoint not in public_endpoints:
            verify_access_token()

    return guard


_VERIFIED = "creditapp.access_token_verified"


def verify_access_token() -> None:
    """Verify the request's access token or API key, once: the rate limiter, the blueprint guard
    and require_credits all need it, and decoding (and the revocation check) is not free.

    The mark lives in the request's WSGI environ, not in `g`: `g` belongs to the app context,
    which can outlive one request (a test's pushed context), and a stale mark would let a
    forged token through."""
    if request.environ.get(_VERIFIED):
        return
    secret = presented_key()
    if secret is not None:
        # Looked up on every request (one index probe): a revoked key, or one of a disabled
        # account (a team key too: it acts as its maker), is refused at once, everywhere.
        key = keys.authenticate(secret)
        if key.disabled:
            raise AccountDisabled("the account of this API key is disabled")
        request.environ[_API_KEY] = key
    else:
        verify_jwt_in_request()
    request.environ[_VERIFIED] = True


_API_KEY = "creditapp.api_key"


def verified_key():
    """The API key this request was verified with, if it was (None before or without one): for
    the request log, which must not verify anything itself."""
    return request.environ.get(_API_KEY)


def presented_key() -> str | None:
    """An API key sent as `X-API-Key`, or as the bearer token (`Bearer ck_...`); None for a JWT."""
    header = request.headers.get("X-API-Key")
    if header is not None:
        if not keys.looks_like_key(header.strip()):
            raise InvalidKey("X-API-Key is not an API key")
        return header.strip()
    authorization = request.headers.get("Authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and keys.looks_like_key(token.strip()):
        return token.strip()
    return None


def current_key():
    """The API key this request came with, or None for a login token."""
    verify_access_token()
    return request.environ.get(_API_KEY)


def require_login_token() -> None:
    """Managing keys and teams takes a login token: a leaked key cannot make more keys."""
    if current_key() is not None:
        raise LoginTokenRequired("this needs a login token, not an API key")


def current_user_id() -> int:
    key = current_key()
    return key.user_id if key is not None else token_user_id()


def require_csrf() -> None:
    """The double-submit check for a route that changes state, whatever its method.

    flask-jwt-extended checks the CSRF token only for POST, PUT, PATCH and DELETE, and a
    SameSite=Lax cookie rides along on a cross-site link or `<form method="get">`: a paid GET
    feature would be spent once per navigation by any page the user visits. A token from the
    Authorization header needs nothing more (a hostile page cannot set it)."""
    if current_key() is not None:
        return  # a key comes in a header, never in a cookie
    if (get_jwt_request_location() != "cookies" or not jwt_config.cookie_csrf_protect
            or request.method in jwt_config.csrf_request_methods):
        return  # not a cookie, or flask-jwt-extended checked it already
    sent = request.headers.get(jwt_config.access_csrf_header_name)
    if not sent and jwt_config.csrf_check_form:
        sent = request.form.get(jwt_config.access_csrf_field_name)
    if not sent:
        raise CSRFError("Missing CSRF token")
    if not compare_digest(str(get_jwt().get("csrf", "")), sent):
        raise CSRFError("CSRF double submit tokens do not match")


def token_user_id() -> int:
    """The user id of the token verified in this request (access or refresh)."""
    return _canonical_user_id(get_jwt_identity())


@contextmanager
def caller_must_exist() -> Iterator[None]:
    """A valid token whose user is gone is a 401 (not a 404 that would confirm the id is free)."""
    try:
        yield
    except UnknownUser:
        raise InvalidIdentity("the token's user no longer exists") from None
