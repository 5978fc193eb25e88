"""The base of creditapp's command groups (`users`, `credits`, `jobs`, ...): their commands need
the migrated schema, and a database that `db upgrade` has not brought to this code is one line
and exit 3, not a traceback, nor `credits verify`'s exit 1, which means the ledger is wrong."""
import click
from flask.cli import AppGroup, ScriptInfo
from sqlalchemy.exc import SQLAlchemyError

from .database import migration_status, migrations_pending

NOT_MIGRATED_EXIT = 3


class NotMigrated(click.ClickException):
    exit_code = NOT_MIGRATED_EXIT


class DatabaseCommands(AppGroup):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            # The command's app context has ended: the question needs one of its own.
            with ctx.ensure_object(ScriptInfo).load_app().app_context():
                if not migrations_pending(exc):
                    raise
                revision, head, _pending = migration_status()
            several = " heads" if " " in head else ""
            raise NotMigrated(f"the database is not migrated to this code (it is at {revision or 'none'}, "
                              f"this code needs {head}): run `db upgrade{several}` first") from None
