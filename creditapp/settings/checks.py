"""The checks create_app runs on the settings: a setting that would lose money or security, or
500 every request, refuses to start in one line naming it."""

MIN_SECRET_LENGTH = 32
# Bounds that keep every expiry a date the databases can store (and a setting a person meant).
MAX_HOLD_TTL_SECONDS = 7 * 24 * 3600
MAX_IDEMPOTENCY_TTL_SECONDS = 366 * 24 * 3600


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
    _check_jobs(config)
    _check_ai(config)
    _check_webhooks(config)
    config["LOW_BALANCE_THRESHOLDS"] = low_balance_thresholds(config["LOW_BALANCE_THRESHOLDS"])
    if not 0 <= config["LOT_EXPIRING_DAYS"] <= 366:
        raise RuntimeError(f"LOT_EXPIRING_DAYS must be from 0 (no notices) to 366, got {config['LOT_EXPIRING_DAYS']}")
    _check_operators(config)
    _check_access(config)
    if config["CREDITAPP_ENV"] == "production":
        secret = config.get("JWT_SECRET_KEY")
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            raise RuntimeError(
                f"JWT_SECRET_KEY must be set to at least {MIN_SECRET_LENGTH} characters in production"
            )


CREDIT_TYPES = ("generation_credits", "ai_tokens")
MAX_THRESHOLD = 10**12  # the ledger's largest amount


def low_balance_thresholds(value) -> dict[str, int]:
    """LOW_BALANCE_THRESHOLDS as {credit_type: threshold}, from "generation_credits=5,ai_tokens=1000"
    (or a dict already); anything else is one line naming the setting."""
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        pairs = []
        for item in (part.strip() for part in str(value or "").split(",")):
            if item:
                name, equals, number = item.partition("=")
                if not equals:
                    raise RuntimeError(f"LOW_BALANCE_THRESHOLDS must be credit_type=threshold pairs separated by "
                                       f"commas (generation_credits=5,ai_tokens=1000), got {item!r}")
                pairs.append((name.strip(), number.strip()))
    thresholds = {}
    for name, number in pairs:
        if name not in CREDIT_TYPES:
            raise RuntimeError(f"LOW_BALANCE_THRESHOLDS names {name!r}, not a credit type ({', '.join(CREDIT_TYPES)})")
        if name in thresholds:
            raise RuntimeError(f"LOW_BALANCE_THRESHOLDS gives {name} twice")
        if isinstance(number, bool) or not (isinstance(number, int) or (isinstance(number, str) and number.isascii()
                                                                        and number.isdigit())):
            raise RuntimeError(f"LOW_BALANCE_THRESHOLDS: {name} must be a whole number of credits, got {number!r}")
        if not 0 <= int(number) <= MAX_THRESHOLD:
            raise RuntimeError(f"LOW_BALANCE_THRESHOLDS: {name} must be from 0 to {MAX_THRESHOLD}, got {number}")
        thresholds[name] = int(number)
    return thresholds
JWT_LOCATIONS = ("headers", "cookies", "query_string", "json")


def _check_access(config) -> None:
    """Settings that, wrong, would not stop the server but switch a protection off or turn every
    authenticated request into a 500: refused at start, each in one line naming it."""
    from limits import parse_many
    from limits.storage import SCHEMES

    locations = config["JWT_TOKEN_LOCATION"]
    locations = [locations] if isinstance(locations, str) else list(locations)
    unknown = [name for name in locations if name not in JWT_LOCATIONS]
    if not locations or unknown:
        raise RuntimeError(f"JWT_TOKEN_LOCATION must name some of {', '.join(JWT_LOCATIONS)}, got {locations!r}")
    for name in ("AUTH_RATE_LIMIT", "PAID_RATE_LIMIT"):
        try:
            parse_many(str(config[name]))
        except ValueError:
            raise RuntimeError(f"{name} must be a rate limit such as '120 per minute' or '10/second', "
                               f"got {config[name]!r}") from None
    storage = str(config["RATELIMIT_STORAGE_URI"])
    if storage.partition("://")[0] not in SCHEMES or "://" not in storage:
        raise RuntimeError(f"RATELIMIT_STORAGE_URI must be memory:// or redis://host:port/db (or another "
                           f"storage of the limits package), got {storage!r}")
    blocklist = config.get("TOKEN_BLOCKLIST_URL")
    if blocklist and not blocklist.startswith(("redis://", "rediss://", "unix://")):
        raise RuntimeError(f"TOKEN_BLOCKLIST_URL must be a redis://, rediss:// or unix:// URL (unset: the "
                           f"database), got {blocklist!r}")


def _check_operators(config) -> None:
    if not 0 <= config["TRUSTED_PROXIES"] <= 10:
        raise RuntimeError(f"TRUSTED_PROXIES must be from 0 to 10, got {config['TRUSTED_PROXIES']}")
    if not 0 <= config["METRICS_PORT"] <= 65535:
        raise RuntimeError(f"METRICS_PORT must be from 1 to 65535 (0: /metrics on the API's port), "
                           f"got {config['METRICS_PORT']}")


