"""Extension singletons, bound to the app in create_app."""
from flask import current_app, has_request_context
from flask_cors import CORS
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sqlalchemy import SQLAlchemy

from . import ratelimits  # noqa: F401  (memory:// that is safe under threads)
from .ledger.tables import Base
from .token_cache import CachingJWTManager

# The app's models and the ledger's share one metadata (and so one set of migrations).
db = SQLAlchemy(model_class=Base)
migrate = Migrate()
jwt = CachingJWTManager()  # verified tokens kept for their lifetime (token_cache.py)


class PerAppApi(Api):
    """flask-smorest's Api with each app's OpenAPI document its own. One Api object serves every
    app made in the process (the tests make many, each with its own paid features), and its
    `spec` is replaced by each init_app: without this, an app would serve the last app's document.
    A request reads its own app's; building the document (init_app, register_blueprint) writes
    the app being built's."""

    @property
    def spec(self):
        if has_request_context():
            return current_app.extensions.get("creditapp.openapi", self._spec)
        return self._spec

    @spec.setter
    def spec(self, value):
        self._spec = value
        if self._app is not None:
            self._app.extensions["creditapp.openapi"] = value


api = PerAppApi()
cors = CORS()
# Storage from RATELIMIT_STORAGE_URI (memory:// by default, redis://... to share between hosts).
limiter = Limiter(key_func=get_remote_address)
