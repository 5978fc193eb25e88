"""This deployment's settings: creditapp's own (creditapp.settings), read from the environment.

wsgi.py makes the app with `config_from_env()` from here. A deployment that needs more than the
environment gives defines its classes here on creditapp's, as an app built on creditapp does in
its own folder (examples/sketch/config.py).
"""
from creditapp.settings import *  # noqa: F401,F403 (this deployment takes creditapp's settings as they are)
from creditapp.settings import __all__  # noqa: F401
