"""Who a request spends as: the user's own wallet, an API key's (its user's or its team's, within
the key's budget), or a team's with `X-Team: <id>` (within the member's cap); and what a refused
cap means to the client."""
from contextlib import contextmanager

from flask import request
from marshmallow import ValidationError

from ..access import teams
from ..access.errors import BudgetExceeded, FeatureOutsideKey, KeyExpired, KeyRevoked, NotAllowed
from ..auth import current_key, current_user_id
from ..ledger import Spender, team_wallet
from ..ledger.errors import CapClosed, CapExceeded, CapExpired, CapRefused, FeatureNotAllowed

MAX_TEAM_ID = 2**31 - 1


def spender() -> Spender:
    key = current_key()
    if key is not None and "X-Team" in request.headers:
        # A key spends from its own wallet; a client that meant the team's must not be billed
        # silently elsewhere.
        raise ValidationError({"X-Team": ["An API key spends from its own wallet: send X-Team with a login token."]})
    if key is not None:
        # A team key is used by nobody in particular: only its own budget applies.
        return Spender(wallet_id=key.wallet_id, user_id=None if key.team_id else key.user_id,
                       client_id=key.user_id, key_id=key.id, caps=(key.cap_id,))
    user_id = current_user_id()
    team_id = team_header()
    if team_id is None:
        return Spender.of_user(user_id)
    member = teams.must_be_in(team_id, user_id)
    return Spender(wallet_id=team_wallet(team_id), user_id=user_id, client_id=user_id, caps=(member.cap_id,))


def team_header() -> int | None:
    raw = request.headers.get("X-Team")
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit() and raw[0] != "0" and int(raw) <= MAX_TEAM_ID):
        raise ValidationError({"X-Team": ["Must be a team id."]})
    return int(raw)


def current_wallet_id() -> int:
    """The wallet a read shows: an API key's, else the caller's own."""
    key = current_key()
    return key.wallet_id if key is not None else current_user_id()


@contextmanager
def caps_explained(spent_by: Spender):
    """A refused cap as the client knows it: its key's budget, or its member's cap."""
    try:
        yield
    except CapRefused as exc:
        whose = "key" if spent_by.key_id is not None else "member"
        if isinstance(exc, CapExceeded):
            raise BudgetExceeded(whose, exc.limit, exc.spent, exc.required, exc.credit_type) from None
        if isinstance(exc, FeatureNotAllowed):
            raise FeatureOutsideKey(str(exc)) from None
        if isinstance(exc, CapExpired):
            raise KeyExpired("this API key has expired") from None
        if isinstance(exc, CapClosed) and whose == "key":
            raise KeyRevoked("this API key was revoked") from None
        raise NotAllowed("no longer a member of this team") from None
