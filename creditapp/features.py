"""The paid features and their prices. Prices come from config (CREDIT_COSTS)."""
from collections.abc import Callable
from dataclasses import dataclass

from flask import current_app

from .ledger.types import CreditType

# Bounded so that the largest estimate (8000-character prompt + 4096 tokens, times the price)
# stays far below the amount limit: a price can never turn a request into a 500.
MAX_PRICE = 10**6


@dataclass(frozen=True)
class Feature:
    name: str
    credit_type: CreditType
    endpoint: str
    unit: str  # what one `cost` buys: one request, or one token used


FEATURES = {
    feature.name: feature
    for feature in (
        Feature("basic_generation", CreditType.GENERATION_CREDITS, "POST /api/generate", "request"),
        Feature("professional_photo", CreditType.GENERATION_CREDITS,
                "POST /api/generate/professional-photo", "request"),
        Feature("change_hairstyle", CreditType.GENERATION_CREDITS, "POST /api/generate/hairstyle",
                "request"),
        Feature("upscale", CreditType.GENERATION_CREDITS, "POST /api/generate/upscale", "request"),
        Feature("ai_complete", CreditType.AI_TOKENS, "POST /api/ai/complete", "token"),
    )
}


def check_costs(costs: dict) -> None:
    """Refuse to start with a price table that is missing a feature or has a bad price."""
    missing = sorted(set(FEATURES) - set(costs))
    unknown = sorted(set(costs) - set(FEATURES))
    if missing or unknown:
        raise RuntimeError(f"CREDIT_COSTS: missing {missing}, unknown {unknown}")
    for name, cost in costs.items():
        if isinstance(cost, bool) or not isinstance(cost, int) or not 0 < cost <= MAX_PRICE:
            raise RuntimeError(f"CREDIT_COSTS[{name!r}] must be an integer from 1 to {MAX_PRICE}, got {cost!r}")


def check_signup_grants(config) -> None:
    days = config["SIGNUP_GRANT_EXPIRES_DAYS"]
    if days is not None and not 1 <= days <= 36600:
        raise RuntimeError(f"SIGNUP_GRANT_EXPIRES_DAYS must be from 1 to 36600 (or unset), got {days}")
    for name in ("CREDITS_SIGNUP_GRANT", "AI_TOKENS_SIGNUP_GRANT"):
        if config[name] < 0:
            raise RuntimeError(f"{name} must not be negative, got {config[name]}")


def cost_of(name: str) -> int:
    return current_app.config["CREDIT_COSTS"][name]


def price(name: str) -> Callable[..., int]:
    """A `require_credits` amount that reads the feature's price when the request comes in."""
    return lambda *args, **kwargs: cost_of(name)


def price_list() -> list[dict]:
    return [
        {"feature": f.name, "credit_type": f.credit_type.value, "cost": cost_of(f.name),
         "unit": f.unit, "endpoint": f.endpoint}
        for f in FEATURES.values()
    ]


def feature_of_route(method: str, rule: str) -> str | None:
    """The declared feature a route sells, by its "METHOD /rule"."""
    return _BY_ENDPOINT.get(f"{method} {rule}")


_BY_ENDPOINT = {feature.endpoint: feature.name for feature in FEATURES.values()}
