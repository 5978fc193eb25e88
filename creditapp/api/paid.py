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
from . import bodies
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
    feature = _feature(blp.url_prefix, path, name, credit_type, price, unit, method)

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


class PaidFeatures:
    """Paid features declared once and served per app: `blueprint(names)` makes a new blueprint
    with the chosen ones. flask-smorest's `Api` is one object for every app in a process, so a
    blueprint registered with some routes for one app would bring them to the next one too.

    `@features.paid_feature(path, name=..., ...)` takes `paid_feature`'s arguments but the
    blueprint; the feature is in the price list from then on, its route only in the apps that
    serve it."""

    def __init__(self, name: str, import_name: str, **blueprint_options):
        self.name, self.import_name, self.blueprint_options = name, import_name, blueprint_options
        self._declared: dict[str, tuple[str, dict, Callable]] = {}  # feature name -> path, options, view

    @property
    def names(self) -> list[str]:
        return list(self._declared)

    def paid_feature(self, path: str, *, name: str, **options) -> Callable:
        def decorator(view: Callable) -> Callable:
            feature = _feature(self.blueprint_options.get("url_prefix"), path, name, CreditType(options["credit_type"]),
                               options["price"], options.get("unit", "request"), options.get("method", "POST"))
            declare(feature, f"{view.__module__}:{view.__qualname__}")
            self._declared[name] = (path, options, view)
            return view

        return decorator

    def blueprint(self, names) -> Blueprint:
        """A new blueprint serving the features `names`, in their declared order."""
        unknown = [name for name in names if name not in self._declared]
        if unknown:
            raise ValueError(f"unknown feature {unknown[0]!r} (declared: {', '.join(self._declared)})")
        blp = bodies.Blueprint(self.name, self.import_name, **self.blueprint_options)
        for name, (path, options, view) in self._declared.items():
            if name in names:
                paid_feature(blp, path, name=name, **options)(view)
        return blp


def _feature(url_prefix: str | None, path: str, name: str, credit_type: CreditType, price: int, unit: str,
             method: str) -> Feature:
    return Feature(name, credit_type, price, unit, f"{method.upper()} {url_prefix or ''}{path}")


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
