"""Real gunicorn servers for the benchmark: `gunicorn -c gunicorn.conf.py wsgi:app`, started and
stopped by the one harness (creditapp.testing.servers); what is the benchmark's own is its
environment and when a server counts as ready to be measured.
"""
import os
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from creditapp.testing import servers
from creditapp.testing.servers import ROOT, Server

from . import procstats

# The per-user limit on paid routes (120 a minute by default) would turn scenario 4, and any
# run long enough, into a benchmark of 429 answers. The limiter stays on, so its cost is
# measured, with a limit no run reaches.
PAID_RATE_LIMIT = "100000000 per minute"
# Several workers need the limiter's counters in one place (README, Deploying): the bench runs
# that deployment when a Redis answers, and memory storage (one count per worker) otherwise.
BENCH_REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def limiter_storage() -> str:
    import redis

    try:
        redis.Redis.from_url(BENCH_REDIS, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return "memory://"
    return BENCH_REDIS


def server_env(database_url: str, jwt_secret: str, *, workers: int, latency_ms: int,
               limiter_storage: str = "memory://") -> dict:
    # The AI's settings (the stub's failure rate, another provider), another database, or a worker
    # class and command-line settings for gunicorn must not leak in from outside: the scenarios
    # that want them (bench/streams.py) set them.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AI_", "OPENAI_", "STREAM_", "DATABASE_URL", "GUNICORN_BIND", "GUNICORN_WORKER",
                                  "GUNICORN_CMD_ARGS"))}
    env.update(
        CREDITAPP_ENV="development",
        DATABASE_URL=database_url,
        JWT_SECRET_KEY=jwt_secret,
        JWT_ACCESS_TOKEN_EXPIRES="86400",
        BENCHMARK_ROUTES="1",
        GUNICORN_WORKERS=str(workers),
        AI_STUB_LATENCY_MS=str(latency_ms),
        PAID_RATE_LIMIT=PAID_RATE_LIMIT,
        RATELIMIT_STORAGE_URI=limiter_storage,
        RATELIMIT_KEY_PREFIX=f"creditapp-bench-{os.getpid()}",
    )
    return env


@contextmanager
def gunicorn(env: dict, log_path: Path, app: str = "wsgi:app"):
    """Yields a Server that answers /healthz with all its workers booted; stops it on exit.
    `app` is creditapp (`wsgi:app`) or the floor (`bench.floor:create_app()`)."""
    with servers.gunicorn(env, int(env["GUNICORN_WORKERS"]), log_path=log_path, app=app,
                          config_file=ROOT / "gunicorn.conf.py", ready=_ready, log_mode="ab") as server:
        yield server


def _ready(server: Server, process: subprocess.Popen, timeout: float = 60) -> None:
    """/healthz answers, every worker exists, and the workers have stopped using CPU (they
    have all imported the app): a measurement must not start while some are still booting."""
    deadline = time.monotonic() + timeout
    last_cpu = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode} before serving; see {server.log_path}")
        pids = server.worker_pids()
        if len(pids) == server.workers and _healthy(server.url):
            cpu = sum(procstats.cpu_seconds(pid) or 0.0 for pid in pids)
            if last_cpu is not None and cpu - last_cpu < 0.02:
                return
            last_cpu = cpu
        time.sleep(0.25)
    raise RuntimeError(f"gunicorn on {server.url} was not ready within {timeout}s; see {server.log_path}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False
