"""Real gunicorn servers and parallel clients for tests where concurrency matters.

Every server is stopped by PID (its whole process group) when its `with` block ends.
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def fire_together(n: int, send) -> list:
    """Run `send(i)` in n threads released at the same instant; returns the results in order."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return send(i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(run, range(n)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, **settings) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AI_STUB_", "JOBS_", "JOB_"))}
    env.update(CREDITAPP_ENV="testing", DATABASE_URL=database_url)
    env.update({key: str(value) for key, value in settings.items()})
    return env


def flask_cli(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path | None

    def worker_pids(self) -> list[int]:
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == self.pid:
                children.append(int(stat.parent.name))
        return children

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


@contextmanager
def gunicorn(env: dict, workers: int = 4, threads: int = 1, log_path: Path | None = None):
    """Yields a Server running wsgi:app; stops it (the arbiter and its workers) on exit."""
    port = free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--threads", str(threads), "--graceful-timeout", "5",
         # One client per thread, so that simultaneous requests really spread over the workers.
         "--worker-connections", str(threads),
         "--timeout", "60"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process.pid, log_path)
    try:
        _wait_until_up(server.url, process)
        yield server
    finally:
        _stop(process)
        if log_path:
            log.close()


def _wait_until_up(base: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode} before serving")
        try:
            if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gunicorn did not answer on {base} within {timeout}s")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
