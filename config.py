"""Configuration, read from the environment once at start-up.

`CREDITAPP_ENV` picks the class: development (default), production or testing.
"""
import json
import os
from datetime import timedelta


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise RuntimeError(f"{name} must be true or false, got {raw!r}")


def _list(name: str, default: str) -> list[str]:
    return [item.strip() for item in (os.environ.get(name) or default).split(",") if item.strip()]


DEFAULT_CREDIT_COSTS = {
    "basic_generation": 1,
    "professional_photo": 1,
    "change_hairstyle": 1,
    "upscale": 2,
    # AI tokens charged per token used by /api/ai/complete.
    "ai_complete": 1,
}


def _credit_costs() -> dict:
    costs = dict(DEFAULT_CREDIT_COSTS)
    raw = os.environ.get("CREDIT_COSTS")
    if raw:
        try:
            override = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"CREDIT_COSTS must be a JSON object: {exc}") from None
        if not isinstance(override, dict):
            raise RuntimeError("CREDIT_COSTS must be a JSON object")
        costs.update(override)
    return costs


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


MIN_SECRET_LENGTH = 32
# Bounds that keep every expiry a date the databases can store (and a setting a person meant).
MAX_HOLD_TTL_SECONDS = 7 * 24 * 3600
MAX_IDEMPOTENCY_TTL_SECONDS = 366 * 24 * 3600


class ProductionConfig(Config):
    CREDITAPP_ENV = "production"
    JWT_SECRET_KEY = os.environ.get("JWT_SECRET_KEY") or None
    JWT_COOKIE_SECURE = _bool("JWT_COOKIE_SECURE", True)


def check_config(config) -> None:
    """Refuse to start with settings that would lose money or security."""
    hold_ttl, key_ttl = config["CREDIT_HOLD_TTL_SECONDS"], config["IDEMPOTENCY_TTL_SECONDS"]
    if not 0 < hold_ttl <= MAX_HOLD_TTL_SECONDS:
        raise RuntimeError(f"CREDIT_HOLD_TTL_SECONDS must be from 1 to {MAX_HOLD_TTL_SECONDS}, got {hold_ttl}")
    if key_ttl > MAX_IDEMPOTENCY_TTL_SECONDS:
        raise RuntimeError(
            f"IDEMPOTENCY_TTL_SECONDS must be at most {MAX_IDEMPOTENCY_TTL_SECONDS}, got {key_ttl}")
    if key_ttl <= hold_ttl:
        raise RuntimeError(
            f"IDEMPOTENCY_TTL_SECONDS ({key_ttl}) must be longer than CREDIT_HOLD_TTL_SECONDS "
            f"({hold_ttl}): a stored answer could otherwise be forgotten while its request still "
            "runs, and a retry with the same Idempotency-Key would be charged again"
        )
    if config["CREDITAPP_ENV"] == "production":
        secret = config.get("JWT_SECRET_KEY")
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            raise RuntimeError(
                f"JWT_SECRET_KEY must be set to at least {MIN_SECRET_LENGTH} characters in production"
            )


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
