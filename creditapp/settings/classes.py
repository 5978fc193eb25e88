"""The settings classes, read from the environment once, when this module is imported.

`CREDITAPP_ENV` picks the class: development (default), production or testing. An app built on
creditapp subclasses one of them in its own config.py (examples/sketch/config.py).
"""
import os
from datetime import timedelta

from .environment import _bool, _credit_costs, _float, _int, _json, _list


class Config:
    CREDITAPP_ENV = "development"
    # None means "a SQLite file in the instance folder"; create_app fills it in.
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL") or None
    SQLALCHEMY_ENGINE_OPTIONS = {
        # Only used for server databases; see creditapp.database.engine_options.
        # Per worker process. Calls are short, so a worker's threads take turns on a fixed set
        # of connections; overflow connections would be opened for a burst and closed after it,
        # each a new database backend (a fork, and its functions compiled again).
        "pool_size": _int("DB_POOL_SIZE", 10),
        "max_overflow": _int("DB_MAX_OVERFLOW", 0),
        "pool_timeout": _int("DB_POOL_TIMEOUT", 10),
        "pool_recycle": _int("DB_POOL_RECYCLE", 1800),
        # No ping before each checkout (a round trip per request): a call that meets a dead
        # connection runs once more on a fresh one (creditapp.ledger.transactions.lost_connection).
        "pool_pre_ping": _bool("DB_POOL_PRE_PING", False),
    }
    SQLITE_BUSY_TIMEOUT_MS = _int("SQLITE_BUSY_TIMEOUT_MS", 30000)
    # The folder of the default SQLite database (creditapp.db, when DATABASE_URL is unset): unset,
    # instance/ in the working directory, the app's own folder (never the installed package's).
    INSTANCE_PATH = os.environ.get("CREDITAPP_INSTANCE_PATH") or None
    # An app's own Alembic version directories, upgraded with creditapp's (`db upgrade heads`):
    # the migrations of the app's tables, each directory a branch of its own.
    MIGRATION_DIRS: list[str] = []

    JWT_SECRET_KEY = os.environ.get("JWT_SECRET_KEY") or "dev-only-insecure-secret-change-me!"
    JWT_ACCESS_TOKEN_EXPIRES = timedelta(seconds=_int("JWT_ACCESS_TOKEN_EXPIRES", 3600))
    JWT_REFRESH_TOKEN_EXPIRES = timedelta(seconds=_int("JWT_REFRESH_TOKEN_EXPIRES", 30 * 24 * 3600))
    # "headers" (default), or "cookies" / "headers,cookies" for browser clients (CSRF-protected).
    JWT_TOKEN_LOCATION = _list("JWT_TOKEN_LOCATION", "headers")
    JWT_COOKIE_SECURE = _bool("JWT_COOKIE_SECURE", False)
    JWT_COOKIE_SAMESITE = "Lax"
    JWT_COOKIE_CSRF_PROTECT = True
    # Where logouts are kept: the database by default, or Redis (redis://host:6379/0).
    TOKEN_BLOCKLIST_URL = os.environ.get("TOKEN_BLOCKLIST_URL") or None
    # Rate limits (Flask-Limiter syntax): per client IP on login and register, per user on paid
    # routes. Behind a proxy, run gunicorn with --forwarded-allow-ips so the IP is the client's.
    RATELIMIT_ENABLED = _bool("RATELIMIT_ENABLED", True)
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI") or "memory://"
    # Keeps the counters of apps that share one Redis apart.
    RATELIMIT_KEY_PREFIX = os.environ.get("RATELIMIT_KEY_PREFIX") or ""
    RATELIMIT_HEADERS_ENABLED = True
    # A fixed window costs one counter per key; a moving window keeps every hit (and showed in
    # the profile of a paid request).
    RATELIMIT_STRATEGY = "fixed-window"
    AUTH_RATE_LIMIT = os.environ.get("AUTH_RATE_LIMIT") or "10 per minute"
    PAID_RATE_LIMIT = os.environ.get("PAID_RATE_LIMIT") or "120 per minute"
    # "json" (one object per line, for log shippers) or "text".
    LOG_FORMAT = os.environ.get("LOG_FORMAT") or "json"
    LOG_REQUESTS = _bool("LOG_REQUESTS", True)
    # Origins allowed to call the API from a browser; none unless listed.
    CORS_ORIGINS = _list("CORS_ORIGINS", "")
    PASSWORD_HASH_METHOD = "scrypt"
    MAX_CONTENT_LENGTH = _int("MAX_CONTENT_LENGTH", 64 * 1024)

    # The built-in paid features served: "all", "none", or names (basic_generation,ai_complete,...).
    FEATURES = _list("FEATURES", "all")
    CREDIT_COSTS = _credit_costs()
    CREDIT_HOLD_TTL_SECONDS = _int("CREDIT_HOLD_TTL_SECONDS", 600)
    IDEMPOTENCY_TTL_SECONDS = _int("IDEMPOTENCY_TTL_SECONDS", 24 * 3600)
    CREDITS_SIGNUP_GRANT = _int("CREDITS_SIGNUP_GRANT", 3)
    AI_TOKENS_SIGNUP_GRANT = _int("AI_TOKENS_SIGNUP_GRANT", 1000)
    # Days until the signup grant's lots expire; unset: they never do.
    SIGNUP_GRANT_EXPIRES_DAYS = _int("SIGNUP_GRANT_EXPIRES_DAYS", 0) or None

    AI_STUB_LATENCY_MS = _int("AI_STUB_LATENCY_MS", 0)
    AI_STUB_FAILURE_RATE = _float("AI_STUB_FAILURE_RATE", 0.0)
    # When set, the stub appends one line per call: lets tests count calls across workers.
    AI_STUB_CALL_LOG = os.environ.get("AI_STUB_CALL_LOG") or None
    AI_STUB_RESULT_LOG = os.environ.get("AI_STUB_RESULT_LOG") or None  # a line per result it returned
    AI_STUB_TOKEN_MS = _int("AI_STUB_TOKEN_MS", 0)  # between the pieces of a streamed completion

    # "stub" (the quick start's and the tests') or "openai": any OpenAI-compatible server (OpenAI,
    # vLLM, Ollama, LiteLLM...) through the official SDK, with its retries off: a retry is a new
    # charge decision, the guard's, not one hidden in a client.
    AI_PROVIDER = os.environ.get("AI_PROVIDER") or "stub"
    OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY") or ""
    OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL") or None  # unset: OpenAI's
    OPENAI_MODEL = os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
    OPENAI_IMAGE_MODEL = os.environ.get("OPENAI_IMAGE_MODEL") or "gpt-image-1"
    # A whole call (or, streaming, the wait for each piece), at most; never longer than nine tenths
    # of CREDIT_HOLD_TTL_SECONDS, so that no answer comes after its hold has expired.
    AI_TIMEOUT_SECONDS = _float("AI_TIMEOUT_SECONDS", 120)
    # Streams ("stream": true): a comment this often while the provider is silent (keeps proxies
    # and clients from timing out), and an end (charged for what was delivered) after this long.
    STREAM_PING_SECONDS = _float("STREAM_PING_SECONDS", 10)
    STREAM_MAX_SECONDS = _float("STREAM_MAX_SECONDS", 300)

    # Jobs (`Prefer: respond-async`): the broker workers take them from, redis://... or amqp://...;
    # empty: an embedded queue, with a worker of JOBS_EMBEDDED_THREADS threads in the server.
    JOBS_BROKER_URL = os.environ.get("JOBS_BROKER_URL") or ""
    JOBS_QUEUE = os.environ.get("JOBS_QUEUE") or "creditapp-jobs"
    JOBS_NAMESPACE = os.environ.get("JOBS_NAMESPACE") or "creditapp"  # Redis key prefix
    JOBS_EMBEDDED_THREADS = _int("JOBS_EMBEDDED_THREADS", 4)
    JOBS_REDIS_HEARTBEAT_TIMEOUT_SECONDS = _float("JOBS_REDIS_HEARTBEAT_TIMEOUT_SECONDS", 60)
    # Per million broker commands. Dramatiq's default (1000) left a killed worker's jobs for
    # minutes behind an idle worker; a pass is cheap when no worker died.
    JOBS_REDIS_MAINTENANCE_CHANCE = _int("JOBS_REDIS_MAINTENANCE_CHANCE", 100_000)
    JOB_MAX_ATTEMPTS = _int("JOB_MAX_ATTEMPTS", 3)
    JOB_RETRY_BACKOFF_SECONDS = _float("JOB_RETRY_BACKOFF_SECONDS", 2)  # doubled at each further attempt
    # A running job's worker extends its hold and its lease this often; a lease not renewed for
    # JOB_LEASE_SECONDS lets a redelivery take the job over (the worker is taken for dead).
    JOB_HEARTBEAT_SECONDS = _float("JOB_HEARTBEAT_SECONDS", 10)
    JOB_LEASE_SECONDS = _float("JOB_LEASE_SECONDS", 30)
    JOB_TIME_LIMIT_SECONDS = _float("JOB_TIME_LIMIT_SECONDS", 900)  # one attempt, at most

    # Buying credits (creditapp/payments): "test", the built-in provider whose checkout page the app
    # serves itself (never in production), or "stripe".
    PAYMENTS_PROVIDER = os.environ.get("PAYMENTS_PROVIDER") or "test"
    CREDIT_PACKS = _json("CREDIT_PACKS")  # unset: the default catalogue (creditapp/payments/catalogue.py)
    STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY") or ""
    STRIPE_WEBHOOK_SECRET = _list("STRIPE_WEBHOOK_SECRET", "")  # any one may sign: rotation
    STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE") or None  # another server: tests, stripe-mock
    # Where this app is reached from outside, for the test checkout page and the default return
    # pages; unset: the address each request came to.
    PUBLIC_URL = (os.environ.get("PUBLIC_URL") or "").rstrip("/") or None
    CHECKOUT_SUCCESS_URL = os.environ.get("CHECKOUT_SUCCESS_URL") or None  # may hold {PURCHASE_ID}
    CHECKOUT_CANCEL_URL = os.environ.get("CHECKOUT_CANCEL_URL") or None
    CHECKOUT_EXPIRES_MINUTES = _int("CHECKOUT_EXPIRES_MINUTES", 60)  # Stripe takes 30 to 1440
    # The test provider signs its events with this (Stripe's scheme); unset: derived from the JWT secret.
    TEST_PAYMENTS_WEBHOOK_SECRET = os.environ.get("TEST_PAYMENTS_WEBHOOK_SECRET") or None
    # Per source address on the webhook routes: far above a provider's bursts, below a flood.
    WEBHOOK_RATE_LIMIT = os.environ.get("WEBHOOK_RATE_LIMIT") or "6000 per minute"

    # Plans (creditapp/plans): the catalogue (JSON; unset: a free and a paid plan), and the plan every
    # account is on unless it subscribes to another (unset: none, so accounts have no allowance).
    PLANS = _json("PLANS")
    DEFAULT_PLAN = os.environ.get("DEFAULT_PLAN") or None

    # --- The dashboard (/admin/) ---
    # Its login is the JWT cookie mode whatever JWT_TOKEN_LOCATION says for the API; its forms
    # carry the double-submit CSRF token as a field (no script on the page), which flask-jwt-extended
    # checks only with this on. The token must still match the one inside the JWT.
    JWT_CSRF_CHECK_FORM = True

    # Outgoing webhooks (creditapp/webhooks): seconds before each attempt (Standard Webhooks'
    # schedule: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h), one attempt's timeout, private
    # and loopback addresses allowed as endpoints (tests only), how long an endpoint may fail every
    # attempt before it is disabled, and how often each worker process sweeps the outbox.
    WEBHOOK_RETRY_SCHEDULE = os.environ.get("WEBHOOK_RETRY_SCHEDULE") or "0,5,300,1800,7200,18000,36000,36000"
    WEBHOOK_TIMEOUT_SECONDS = _float("WEBHOOK_TIMEOUT_SECONDS", 15)
    WEBHOOK_ALLOW_PRIVATE = _bool("WEBHOOK_ALLOW_PRIVATE", False)
    WEBHOOK_DISABLE_AFTER_DAYS = _float("WEBHOOK_DISABLE_AFTER_DAYS", 5)
    WEBHOOK_SWEEP_SECONDS = _float("WEBHOOK_SWEEP_SECONDS", 30)

    # Low balance alerts (balance.low) and lot.expiring notices: the default threshold per credit
    # type, "generation_credits=5,ai_tokens=1000" (unset: no alert unless a wallet sets its own;
    # checked at start by check_config), and how many days before a lot expires its notice goes.
    LOW_BALANCE_THRESHOLDS = os.environ.get("LOW_BALANCE_THRESHOLDS") or ""
    LOT_EXPIRING_DAYS = _int("LOT_EXPIRING_DAYS", 3)

    # --- Operators (issue 21, the support view) ---
    # How many proxies in front of the app append to X-Forwarded-For (and set X-Forwarded-Proto):
    # the client's address is then the one they saw, for the per-IP limits and the logs. 0: none,
    # the address that connected is the client's (a client could forge the header otherwise).
    TRUSTED_PROXIES = _int("TRUSTED_PROXIES", 0)
    # /metrics on a port of its own, served by gunicorn's arbiter (gunicorn.conf.py) from what
    # every worker wrote; the API's port then answers 404 there. 0: on the API's port.
    METRICS_PORT = _int("METRICS_PORT", 0)
    METRICS_HOST = os.environ.get("METRICS_HOST") or "127.0.0.1"

    # /api/bench/control and /api/bench/jwt: reference routes for bench/, off unless asked for.
    BENCHMARK_ROUTES = _bool("BENCHMARK_ROUTES", False)

    API_TITLE = "creditapp"
    API_VERSION = "1.0"
    OPENAPI_VERSION = "3.0.3"
    OPENAPI_URL_PREFIX = "/api"
    OPENAPI_JSON_PATH = "openapi.json"
    OPENAPI_SWAGGER_UI_PATH = "/docs"
    # Swagger UI's files come from the app itself (creditapp/api/docs.py), not from a CDN, so the
    # page works offline and sends no visitor to a third party.
    OPENAPI_SWAGGER_UI_URL = "/api/docs/static/"
    API_SPEC_OPTIONS = {
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
        }
    }


