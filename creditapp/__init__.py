"""creditapp: sell AI features for credits, with a ledger that is never wrong.

`creditapp.ledger` is the ledger alone (no Flask); `creditapp.app.create_app` builds the web app.
Importing this package loads neither, so a worker or a script can use the ledger without the web
layer; `from creditapp import create_app` still works and loads the app on first use.
"""

# The release, in this one place: pyproject.toml reads it, CHANGELOG.md tells what it holds.
__version__ = "1.0.0"


_TEMPORARY = {
    "Blueprint": "creditapp.api.bodies", "CreditType": "creditapp.ledger", "GenerateSchema": "creditapp.api.schemas",
    "GenerationResponseSchema": "creditapp.api.schemas", "ai_service": "creditapp.ai",
    "charge_and_answer": "creditapp.api.paid", "paid_feature": "creditapp.api.paid", "db": "creditapp.extensions",
    "utcnow": "creditapp.ledger.clock", "app_or_exit": "creditapp.startup",
}


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in _TEMPORARY:
        import importlib

        return getattr(importlib.import_module(_TEMPORARY[name]), name)
    raise AttributeError(f"module 'creditapp' has no attribute {name!r}")
