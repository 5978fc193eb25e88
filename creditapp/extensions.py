"""Extension singletons, bound to the app in create_app."""
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
api = Api()
cors = CORS()
# Storage from RATELIMIT_STORAGE_URI (memory:// by default, redis://... to share between hosts).
limiter = Limiter(key_func=get_remote_address)
