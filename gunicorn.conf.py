"""Recommended gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

AI calls are slow and hold no database connection, so each worker serves many requests at once
in threads (gthread); the database pool only needs to cover the short transactions around the
call. Every setting can be overridden from the environment.
"""
import multiprocessing
import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 50))
# Longer than the slowest AI call; a worker killed by this timeout leaves its holds to expire.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 120))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None
