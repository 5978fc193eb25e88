"""creditapp: sell AI features for credits, with a ledger that is never wrong.

The names below are the public API an app built on creditapp imports (`from creditapp import
paid_feature, ...`); anything else is internal and may change. `creditapp.testing` (the pytest
kit), `creditapp.settings` (the settings classes an app's config.py builds on) and
`creditapp.ledger` (the ledger alone, no Flask) are public modules of their own.

Importing this package loads none of them, so a worker or a script can use the ledger without the
web layer: each name is imported on first use.
"""
from importlib import import_module

# name -> (the module it lives in, what it is). The one list of the public API.
PUBLIC: dict[str, tuple[str, str]] = {
    # The app
    "create_app": ("creditapp.app", "The app: create_app(config_class, overrides, blueprints=[...], features=[...])."),
    "app_or_exit": ("creditapp.startup", "A wsgi module's app: create_app with a settings module; a refused setting exits 4."),
    "Blueprint": ("creditapp.api.bodies", "flask-smorest's Blueprint answering every malformed body with a 400."),
    "db": ("creditapp.extensions", "Flask-SQLAlchemy's db: an app's own tables go on db.metadata, beside creditapp's."),
    # Paid features
    "paid_feature": ("creditapp.api.paid", "Declare a paid feature, its price and its route in one decorator."),
    "charge_and_answer": ("creditapp.api.paid", "A paid view's answer: charge the request's hold, return the result."),
    "cost_of": ("creditapp.features", "A feature's price now (CREDIT_COSTS, else its declared price)."),
    "require_credits": ("creditapp.api.guard", "The lower-level guard: hold credits for a view, or answer 403."),
    "require_login": ("creditapp.auth", "A blueprint's before_request: 401 without a valid token."),
    "CreditInfo": ("creditapp.api.guard", "What the guard found (g.credit_info): user, wallet, hold, amounts."),
    "GenerateSchema": ("creditapp.api.schemas", "A request body of one prompt, as POST /api/generate takes."),
    "GenerationResponseSchema": ("creditapp.api.schemas", "The answer of an image feature: result, charged, balance."),
    # The ledger
    "credit_service": ("creditapp.ledger", "The ledger's service: balances, grants, holds, charges, refunds."),
    "CreditService": ("creditapp.ledger", "The class of credit_service."),
    "CreditType": ("creditapp.ledger", "The kinds of credits: generation_credits, ai_tokens."),
    "Balance": ("creditapp.ledger", "A wallet's balance of each credit type."),
    "Hold": ("creditapp.ledger", "Credits reserved for one request until it is charged or given back."),
    "InsufficientCredits": ("creditapp.ledger", "The balance cannot cover a hold (answered 403)."),
    "utcnow": ("creditapp.ledger.clock", "The time every money decision reads (the kit's manual_clock moves it)."),
    # The AI provider
    "AIProvider": ("creditapp.ai", "The protocol an AI provider implements: generate_image, complete."),
    "set_provider": ("creditapp.ai", "Plug an AIProvider into an app: set_provider(app, provider)."),
    "ai_service": ("creditapp.ai", "The current app's AI provider, for views."),
    "Completion": ("creditapp.ai", "A provider's completion: text and token counts."),
    "CompletionStream": ("creditapp.ai", "The protocol of a streamed completion (AIProvider.stream, optional)."),
    "Usage": ("creditapp.ai", "Tokens a completion used: prompt and completion."),
    "GenerationFailed": ("creditapp.exceptions", "Raised by a provider that failed (answered 502, nothing charged)."),
}

__all__ = list(PUBLIC)

# The release, in this one place: pyproject.toml reads it, CHANGELOG.md tells what it holds.
__version__ = "1.0.0"


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module 'creditapp' has no attribute {name!r}")
    value = getattr(import_module(PUBLIC[name][0]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