def _check_ai(config) -> None:
    provider = config["AI_PROVIDER"]
    if provider not in ("stub", "openai"):
        raise RuntimeError(f"AI_PROVIDER must be stub or openai, got {provider!r}")
    if provider == "openai" and not config["OPENAI_API_KEY"]:
        raise RuntimeError("OPENAI_API_KEY must be set with AI_PROVIDER=openai (any string for a local "
                           "server that takes none)")
    for name in ("AI_TIMEOUT_SECONDS", "STREAM_PING_SECONDS", "STREAM_MAX_SECONDS"):
        if not 0 < config[name] <= MAX_HOLD_TTL_SECONDS:
            raise RuntimeError(f"{name} must be above 0 and at most {MAX_HOLD_TTL_SECONDS}, got {config[name]}")


def _check_jobs(config) -> None:
    heartbeat, lease = config["JOB_HEARTBEAT_SECONDS"], config["JOB_LEASE_SECONDS"]
    if not 0 < heartbeat <= 3600:
        raise RuntimeError(f"JOB_HEARTBEAT_SECONDS must be from 0 to 3600, got {heartbeat}")
    if not 2 * heartbeat <= lease <= MAX_HOLD_TTL_SECONDS / 4:
        raise RuntimeError(f"JOB_LEASE_SECONDS must be at least twice JOB_HEARTBEAT_SECONDS ({heartbeat}), "
                           f"so that one late heartbeat does not lose the job, got {lease}")
    if not 1 <= config["JOB_MAX_ATTEMPTS"] <= 20:
        raise RuntimeError(f"JOB_MAX_ATTEMPTS must be from 1 to 20, got {config['JOB_MAX_ATTEMPTS']}")
    if not 0 <= config["JOB_RETRY_BACKOFF_SECONDS"] <= 3600:
        raise RuntimeError(f"JOB_RETRY_BACKOFF_SECONDS must be from 0 to 3600, got {config['JOB_RETRY_BACKOFF_SECONDS']}")
    if config["JOBS_EMBEDDED_THREADS"] < 1:
        raise RuntimeError("JOBS_EMBEDDED_THREADS must be at least 1")
    provider = config["PAYMENTS_PROVIDER"]
    if provider not in ("", "test", "stripe"):
        raise RuntimeError(f"PAYMENTS_PROVIDER must be test or stripe (or empty: no purchases), got {provider!r}")
    if provider == "test" and config["CREDITAPP_ENV"] == "production":
        raise RuntimeError("PAYMENTS_PROVIDER=test gives credits for nothing: production needs PAYMENTS_PROVIDER=stripe")
    if provider == "stripe" and not (config["STRIPE_SECRET_KEY"] and config["STRIPE_WEBHOOK_SECRET"]):
        raise RuntimeError("PAYMENTS_PROVIDER=stripe needs STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET")
    if not 30 <= config["CHECKOUT_EXPIRES_MINUTES"] <= 1440:
        raise RuntimeError(f"CHECKOUT_EXPIRES_MINUTES must be from 30 to 1440 (Stripe's bounds), "
                           f"got {config['CHECKOUT_EXPIRES_MINUTES']}")
    longest = (config["CREDIT_HOLD_TTL_SECONDS"] + config["JOB_MAX_ATTEMPTS"]
               * (config["JOB_TIME_LIMIT_SECONDS"] + 2 * lease + config["JOB_RETRY_BACKOFF_SECONDS"]
                  * 2 ** (config["JOB_MAX_ATTEMPTS"] - 1)))
    if not 0 < config["JOB_TIME_LIMIT_SECONDS"] or longest >= config["IDEMPOTENCY_TTL_SECONDS"]:
        raise RuntimeError(
            f"a job can live {longest:.0f} s (queued for CREDIT_HOLD_TTL_SECONDS, then JOB_MAX_ATTEMPTS "
            "attempts of JOB_TIME_LIMIT_SECONDS with their backoff): that must be positive and shorter "
            f"than IDEMPOTENCY_TTL_SECONDS ({config['IDEMPOTENCY_TTL_SECONDS']}), or a retry with the "
            "job's Idempotency-Key could submit it again")


def _check_webhooks(config) -> None:
    """WEBHOOK_RETRY_SCHEDULE is checked where it is read (creditapp/webhooks/settings.py)."""
    for name, top in (("WEBHOOK_TIMEOUT_SECONDS", 300), ("WEBHOOK_DISABLE_AFTER_DAYS", 3650),
                      ("WEBHOOK_SWEEP_SECONDS", 3600)):
        if not 0 < config[name] <= top:
            raise RuntimeError(f"{name} must be above 0 and at most {top}, got {config[name]}")
