"""The app with the sketch feature, for gunicorn: `gunicorn wsgi_sketch:app`."""
from creditapp import create_app

from sketch import blp

app = create_app(blueprints=[blp])
