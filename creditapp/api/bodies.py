"""Request bodies: their size limit, their JSON, and canonical ids in paths.

Anything a client can send is answered in the JSON envelope: a body past MAX_CONTENT_LENGTH is a
413 however it is framed, and JSON that is too deep or holds a number too long to convert is a
400, like any other malformed JSON (never a 500 with a traceback).
"""
import io
import json

import flask_smorest
from flask import Flask, current_app, request
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.routing import BaseConverter


class Parser(FlaskParser):
    def _raw_load_json(self, req):
        if not is_json_request(req):
            return core.missing
        try:
            return core.parse_json(req.get_data(cache=True))
        except (ValueError, RecursionError) as exc:
            # ValueError: a JSONDecodeError, or an integer of more than 4300 digits;
            # RecursionError: arrays or objects nested deeper than Python's stack.
            error = exc if isinstance(exc, json.JSONDecodeError) else json.JSONDecodeError(
                f"{type(exc).__name__}: {str(exc).split(';')[0]}", "", 0)
            return self._handle_invalid_json_error(error, req)


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's Blueprint with a parser that turns every malformed body into a 400."""

    ARGUMENTS_PARSER = Parser()


class IdConverter(BaseConverter):
    """`<id:name>`: a positive id in canonical ASCII decimal (not "007", " 7" or "٧")."""

    regex = r"[1-9][0-9]{0,17}"  # at most 18 digits: always inside a 64-bit id

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(int(value))


def limit_chunked_body() -> None:
    """A chunked body has no Content-Length for Werkzeug to check up front, and its limited
    stream stops quietly at the limit (a truncated body then looks like malformed JSON). Read
    one byte past the limit ourselves: more than the limit is a 413."""
    environ = request.environ
    if request.content_length is not None or not environ.get("wsgi.input_terminated"):
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    body = environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)


def init_app(app: Flask) -> None:
    app.url_map.converters["id"] = IdConverter
    app.before_request(limit_chunked_body)