class DevelopmentConfig(Config):
    pass


class ProductionConfig(Config):
    CREDITAPP_ENV = "production"
    # Unset in production: no purchases (503 payments_unavailable) until Stripe is configured.
    PAYMENTS_PROVIDER = os.environ.get("PAYMENTS_PROVIDER") or ""
    JWT_SECRET_KEY = os.environ.get("JWT_SECRET_KEY") or None
    JWT_COOKIE_SECURE = _bool("JWT_COOKIE_SECURE", True)


class TestingConfig(Config):
    CREDITAPP_ENV = "testing"
    TESTING = True
    JWT_SECRET_KEY = "testing-secret-that-is-long-enough-0123456789"
    # scrypt's cost is the point in production; in tests it only slows the suite.
    PASSWORD_HASH_METHOD = "pbkdf2:sha256:1000"
    # Limits stay on (turning them off once hid a 500 on OPTIONS), high enough for a suite that
    # logs in many times from one address; tests/test_limits.py sets low ones.
    RATELIMIT_ENABLED = True
    AUTH_RATE_LIMIT = os.environ.get("AUTH_RATE_LIMIT") or "100000 per minute"
    PAID_RATE_LIMIT = os.environ.get("PAID_RATE_LIMIT") or "100000 per minute"
    # CORS on too, for a web client's origin, so that every route test goes through Flask-CORS.
    CORS_ORIGINS = _list("CORS_ORIGINS", "http://web.test")
    LOG_FORMAT = "text"
    # By default no broker and no worker thread: tests run queued jobs with job_queue().drain().
    JOBS_BROKER_URL = os.environ.get("JOBS_BROKER_URL") or "stub://"


CONFIGS = {
    "development": DevelopmentConfig,
    "production": ProductionConfig,
    "testing": TestingConfig,
}


def config_from_env() -> type[Config]:
    name = os.environ.get("CREDITAPP_ENV", "development")
    try:
        return CONFIGS[name]
    except KeyError:
        raise RuntimeError(
            f"CREDITAPP_ENV must be one of {', '.join(CONFIGS)}, got {name!r}"
        ) from None
