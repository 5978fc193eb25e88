"""The app with the sketch feature, for gunicorn: `gunicorn wsgi_sketch:app`. It sells sketches
only: none of creditapp's built-in paid features."""
from creditapp import create_app

from sketch import blp

app = create_app(blueprints=[blp], features=[])
