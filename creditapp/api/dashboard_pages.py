"""The administrators' dashboard at /admin/: server-rendered HTML, no script.

Logging in sets the JWT cookies (access token HttpOnly, its CSRF token readable) whatever
JWT_TOKEN_LOCATION says for the API: the page reuses the app's sessions, so logging out revokes
the session everywhere, a demotion takes effect at the next page (rights are read from the
database on every request) and there is no second secret. Every form that changes something
carries the double-submit CSRF token as a field, which flask-jwt-extended checks against the
token's claim (JWT_CSRF_CHECK_FORM). A browser without a valid cookie is sent to the login form,
a non-administrator gets a 403 page; a JSON client gets the usual error envelope instead.
"""
import hmac
import secrets
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlencode

from flask import Blueprint, current_app, make_response, redirect, render_template, request
from flask_jwt_extended import create_access_token, get_jwt, set_access_cookies, unset_jwt_cookies, verify_jwt_in_request
from flask_jwt_extended.exceptions import CSRFError, JWTExtendedException
from jwt import PyJWTError
from werkzeug.exceptions import NotFound

from .. import users
from ..auth import token_user_id
from ..dashboard import figures, verify_runs
from ..dashboard.chart import charts_by_credit_type
from ..exceptions import InvalidCredentials, InvalidIdentity, NotAdmin
from ..extensions import limiter
from ..ledger import UnknownUser
from ..ledger.errors import AccountDisabled
from ..ledger.clock import utcnow
from ..revocation import revoke_session

pages = Blueprint("dashboard", __name__, url_prefix="/admin")
COOKIES = ["cookies"]
PUBLIC = {"dashboard.login_form", "dashboard.login"}
# Logging out needs a valid session (and its CSRF token), not rights: a demoted user can end theirs.
ANY_USER = {"dashboard.logout"}
_ADMIN = "creditapp.dashboard_admin"
LOGIN_CSRF = "dashboard_login_csrf"
login_limit = limiter.limit(lambda: current_app.config["AUTH_RATE_LIMIT"])
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
}


def _wants_json() -> bool:
    """A client that asks for JSON over HTML (a browser asks for HTML; `*/*` gets HTML too)."""
    accepted = request.accept_mimetypes
    return request.is_json or accepted["application/json"] > accepted["text/html"]


def _page(template: str, status: int = 200, **context):
    return render_template(f"dashboard/{template}", **context), status, HEADERS


@pages.before_request
def guard():
    """Every page but the login form needs an administrator's session cookie."""
    if request.endpoint in PUBLIC:
        return None
    try:
        verify_jwt_in_request(locations=COOKIES)
        user_id = token_user_id()
        if request.endpoint not in ANY_USER:
            users.require_admin(user_id)
    except CSRFError:
        if _wants_json():
            raise
        # A valid session, but the form did not come from one of its pages: change nothing.
        return _page("refused.html", 403, stale=True)
    except (JWTExtendedException, PyJWTError, InvalidIdentity, UnknownUser):
        if _wants_json():
            raise  # the app's handlers answer with the envelope (401)
        back = request.full_path.rstrip("?") if request.method == "GET" else "/admin/"
        return redirect(f"/admin/login?{urlencode({'next': back})}", code=303)
    except NotAdmin:
        if _wants_json():
            raise
        return _page("refused.html", 403, csrf=get_jwt().get("csrf"))
    except AccountDisabled:  # raised while the token is checked: there is no session to log out of
        if _wants_json():
            raise
        return _page("refused.html", 403, disabled=True)
    request.environ[_ADMIN] = user_id
    return None


@pages.context_processor
def formatting():
    return {"credits": _credits, "money": _money, "when": _when, "age": _age, "percent": _percent}


def _credits(amount) -> str:
    return f"{int(amount or 0):,}"


