"""A paid feature in one declaration: `paid_feature` and the answer builder `charge_and_answer`.

    @paid_feature(blp, "/generate/sketch", name="sketch", credit_type=CreditType.GENERATION_CREDITS,
                  price=1, request=SketchSchema, response=GenerationResponseSchema)
    def sketch(params):
        \"\"\"Draw a pencil sketch of a prompt.\"\"\"
        return charge_and_answer(ai_service.generate_image(params, feature="sketch"))

It declares the feature and its default price (the price list and CREDIT_COSTS know it), and
applies in the one right order: the route; the token check (401 before 422); the request schema
(422 before anything is held); the response schema; `require_credits` (the per-user paid limit,
the Idempotency-Key, the hold, `Prefer: respond-async`, the documented error answers). The view
runs with `g.credit_info` and returns `charge_and_answer(...)`.
"""
import functools
from collections.abc import Callable

from flask import g
from flask_smorest import Blueprint

from ..auth import verify_access_token
from ..features import Feature, cost_of, declare
from ..ledger import CreditType, credit_service
from .guard import require_credits

# (the request's parsed body, the price now) -> the credits to hold
HoldFor = Callable[[dict, int], int]


def paid_feature(blp: Blueprint, path: str, *, name: str, credit_type, price: int, request, response,
                 unit: str = "request", hold: HoldFor | None = None, method: str = "POST",
                 location: str | None = None, doc: dict | None = None) -> Callable:
    """Declare the paid feature `name` served at `path` on `blp` (see the module's docstring).

    `price` is the default price per `unit` ("request", or "token" for a feature that charges
    what it used); CREDIT_COSTS[name] overrides it. The hold is the price, or `hold(params,
    price)` for a feature whose charge is known only after the AI call (hold the worst case,
    then charge what was used with `charge_and_answer(result, amount)`). `request` is read from
    the JSON body, or from the query string for GET and DELETE (`location` says otherwise). `doc`
    is merged into the route's OpenAPI entry (another content type of an answer, say)."""
    credit_type = CreditType(credit_type)
    method = method.upper()
    location = location or ("query" if method in ("GET", "DELETE") else "json")
    feature = Feature(name, credit_type, price, unit, f"{method} {blp.url_prefix or ''}{path}")

    def amount(params=None, *args, **kwargs) -> int:
        price_now = cost_of(name)
        return hold(params, price_now) if hold is not None else price_now

    def decorator(view: Callable) -> Callable:
        declare(feature, f"{view.__module__}:{view.__qualname__}")
        guarded = require_credits(amount, credit_type)(view)
        guarded = blp.response(200, response)(guarded)
        guarded = blp.arguments(request, location=location)(guarded)
        guarded = blp.doc(**doc)(guarded) if doc else guarded
        return blp.route(path, methods=[method])(_authenticated_first(guarded))

    return decorator


def charge_and_answer(result: dict, amount: int | None = None, **extra) -> dict:
    """A paid view's answer: charge `amount` (by default what the guard held) to the request's
    hold, and return {"result", "charged", "balance", **extra}. The charge is committed with the
    answer when the request ends (or the job succeeds), and only then."""
    info = g.credit_info
    amount = info.required if amount is None else amount
    balance = credit_service.deduct_credits(info.wallet_id, amount, info.credit_type)
    return {
        "result": result,
        "charged": {"credit_type": info.credit_type.value, "amount": amount},
        "balance": balance.as_dict(),
        **extra,
    }


def _authenticated_first(view: Callable) -> Callable:
    """401 before the body is validated, whatever guards the blueprint has (or not)."""

    @functools.wraps(view)
    def authenticated(*args, **kwargs):
        verify_access_token()
        return view(*args, **kwargs)

    return authenticated
