"""Swagger UI's own files, served by the app, so that /api/docs works without the internet.

flask-smorest renders /api/docs as a page that loads OPENAPI_SWAGGER_UI_URL + "swagger-ui.css",
"swagger-ui-bundle.js" and "swagger-ui-standalone-preset.js". When that URL is a path of this
app, this blueprint serves it from the Swagger UI distribution that the flask-swagger-ui package
ships (its files only: the page stays flask-smorest's). A plain Flask blueprint, so the files
stay out of the API document.
"""
from importlib.resources import files

from flask import Blueprint, Flask, send_from_directory

SWAGGER_UI_DIST = str(files("flask_swagger_ui") / "dist")

blp = Blueprint("swagger_ui_files", __name__)


@blp.get("/<path:filename>")
def swagger_ui_file(filename: str):
    """One file of the Swagger UI distribution."""
    return send_from_directory(SWAGGER_UI_DIST, filename)


def init_app(app: Flask) -> None:
    url = app.config.get("OPENAPI_SWAGGER_UI_URL") or ""
    if url.startswith("/"):  # a CDN's address needs nothing from the app
        app.register_blueprint(blp, url_prefix=url.rstrip("/"))
