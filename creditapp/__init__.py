"""creditapp: sell AI features for credits, with a ledger that is never wrong.

`creditapp.ledger` is the ledger alone (no Flask); `creditapp.app.create_app` builds the web app.
Importing this package loads neither, so a worker or a script can use the ledger without the web
layer; `from creditapp import create_app` still works and loads the app on first use.
"""


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'creditapp' has no attribute {name!r}")
