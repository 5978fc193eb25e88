"""Driving wrk with bench/load.lua and reading what its done() hook prints."""
import json
import os
import subprocess
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "load.lua"
MARKER = "BENCH_RESULT "


@dataclass
class Load:
    """What to send: one request shape, rotated over the tokens in `tokens_file`."""

    method: str
    path: str
    body: str | None = None
    tokens_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = ()  # sent with every request, e.g. Prefer

    def with_headers(self, **headers: str) -> "Load":
        return replace(self, headers=self.headers + tuple(headers.items()))

    def send_one(self, url: str, index: int) -> int:
        """One request as wrk would send it, with the index-th token; fails on an error answer."""
        tokens = self.tokens_file.read_text().split() if self.tokens_file else []
        headers = {"Content-Type": "application/json", **dict(self.headers)}
        if tokens:
            headers["Authorization"] = f"Bearer {tokens[index % len(tokens)]}"
        data = self.body.encode() if self.body is not None else None
        request = urllib.request.Request(url + self.path, data=data, headers=headers, method=self.method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
            return answer.status


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    status_errors: int  # responses with a status >= 400 (wrk's errors.status)
    socket_errors: int  # connect, read, write and timeout errors
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    wrk_cpu_s: float  # CPU time the load generator itself used
    raw: dict

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def ok_per_s(self) -> float:
        """Requests answered without an error status, per second."""
        return max(self.requests - self.status_errors, 0) / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    def as_dict(self) -> dict:
        return {**asdict(self), "rps": self.rps, "ok_per_s": self.ok_per_s, "errors": self.errors}


def run(url: str, load: Load, *, duration: int, connections: int, threads: int,
        timeout: int = 10) -> WrkResult:
    """One wrk run of `duration` whole seconds (wrk takes no fractions)."""
    threads = min(threads, connections)
    env = dict(
        os.environ,
        BENCH_METHOD=load.method,
        BENCH_PATH=load.path,
        BENCH_BODY=load.body or "",
        BENCH_TOKENS=str(load.tokens_file or ""),
        BENCH_THREADS=str(threads),
        BENCH_HEADERS="\n".join(f"{name}: {value}" for name, value in load.headers),
    )
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, int(duration))}s",
        f"--timeout={timeout}s", "-s", str(LUA_SCRIPT), url,
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        try:
            # wait4 rather than wait: it also reports the CPU time wrk used.
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    line = next((line for line in stdout.splitlines() if line.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(
            f"wrk failed (status {process.returncode}): {' '.join(command)}\n{stdout}\n{stderr}"
        )
    data = json.loads(line[len(MARKER):])
    errors, latency = data["errors"], data["latency_us"]
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        status_errors=errors["status"],
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        mean_ms=latency["mean"] / 1000,
        max_ms=latency["max"] / 1000,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        raw=data,
    )
