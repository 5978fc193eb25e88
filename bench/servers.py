"""Real gunicorn servers for the benchmark: `gunicorn -c gunicorn.conf.py wsgi:app`.

Each server runs in its own process group and is stopped by that group's id when its `with`
block ends, on success, error or Ctrl-C alike. As a last resort the arbiter also gets SIGTERM
from the kernel if the benchmark process itself is killed (PR_SET_PDEATHSIG).
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import procstats

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, jwt_secret: str, *, workers: int, latency_ms: int,
               limiter_storage: str = "memory://") -> dict:
    # The stub's failure rate and call log, or another database, must not leak in from outside.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AI_STUB_", "DATABASE_URL", "GUNICORN_BIND", "GUNICORN_WORKERS"))}
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


@dataclass
class Server:
    url: str
    pid: int
    workers: int

    def worker_pids(self) -> list[int]:
        return procstats.children(self.pid)

    def all_pids(self) -> list[int]:
        return [self.pid, *self.worker_pids()]


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass  # only a safety net


@contextmanager
def gunicorn(env: dict, log_path: Path, app: str = "wsgi:app"):
    """Yields a Server that answers /healthz with all its workers booted; stops it on exit.
    `app` is creditapp (`wsgi:app`) or the floor (`bench.floor:create_app()`)."""
    port = free_port()
    env = dict(env, GUNICORN_BIND=f"127.0.0.1:{port}")
    workers = int(env["GUNICORN_WORKERS"])
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent,
        )
    server = Server(f"http://127.0.0.1:{port}", process.pid, workers)
    try:
        _wait_until_ready(server, process, log_path)
        yield server
    finally:
        stop(process)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait_until_ready(server: Server, process: subprocess.Popen, log_path: Path,
                      timeout: float = 60) -> None:
    """/healthz answers, every worker exists, and the workers have stopped using CPU (they
    have all imported the app): a measurement must not start while some are still booting."""
    deadline = time.monotonic() + timeout
    last_cpu = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with {process.returncode} before serving; see {log_path}"
            )
        pids = server.worker_pids()
        if len(pids) == server.workers and _healthy(server.url):
            cpu = sum(procstats.cpu_seconds(pid) or 0.0 for pid in pids)
            if last_cpu is not None and cpu - last_cpu < 0.02:
                return
            last_cpu = cpu
        time.sleep(0.25)
    raise RuntimeError(f"gunicorn on {server.url} was not ready within {timeout}s; see {log_path}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (graceful), SIGKILL if it does not go in time."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            process.wait(timeout=10)
    # A worker that outlived its arbiter is still in the group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
