"""Recommended gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

AI calls are slow and hold no database connection, so each worker serves many requests at once
in threads (gthread); the database pool only needs to cover the short transactions around the
call. Every setting can be overridden from the environment.
"""
import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", 50))
# A keep-alive client stays on the worker that accepted it: without this cap one worker can hold
# most of the connections while the others idle (bench/ measured 119 of 200 on one worker).
worker_connections = threads
# Longer than the slowest AI call; a worker killed by this timeout leaves its holds to expire.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 120))
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so that a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 0))
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("GUNICORN_ACCESSLOG") or None


# Prometheus multiprocess mode: every worker writes its metrics to files in this directory so
# that /metrics reports the whole server, whichever worker answers. Set before workers start.
# A directory you set yourself must be empty at start (wipe it in your service unit).
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="creditapp-metrics-")
    _made_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _made_metrics_dir = None


def on_exit(server):
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
