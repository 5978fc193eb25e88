"""The paid features and their prices. A feature is declared once, with its default price
(`creditapp.api.paid.paid_feature` declares it with its route); CREDIT_COSTS overrides prices."""
from dataclasses import dataclass

from flask import current_app

from .ledger.types import CreditType

# Bounded so that the largest estimate (8000-character prompt + 4096 tokens, times the price)
# stays far below the amount limit: a price can never turn a request into a 500.
MAX_PRICE = 10**6
UNITS = ("request", "token")


@dataclass(frozen=True)
class Feature:
    name: str
    credit_type: CreditType
    price: int  # the default; CREDIT_COSTS[name] overrides it
    unit: str  # what one price buys: one request, or one token used
    endpoint: str  # "POST /api/generate"


FEATURES: dict[str, Feature] = {}
_BY_ENDPOINT: dict[str, str] = {}
_VIEWS: dict[str, str] = {}  # feature name -> the view that sells it


def declare(feature: Feature, view: str) -> Feature:
    """Add a feature, sold by `view` ("module:name"), to the price list; its name and its route
    are its own. The same view declaring it again (a module imported anew) changes nothing."""
    if feature.name in FEATURES and (FEATURES[feature.name], _VIEWS[feature.name]) != (feature, view):
        raise ValueError(f"feature {feature.name!r} is declared twice (by {_VIEWS[feature.name]} and {view})")
    taken = _BY_ENDPOINT.get(feature.endpoint)
    if taken is not None and taken != feature.name:
        raise ValueError(f"{feature.endpoint} already sells feature {taken!r}; {feature.name!r} needs a route of its own")
    if feature.unit not in UNITS:
        raise ValueError(f"feature {feature.name!r}: unit must be one of {UNITS}, got {feature.unit!r}")
    _check_price(f"feature {feature.name!r}", feature.price)
    FEATURES[feature.name] = feature
    _BY_ENDPOINT[feature.endpoint] = feature.name
    _VIEWS[feature.name] = view
    return feature


def default_costs() -> dict[str, int]:
    return {name: feature.price for name, feature in FEATURES.items()}


def check_costs(overrides: dict) -> dict[str, int]:
    """The price table: the declared prices with CREDIT_COSTS over them. Refuses to start with a
    price for an unknown feature or a bad price."""
    unknown = sorted(set(overrides) - set(FEATURES))
    if unknown:
        raise RuntimeError(f"CREDIT_COSTS: unknown features {unknown} (known: {sorted(FEATURES)})")
    for name, cost in overrides.items():
        _check_price(f"CREDIT_COSTS[{name!r}]", cost)
    return {**default_costs(), **overrides}


def _check_price(what: str, cost) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 < cost <= MAX_PRICE:
        raise RuntimeError(f"{what} must be an integer from 1 to {MAX_PRICE}, got {cost!r}")


def check_signup_grants(config) -> None:
    days = config["SIGNUP_GRANT_EXPIRES_DAYS"]
    if days is not None and not 1 <= days <= 36600:
        raise RuntimeError(f"SIGNUP_GRANT_EXPIRES_DAYS must be from 1 to 36600 (or unset), got {days}")
    for name in ("CREDITS_SIGNUP_GRANT", "AI_TOKENS_SIGNUP_GRANT"):
        if config[name] < 0:
            raise RuntimeError(f"{name} must not be negative, got {config[name]}")


def cost_of(name: str) -> int:
    """The feature's price now: CREDIT_COSTS, else its declared price (a feature declared after
    the app was made is not in the app's table)."""
    costs = current_app.config["CREDIT_COSTS"]
    return costs[name] if name in costs else FEATURES[name].price


def price_list() -> list[dict]:
    return [
        {"feature": f.name, "credit_type": f.credit_type.value, "cost": cost_of(f.name),
         "unit": f.unit, "endpoint": f.endpoint}
        for f in FEATURES.values()
    ]


def feature_of_route(method: str, rule: str) -> str | None:
    """The declared feature a route sells, by its "METHOD /rule"."""
    return _BY_ENDPOINT.get(f"{method} {rule}")
