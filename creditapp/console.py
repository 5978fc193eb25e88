"""`creditapp`, the console script: the Flask CLI bound to creditapp's app (`creditapp db upgrade`,
`creditapp credits verify`, `creditapp jobs worker`, ...), with the settings of the environment.

`creditapp --app module:app` (or FLASK_APP) binds it to an app built on creditapp instead, as
`flask --app` would.
"""
import platform
from importlib.metadata import version

import click
from flask.cli import FlaskGroup, ScriptInfo

from . import __version__

# A refused setting is one line and exit 4 here too, not a traceback.
DEFAULT_APP = "creditapp.startup:app_or_exit()"


class CreditappGroup(FlaskGroup):
    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        # FlaskGroup would look for an app.py or wsgi.py in the working directory: the package's
        # own app is the default, and --app (applied after this) still wins.
        extra.setdefault("obj", ScriptInfo(app_import_path=DEFAULT_APP, set_debug_flag=self.set_debug_flag,
                                           load_dotenv_defaults=self.load_dotenv))
        return super().make_context(info_name, args, parent=parent, **extra)


def _print_version(ctx: click.Context, _param, value) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"creditapp {__version__}\nPython {platform.python_version()}\nFlask {version('flask')}")
        ctx.exit()


def main() -> None:
    # Flask's own --version names only Flask and Werkzeug: a bug report needs creditapp's release.
    version_option = click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True,
                                  callback=_print_version, help="Show creditapp's version.")
    CreditappGroup(name="creditapp", add_version_option=False, params=[version_option],
                   help="creditapp's Flask CLI (db upgrade, credits verify, jobs worker, users, ...) on its own "
                   "app, or with --app on an app built on creditapp.").main(prog_name="creditapp")


if __name__ == "__main__":
    main()