def _money(amounts: dict[str, int]) -> str:
    if not amounts:
        return "0"
    return ", ".join(f"{minor / 100:,.2f} {currency.upper()}" for currency, minor in sorted(amounts.items()))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "never"


def _age(age: timedelta | None) -> str:
    if age is None:
        return "none"
    minutes = int(age.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440} days"


def _percent(rate: float | None) -> str:
    return "–" if rate is None else f"{rate * 100:.1f} %"


def _safe_next(target: str | None) -> str:
    # Only a page of the dashboard: never another site (//evil, /\evil, https://...), and nothing
    # a Location header cannot carry (CR, LF, other control characters).
    if (target and target.startswith("/admin/") and "//" not in target and "\\" not in target
            and target.isprintable() and target.isascii()):
        return target
    return "/admin/"


@pages.get("/login")
def login_form():
    return _login_page(200, _safe_next(request.args.get("next")))


def _login_page(status: int, target: str, problem: str | None = None):
    """The form, with a fresh double-submit token for the login itself: another site cannot log a
    browser into an account of its choosing (login CSRF), since it can neither read nor set the
    cookie the field must match."""
    token = secrets.token_urlsafe(24)
    body, status, headers = _page("login.html", status, next=target, problem=problem, login_csrf=token)
    response = make_response(body, status, headers)
    response.set_cookie(LOGIN_CSRF, token, max_age=3600, path="/admin/login", httponly=True, samesite="Strict",
                        secure=current_app.config["JWT_COOKIE_SECURE"])
    return response


@pages.post("/login")
@login_limit
def login():
    """Check the password and the rights, then set the session cookies."""
    target = _safe_next(request.form.get("next"))
    sent, kept = request.form.get("login_csrf", ""), request.cookies.get(LOGIN_CSRF, "")
    if not sent or not hmac.compare_digest(sent.encode(), kept.encode()):
        return _login_page(403, target, "The form had expired. Log in again.")
    try:
        user_id = users.authenticate(request.form.get("username", ""), request.form.get("password", ""))
        users.require_admin(user_id)
    except InvalidCredentials:
        return _login_page(401, target, "Wrong username or password.")
    except NotAdmin:
        return _login_page(403, target, "This account is not an administrator.")
    except AccountDisabled:
        return _login_page(403, target, "This account is disabled.")
    token = create_access_token(identity=str(user_id), additional_claims={"sid": uuid.uuid4().hex})
    response = redirect(target, code=303)
    set_access_cookies(response, token)
    response.delete_cookie(LOGIN_CSRF, path="/admin/login")
    return response


@pages.post("/logout")
def logout():
    """End the session everywhere (its tokens are refused from now on) and drop the cookies."""
    sid = get_jwt().get("sid")
    if sid:
        revoke_session(current_app, sid, token_user_id())
    response = redirect("/admin/login", code=303)
    unset_jwt_cookies(response)
    return response


@pages.get("/")
def index():
    now = utcnow()
    charges = figures.charges_by_feature(now)
    return _page(
        "index.html", now=now, csrf=get_jwt()["csrf"], tiles=figures.tiles(now), charges=charges,
        charts=charts_by_credit_type(charges.days, charges.series), spenders=figures.top_spenders(now),
        health=figures.health(now), actions=figures.admin_actions(), admin=request.environ[_ADMIN])


@pages.post("/verify")
def run_verify():
    """Run `credits verify` now and store its result; back to the page, which shows it."""
    verify_runs.run("dashboard", actor_user_id=request.environ[_ADMIN])
    return redirect("/admin/#health", code=303)


@pages.get("/users/<id:user_id>")
def user(user_id):
    try:
        page = figures.user_page(user_id)
    except UnknownUser as exc:
        if _wants_json():
            raise NotFound(str(exc)) from None  # the envelope, as for every other refusal
        return _page("refused.html", 404, csrf=get_jwt()["csrf"], missing=user_id)
    return _page("user.html", csrf=get_jwt()["csrf"], page=page, now=utcnow())
