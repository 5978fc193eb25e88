"""Recommended gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app`.

AI calls are slow and hold no database connection, so each worker serves many requests at once:
in threads (gthread, the default), or in greenlets (`GUNICORN_WORKER_CLASS=gevent`: thousands of
slow generations and streams in flight per worker, each costing a greenlet rather than a thread).
The database pool only needs to cover the short transactions around the call. Every setting can be
overridden from the environment.
"""
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile

def _refuse(message: str):
    print(f"creditapp: configuration error: {message}", file=sys.stderr, flush=True)
    sys.exit(4)  # as creditapp.startup does: the server does not start


def _int(name: str, default) -> int:
    raw = os.environ.get(name) or default
    try:
        return int(raw)
    except ValueError:
        _refuse(f"{name} must be an integer, got {raw!r}")


def _float(name: str, default) -> float:
    raw = os.environ.get(name) or default
    try:
        return float(raw)
    except ValueError:
        _refuse(f"{name} must be a number, got {raw!r}")


bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = _int("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
if worker_class not in ("gthread", "gevent"):
    _refuse(f"GUNICORN_WORKER_CLASS must be gthread or gevent, got {worker_class!r}")
threads = _int("GUNICORN_THREADS", 50)
if worker_class == "gevent":
    # Connections (each a greenlet) a worker serves at once, keep-alive ones included.
    worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 1000)
else:
    # Connections a worker accepts: one being served per thread, and as many again kept alive
    # between requests. Not more: a keep-alive client stays on the worker that accepted it, and
    # without a cap one worker held 119 of 200 connections while the others idled (bench/). Not
    # fewer: with no room beyond the threads (this was `threads` once) gunicorn keeps nothing alive
    # and answers every request `Connection: close`.
    worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 2 * threads)
# Longer than the slowest AI call; a worker killed by this timeout leaves its holds to expire.
timeout = _int("GUNICORN_TIMEOUT", 120)
# A stopping worker (a deploy, a HUP, max_requests) lets its requests finish: streams too, which
# run up to STREAM_MAX_SECONDS and, cut, would leave their text unpaid and their holds to expire.
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", int(max(30, _float("STREAM_MAX_SECONDS", 300) + 10)))
keepalive = 5
# Recycle workers now and then so that a slow leak cannot grow without bound.
max_requests = _int("GUNICORN_MAX_REQUESTS", 0)
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


# /metrics on a port of its own, served by the arbiter from every worker's files; the API's port
# then has none. Keep it private: bind it to a monitoring network or to loopback (the default).
metrics_port = _int("METRICS_PORT", 0)
metrics_host = os.environ.get("METRICS_HOST") or "127.0.0.1"


def on_starting(server):
    """Once, before binding or forking, the app gunicorn serves is made in a process of its own
    (the arbiter imports none of it: gevent workers patch ssl after the fork): a refused setting
    stops the server in one line naming it; a database not migrated yet, or jobs without a broker
    in production, are said in one line each (creditapp/startup.py)."""
    target = getattr(server.app, "app_uri", None) or "wsgi:app"
    checked = subprocess.run([sys.executable, "-m", "creditapp.startup", target],
                             env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"})
    if checked.returncode != 0:
        sys.exit(checked.returncode)


def when_ready(server):
    if metrics_port:
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        try:
            start_http_server(metrics_port, addr=metrics_host, registry=registry)
        except OSError as exc:  # taken, or a host that is not this machine's: one line, no server
            _refuse(f"METRICS_PORT {metrics_port} on METRICS_HOST {metrics_host!r} cannot be served: {exc}")
        server.log.info("Metrics at http://%s:%s/metrics", metrics_host, metrics_port)


def on_exit(server):
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)


def child_exit(server, worker):
    from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

    GunicornInternalPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
