"""The application factory: configuration, database, extensions, blueprints, errors, commands."""
import os
from collections.abc import Iterable

from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from flask_smorest import Blueprint
from werkzeug.middleware.proxy_fix import ProxyFix

from . import ai, auth, database, logs, metrics, revocation
from .api import bench, bodies, checkout_pages, dashboard_pages, docs, plans, purchases, register_blueprints, running
from .api.errors import register_error_handlers, register_jwt_handlers
from .api.schemas import ErrorSchema
from .cli import register_commands
from .database import engine_options
from .extensions import api, cors, db, jwt, limiter, migrate
from .redis_pools import blocking_pool
from .settings import Config, check_config, config_from_env
from .features import check_costs, check_signup_grants
from .jobs import queue as job_queue
from .ledger import credit_service
from .webhooks import outbox
from .webhooks import queue as webhook_queue

# creditapp's own migrations, inside the package (an app adds its own with MIGRATION_DIRS).
MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")


def create_app(config_class: type[Config] | None = None, overrides: dict | None = None,
               blueprints: Iterable[Blueprint] = (), features: Iterable[str] | None = None) -> Flask:
    """The app; `blueprints` are an app's own (paid features declared with `paid_feature`), added
    to the API and its document next to the built-in paid features `features` (names, "all" or
    "none"; by default the FEATURES setting)."""
    app = Flask(__name__)
    app.config.from_object(config_class or config_from_env())
    app.config.update(overrides or {})
    # Flask's default is beside the code: inside site-packages once installed, or the clone's.
    app.instance_path = os.path.abspath(app.config["INSTANCE_PATH"] or "instance")
    check_config(app.config)
    configure_database(app)
    check_signup_grants(app.config)
    credit_service.configure(
        hold_ttl_seconds=app.config["CREDIT_HOLD_TTL_SECONDS"],
        idempotency_ttl_seconds=app.config["IDEMPOTENCY_TTL_SECONDS"],
    )
    # Low balance alerts: the ledger decides them in its writes and emits into the webhooks' outbox.
    credit_service.configure_alerts(app.config["LOW_BALANCE_THRESHOLDS"], emit=outbox.emit,
                                    emitted=outbox.dispatch_soon)

    register_extensions(app)
    app.config["FEATURES"] = register_blueprints(api, app.config["FEATURES"] if features is None else features)
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
    # The price table of what the app serves, declared prices with CREDIT_COSTS over them.
    app.config["CREDIT_COSTS"] = check_costs(app.config["CREDIT_COSTS"], app)
    docs.init_app(app)
    if app.config["BENCHMARK_ROUTES"]:
        # Plain Flask blueprint: kept out of the API document.
        app.register_blueprint(bench.blp)
    app.register_blueprint(checkout_pages.pages)  # HTML, not the API: answers 404 unless PAYMENTS_PROVIDER=test
    app.register_blueprint(dashboard_pages.pages)  # HTML for administrators at /admin/, not the API
    register_error_handlers(app)
    register_commands(app)
    if app.config["TRUSTED_PROXIES"]:
        # The client's address as the proxies saw it, for the per-IP limits and the logs.
        n = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)
    return app


def configure_database(app: Flask) -> None:
    uri = app.config.get("SQLALCHEMY_DATABASE_URI")
    if not uri:
        os.makedirs(app.instance_path, exist_ok=True)
        uri = "sqlite:///" + os.path.join(app.instance_path, "creditapp.db")
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(uri, app.config["SQLALCHEMY_ENGINE_OPTIONS"])


def version_locations(app: Flask) -> list[str]:
    """creditapp's version directory and the app's own (MIGRATION_DIRS), as absolute paths."""
    return [os.path.join(MIGRATIONS, "versions"), *(os.path.abspath(path) for path in app.config["MIGRATION_DIRS"])]


@migrate.configure
def _with_app_migrations(config: AlembicConfig) -> AlembicConfig:
    """`flask db ...` sees the app's own version directories next to creditapp's."""
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(version_locations(current_app)))
    return config


def migration_scripts(app: Flask) -> ScriptDirectory:
    """creditapp's revisions and the app's own (MIGRATION_DIRS), read once, for `migration_status`."""
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(version_locations(app)))
    return ScriptDirectory.from_config(config)


def register_extensions(app: Flask) -> None:
    bodies.init_app(app)  # before any blueprint: its routes use the `id` converter
    db.init_app(app)
    database.init_app(app)
    # An absolute directory, so `flask db upgrade` works from any working directory.
    migrate.init_app(app, db, directory=MIGRATIONS, render_as_batch=True)
    scripts = migration_scripts(app)
    app.extensions["creditapp.migration_scripts"] = scripts
    # The revisions this code needs, as `migration_status` spells them: one, or one per branch when
    # the app adds migrations of its own.
    app.extensions["creditapp.migration_head"] = " ".join(sorted(scripts.get_heads()))
    jwt.init_app(app)
    register_jwt_handlers(jwt)
    revocation.init_app(app)
    auth.init_app(app, jwt)
    # Document every route's default error with our envelope, not flask-smorest's own.
    api.ERROR_SCHEMA = ErrorSchema
    api.init_app(app)
    logs.init_app(app)
    metrics.init_app(app)
    purchases.init_app(app)  # after metrics: the inbox counts what it applies
    plans.init_app(app)  # after purchases: paid plans use its provider and inbox
    ai.init_app(app)
    job_queue.init_app(app, perform=running.run)
    webhook_queue.init_app(app, app.extensions["creditapp.jobs"])  # on the jobs' broker and workers
    storage = app.config.get("RATELIMIT_STORAGE_URI") or ""
    if storage.startswith(("redis://", "rediss://")) and not app.config.get("RATELIMIT_STORAGE_OPTIONS"):
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {"connection_pool": blocking_pool(storage)}
    limiter.init_app(app)
    if app.config["CORS_ORIGINS"]:
        cors.init_app(
            # Not the webhooks: only providers' servers post there, never a browser.
            app, resources={r"/api/(?!webhooks/).*": {"origins": app.config["CORS_ORIGINS"]}},
            supports_credentials="cookies" in app.config["JWT_TOKEN_LOCATION"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Prefer", "X-CSRF-TOKEN",
                           "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "Idempotent-Replayed", "Location", "Preference-Applied"],
        )
