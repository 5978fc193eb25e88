"""Real servers for tests and benchmarks: gunicorn, job workers, the Flask CLI, free ports, and
parallel clients. One module, used by creditapp's tests, its benchmarks and the pytest kit.

Every process is started in a process group of its own and stopped by that group's id when its
`with` block ends (or by `stop`); as a last resort it also gets SIGTERM from the kernel when the
process that started it dies (PR_SET_PDEATHSIG, Linux).
"""
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# The checkout that holds creditapp (its wsgi.py, gunicorn.conf.py and migrations).
ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1


def fire_together(n: int, send: Callable[[int], object]) -> list:
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
    """The environment of a test server: this one's, minus what must not leak in (another
    database, the stub's or the jobs' settings), plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_URL", "AI_", "OPENAI_", "STREAM_", "JOBS_", "JOB_", "GUNICORN_BIND",
                                  "GUNICORN_WORKER"))}
    env.update(CREDITAPP_ENV="testing", DATABASE_URL=database_url)
    env.update({key: str(value) for key, value in settings.items()})
    return env


def flask_cli(env: dict, *args: str, timeout: float = 60, cwd: Path = ROOT,
              app: str = "wsgi") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", app, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path | None
    workers: int = 1

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    def all_pids(self) -> list[int]:
        return [self.pid, *self.worker_pids()]

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


@contextmanager
def gunicorn(env: dict, workers: int = 4, threads: int = 1, log_path: Path | None = None, *,
             app: str = "wsgi:app", cwd: Path = ROOT, config_file: Path | None = None,
             ready: Callable[[Server, subprocess.Popen], None] | None = None, log_mode: str = "w",
             timeout: float = 30, worker_class: str = "gthread") -> Iterator[Server]:
    """Yields a Server running `app` once `ready(server, process)` returns (by default: /healthz
    answers 200); stops it (the arbiter and its workers) on exit.

    Without `config_file`, one client per thread (so that simultaneous requests really spread
    over the workers); with it (gunicorn.conf.py, as the benchmarks run), its settings, with
    `workers` and the bind given here. `worker_class` gevent: greenlets, up to `threads` connections
    at once per worker."""
    port = free_port()
    log = open(log_path, log_mode) if log_path else subprocess.DEVNULL
    command = [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    if config_file is None:
        command += ["--worker-class", worker_class, "--graceful-timeout", "5", "--worker-connections", str(threads),
                    "--timeout", "60"]
        command += ["--threads", str(threads)] if worker_class == "gthread" else []
    else:
        command += ["-c", str(config_file)]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, preexec_fn=die_with_parent)
    server = Server(f"http://127.0.0.1:{port}", process.pid, log_path, workers)
    try:
        if ready is None:
            wait_until_up(server.url + "/healthz", process, timeout)
        else:
            ready(server, process)
        yield server
    finally:
        stop(process)
        if log_path:
            log.close()


@contextmanager
def local_wsgi_server(wsgi) -> Iterator[int]:
    """A threaded HTTP server on loopback for a fake's WSGI callable; yields its port."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, wsgi, threaded=True)
    # A short poll: shutdown() waits for the serving loop to look, 0.5 s by default.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(10)


@contextmanager
def job_workers(env: dict, count: int, log_dir: Path, threads: int = 6, *, cwd: Path = ROOT,
                app: str = "wsgi", name: str = "jobs", timeout: float = 60) -> Iterator[list[subprocess.Popen]]:
    """`count` processes of `flask jobs worker --threads N`, yielded once each has said it takes
    messages; stopped on exit (SIGTERM: running jobs end first; then SIGKILL)."""
    logs = [log_dir / f"{name}-worker{i}.log" for i in range(count)]
    command = [sys.executable, "-m", "flask", "--app", app, "jobs", "worker", "--threads", str(threads)]
    processes = []
    try:
        for log in logs:
            processes.append(start_process(command, env, log, cwd=cwd))
        _wait_started(processes, logs, timeout)
        yield processes
    finally:
        for process in processes:
            stop(process)


def _wait_started(processes: list[subprocess.Popen], logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs):
            if process.poll() is not None:
                raise RuntimeError(f"a jobs worker exited with {process.returncode}; see {log}")
        # The CLI prints this line once its Dramatiq worker has started taking messages.
        if all(b"worker: " in log.read_bytes() for log in logs):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the jobs workers did not start within {timeout}s; see {logs}")


def start_process(command: list[str], env: dict, log_path: Path, *, cwd: Path = ROOT) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=die_with_parent)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer {url} within {timeout}s")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stop a process started here and its whole group: `sig`, then SIGKILL if it does not go
    in time, and SIGKILL to whatever of its group outlived it (a worker of a dead arbiter)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            process.wait(timeout=10)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM when the starting process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:  # not Linux: the `with` blocks still stop everything
        pass
