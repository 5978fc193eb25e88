"""What a server says as it starts, in one line each: a setting it refuses (and it does not
start), a database that `flask db upgrade` has not brought to this code's schema yet (it starts,
answers 503 migrations_pending where it needs the new schema, and says nothing more per request
or per worker), and production jobs that run inside the server for want of a broker.

gunicorn.conf.py runs `python -m creditapp.startup MODULE:APP` (the app it serves) once, before
the arbiter binds or forks: in a process of its own, so that the arbiter imports none of the app
(gevent workers must patch the standard library before ssl and the HTTP clients are imported).
wsgi.py makes every other app (the workers', the CLI's) with `app_or_exit`.
"""
import importlib
import sys

from flask import Flask

from .database import migration_status
from .extensions import db

# gunicorn's "the app failed to load": its arbiter stops instead of starting the worker again.
CONFIGURATION_EXIT = 4


def app_or_exit(settings: str | None = None, **options) -> Flask:
    """The app, or a one-line configuration error on standard error and exit 4; `settings` names
    a module whose `config_from_env()` gives the settings class (a deployment's config.py), and
    `options` go to create_app.

    Every setting check (settings, prices, plans, packs, brokers) refuses with a RuntimeError
    whose message names the setting; a traceback would only bury that line, once per worker."""
    try:
        from .app import create_app  # here: the settings are read (and may be refused) as they load

        config_class = importlib.import_module(settings).config_from_env() if settings else None
        return create_app(config_class, **options)
    except RuntimeError as exc:
        print(f"creditapp: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIGURATION_EXIT) from None


def notices(app: Flask) -> list[str]:
    """One line per thing an operator must act on."""
    if "creditapp.migration_head" not in app.extensions:
        return []  # not made by create_app (bench's floor, say): nothing of ours to check
    lines = []
    with app.app_context():
        try:
            revision, head, pending = migration_status()
        except Exception as exc:  # not reachable now: /readyz says so, and requests answer 503
            lines.append(f"the database is not reachable ({type(exc).__name__}); /readyz answers 503 until it is")
        else:
            if pending:
                # Several heads: an app's own migrations, which `db upgrade` alone refuses to run.
                upgrade = "db upgrade heads" if " " in head else "flask --app wsgi db upgrade"
                lines.append(f"the database is at migration {revision or 'none'} and this code needs {head}: "
                             f"run `{upgrade}`; until then /readyz answers 503 migrations_pending")
        db.engine.dispose()
    if app.config["CREDITAPP_ENV"] == "production" and not app.config["JOBS_BROKER_URL"]:
        lines.append("JOBS_BROKER_URL is not set: jobs (Prefer: respond-async) run inside each server process "
                     "and wait for the next start when it stops; set it to redis://... or amqp://... and run "
                     "`flask jobs worker`")
    return lines


def served_app(target: str) -> Flask:
    """The app of a gunicorn target ("wsgi:app", "myapp:create_app()"), or exit as `app_or_exit`
    does: an app's own module may call create_app itself."""
    module, _, name = target.partition(":")
    try:
        found = getattr(importlib.import_module(module), (name or "app").removesuffix("()"))
        return found() if name.endswith("()") else found
    except RuntimeError as exc:
        print(f"creditapp: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIGURATION_EXIT) from None


def main(argv: list[str]) -> None:
    app = served_app(argv[1]) if len(argv) > 1 else app_or_exit()
    for line in notices(app):
        print(f"creditapp: warning: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(sys.argv)
