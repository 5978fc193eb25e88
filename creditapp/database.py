"""The app's database: Flask-SQLAlchemy's session and engine, given to the ledger."""
from flask import Flask

from .extensions import db
from .ledger.transactions import configure_engine, database


def init_app(app: Flask) -> None:
    database.bind(lambda: db.session(), lambda: db.engine)
    with app.app_context():
        configure_engine(db.engine, app.config["SQLITE_BUSY_TIMEOUT_MS"])


def engine_options(uri: str, configured: dict) -> dict:
    """Pool settings are for server databases; SQLite takes none of them."""
    if uri.startswith("sqlite"):
        return {}
    return dict(configured)
