"""The paid features and their prices. A feature is declared once, with its default price
(`creditapp.api.paid.paid_feature` declares it with its route); CREDIT_COSTS overrides prices.
Each app sells the declared features whose routes it registered (`serve`): the built-in ones
FEATURES chooses, and its own."""
from dataclasses import dataclass

from flask import Flask, current_app

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


def default_costs(names=None) -> dict[str, int]:
    """The declared prices of `names` (by default every feature declared in this process)."""
    return {name: feature.price for name, feature in FEATURES.items() if names is None or name in names}


def serve(app: Flask) -> dict[str, Feature]:
    """Note what `app` sells, once its blueprints are registered: the declared features whose
    routes are in its URL map, and the paid views (`require_credits`' work names) a job of it may
    run. The registry above holds every feature declared in the process, an app's or another's."""
    served = {name for rule in app.url_map.iter_rules() for method in rule.methods or ()
              if (name := feature_of_route(method, rule.rule)) is not None}
    app.extensions["creditapp.features"] = {name: f for name, f in FEATURES.items() if name in served}
    app.extensions["creditapp.work"] = {work for view in app.view_functions.values()
                                        if (work := getattr(view, "creditapp_work", None)) is not None}
    return app.extensions["creditapp.features"]


def served() -> dict[str, Feature]:
    """The features the current app sells."""
    return current_app.extensions["creditapp.features"]


def serves_work(work: str) -> bool:
    """Whether a paid view of the current app is `work` (a job's), so that a worker runs only those."""
    return work in current_app.extensions["creditapp.work"]


def check_costs(overrides: dict, app: Flask) -> dict[str, int]:
    """The price table of the features `app` serves (noted first, with serve: call it once its
    blueprints are registered): their declared prices with CREDIT_COSTS over them. Refuses to start
    with a price for a feature it does not serve (a typo, or a feature switched off: either way the
    price would do nothing) or a bad price."""
    features = serve(app)
    unknown = sorted(set(overrides) - set(features))
    if unknown:
        raise RuntimeError(f"CREDIT_COSTS: features this app does not serve {unknown} (served: {sorted(features)})")
    for name, cost in overrides.items():
        _check_price(f"CREDIT_COSTS[{name!r}]", cost)
    return {**default_costs(features), **overrides}


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
    """The current app's features and their prices now."""
    return [
        {"feature": f.name, "credit_type": f.credit_type.value, "cost": cost_of(f.name),
         "unit": f.unit, "endpoint": f.endpoint}
        for f in served().values()
    ]


def feature_of_route(method: str, rule: str) -> str | None:
    """The declared feature a route sells, by its "METHOD /rule"."""
    return _BY_ENDPOINT.get(f"{method} {rule}")
