"""The app with the sketch feature, for gunicorn (`gunicorn wsgi_sketch:app`) and the CLI
(`creditapp --app wsgi_sketch db upgrade heads`)."""
from creditapp import app_or_exit

from sketch import blp

app = app_or_exit("config", blueprints=[blp])
