"""Structured logs: one JSON line per request, with a request id that follows the request.

The id comes from X-Request-ID when the client (or a proxy) sends a sane one, else it is made
here, and it is echoed in the response. Every line of a request carries it and the client's
address (as TRUSTED_PROXIES saw it); times are ISO 8601 with their offset, so lines from hosts in
other zones sort and compare. Bodies and headers are never logged, so neither passwords nor
tokens can reach the logs.
"""
import logging
import re
import time
import uuid
from datetime import datetime

from flask import Flask, g, has_request_context, request
from flask_jwt_extended import get_jwt_identity
from pythonjsonlogger.json import JsonFormatter

from .auth import verified_key

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("creditapp.access")
job_log = logging.getLogger("creditapp.jobs")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if has_request_context():
            record.request_id = g.get("request_id")
            record.client_ip = request.remote_addr
        elif not hasattr(record, "request_id"):  # a job's lines carry the id of the request that submitted it
            record.request_id = None
        return True


class ZonedJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt=None) -> str:
        # The host's zone, with its offset: 2026-12-07T14:03:04.123+00:00.
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


def init_app(app: Flask) -> None:
    if app.config["LOG_FORMAT"] == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(ZonedJsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"asctime": "time", "levelname": "level"},
        ))
        handler.addFilter(RequestIdFilter())
        for logger in (app.logger, access_log, job_log):
            logger.handlers = [handler]
            logger.propagate = False
    access_log.setLevel(logging.INFO if app.config["LOG_REQUESTS"] else logging.WARNING)
    job_log.setLevel(logging.INFO)
    app.before_request(_start)
    app.after_request(_finish)


def _start() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _SANE_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish(response):
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    if access_log.isEnabledFor(logging.INFO):
        access_log.info("request", extra={
            "method": request.method,
            "path": request.url_rule.rule if request.url_rule else request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            "user_id": _user_id(),
            "api_key_id": getattr(verified_key(), "id", None),
            **g.get("credit_log", {}),
        })
    return response


def _user_id():
    key = verified_key()
    if key is not None:
        return str(key.user_id)  # a key acts as the user who made it
    try:
        return get_jwt_identity()
    except RuntimeError:  # the request carried no verified token
        return None
