"""Scenarios 11 and 12 and the keep-alive measurement: thousands of slow requests and streams at
once, under gunicorn's gevent worker (`GUNICORN_WORKER_CLASS=gevent`) and, next to it, its gthread
worker with the threads gunicorn.conf.py gives it. Run by scenarios.Runner; the load comes from
bench/aioload.py (wrk cannot read a stream event by event, and its fixed duration cuts requests
of 10 s into waves), except keep-alive's requests per second, which are wrk's.
"""
import math
import secrets
import threading
import time
from dataclasses import dataclass

from . import aioload, fakeprovider, procstats
from .wrk import Load, WrkResult

WORKER_CLASSES = ("gevent", "gthread")
GTHREAD_THREADS = 50  # gunicorn.conf.py's default; the bench does not change it
COMPLETE_PATH = "/api/ai/complete"


@dataclass(frozen=True)
class Plan:
    s11_connections: int
    s11_latency_s: int  # AI_STUB_LATENCY_MS / 1000
    s11_window_s: int  # the steady window measured after the ramp
    s12_streams: int
    s12_tokens: int  # the fake's completion: tokens of `w{i} `
    s12_tokens_per_second: float
    s12_ramp_s: float  # the streams start evenly over this long
    s12_max_tokens: int
    probe: tuple[int, int] = (10, 20)  # keep-alive probe: connections, requests on each


FULL = Plan(2000, 10, 20, 1000, 50, 5.0, 5.0, 64)
SMOKE = Plan(200, 2, 4, 20, 10, 5.0, 0.5, 16)


def run_scenarios(runner, tokens) -> None:
    plan = SMOKE if runner.s.smoke else FULL
    aioload.raise_nofile()  # thousands of sockets: the servers started from here inherit the limit
    if runner.s.wants("s11"):
        scenario_11(runner, plan, tokens)
    if runner.s.wants("s12"):
        scenario_12(runner, plan, tokens)
    if runner.s.wants("keepalive"):
        keep_alive(runner, plan, tokens)


# --- plumbing -------------------------------------------------------------------------------

def _server(runner, name: str, worker_class: str, latency_ms: int = 0, **env):
    return runner.server(f"{name}-{worker_class}", latency_ms, GUNICORN_WORKER_CLASS=worker_class, **env)


def _load(runner, server, config: dict, *, timeout: float, extra_pids=()) -> dict:
    """One bench.aioload run against `server`, with the CPU readings Runner.measure takes for
    wrk's (in result["cpu"]), and the most PostgreSQL connections the benchmark database had."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.wait(1.0):
            peak[0] = max(peak[0], len(runner._backends()))

    sampler = threading.Thread(target=sample, daemon=True)
    backends = runner._backends()
    before = procstats.snapshot(server.all_pids() + backends + list(extra_pids))
    started = time.monotonic()
    sampler.start()
    try:
        with _sampling_connections(server, interval=2.0) as spread:
            result, client_cpu = aioload.run(config, timeout)
    finally:
        stop.set()
        sampler.join()
    wall = time.monotonic() - started
    busy_s, busy = procstats.machine_busy(before)
    cpu = {"wall_s": wall, "wrk_s": client_cpu, "gunicorn_s": procstats.cpu_used(before, server.all_pids()),
           "postgres_s": procstats.cpu_used(before, sorted(set(backends + runner._backends()))),
           "jobs_s": procstats.cpu_used(before, list(extra_pids)), "machine_busy": busy}
    cpu["other_s"] = max(0.0, busy_s - cpu["wrk_s"] - cpu["gunicorn_s"] - cpu["postgres_s"] - cpu["jobs_s"])
    result["peak_db_connections"] = peak[0] if runner.db.kind == "postgresql" else None
    result["connections_per_worker"] = spread.busiest()
    result["cpu"] = cpu
    return result


def _record(runner, key: str, title: str, result: dict, *, requests: int, duration: float,
            errors: tuple[int, int], latency_ms: dict, connections: int) -> None:
    """aioload's figures in the shape of wrk's, for the table of every measurement and the CPU table."""
    from .scenarios import Measurement

    wrk_result = WrkResult(
        requests=requests, duration_s=duration, status_errors=errors[0], socket_errors=errors[1],
        p50_ms=latency_ms["p50"] or 0.0, p90_ms=latency_ms["p90"] or 0.0, p99_ms=latency_ms["p99"] or 0.0,
        mean_ms=0.0, max_ms=latency_ms["max"] or 0.0, wrk_cpu_s=result["cpu"]["wrk_s"], raw={})
    runner.run.measurements.append(Measurement(key, title, wrk_result, connections, result["cpu"]))


# --- scenario 11: many slow synchronous generations -------------------------------------------

def scenario_11(runner, plan: Plan, tokens) -> None:
    n, latency = plan.s11_connections, plan.s11_latency_s
    figures = runner.run.concurrency.setdefault("s11", {
        "connections": n, "latency_s": latency, "expected_per_s": n / latency,
        "gthread_cap_per_s": runner.s.workers * GTHREAD_THREADS / latency})
    from .scenarios import GENERATE_BODY

    for worker_class in WORKER_CLASSES:
        config = {"mode": "requests", "url": None, "method": "POST", "path": "/api/generate", "body": GENERATE_BODY,
                  "tokens_file": str(tokens), "connections": n, "ramp_s": latency,
                  "end_s": latency + plan.s11_window_s, "drain_s": latency + 5}
        with _server(runner, "s11", worker_class, latency * 1000) as server:
            config["url"] = server.url
            result = _load(runner, server, config, timeout=config["end_s"] + config["drain_s"] + 60)
        other = sum(v for k, v in result["statuses"].items() if k != "200")
        _record(runner, f"s11-{worker_class}", f"POST /api/generate, AI {latency} s, {n} clients, {worker_class}",
                result, requests=result["in_window"], duration=result["window_s"],
                errors=(other, sum(result["errors"].values())), latency_ms=result["latency_ms"], connections=n)
        figures[worker_class] = result
        lat = result["latency_ms"]
        print(f"  {'s11-' + worker_class:<14} {result['per_s']:.1f} completions/s in the steady {result['window_s']} s "
              f"(÷ {n / latency:.0f} = {result['per_s'] / (n / latency):.2f}); answers {result['statuses']}, "
              f"socket errors {result['errors'] or 0}, unanswered at the end {result['unfinished']}; "
              f"p50 {(lat['p50'] or 0) / 1000:.2f} s p99 {(lat['p99'] or 0) / 1000:.2f} s"
              + (f"; ≤ {result['peak_db_connections']} PostgreSQL connections" if result["peak_db_connections"] else ""),
              flush=True)


# --- scenario 12: many slow streams -----------------------------------------------------------

def scenario_12(runner, plan: Plan, tokens) -> None:
    stream_s = (plan.s12_tokens - 1) / plan.s12_tokens_per_second
    slots = runner.s.workers * GTHREAD_THREADS
    # Long enough for gthread to work through its queue: a wave of `slots` streams at a time.
    timeout = plan.s12_ramp_s + (stream_s + 1) * (math.ceil(plan.s12_streams / slots) + 2) + 10
    figures = runner.run.concurrency.setdefault("s12", {
        "streams": plan.s12_streams, "tokens": plan.s12_tokens, "tokens_per_second": plan.s12_tokens_per_second,
        "ramp_s": plan.s12_ramp_s, "max_tokens": plan.s12_max_tokens, "stream_s": stream_s})
    log = runner.s.workdir / f"fake-openai-{runner.db.kind}.log"
    with fakeprovider.running(log, tokens_per_second=plan.s12_tokens_per_second,
                              completion_tokens=plan.s12_tokens) as fake:
        run_id = secrets.token_hex(4)

        def config(target: str, url: str, name: str, streams: int = plan.s12_streams, max_tokens: int = 0) -> dict:
            warm = max_tokens == 1  # a warm-up: one-token streams, quick, not measured
            return {"mode": "streams", "target": target, "url": url, "streams": streams,
                    "ramp_s": 0.5 if warm else plan.s12_ramp_s, "timeout_s": 30 if warm else timeout,
                    "tokens_file": str(tokens), "api_key": fake.env["OPENAI_API_KEY"],
                    "prompt_prefix": f"bench-{run_id}-{name}", "max_tokens": max_tokens or plan.s12_max_tokens,
                    "tokens_per_second": plan.s12_tokens_per_second, "first_token_delay": 0.0,
                    "completion_tokens": 1 if warm else plan.s12_tokens, "timings_url": fake.timings_url}

        # The fake's first requests are slow (~100 ms): warm it, then the baseline, with no creditapp.
        aioload.run(config("direct", fake.url, "warm-direct", 40, max_tokens=1), 60)
        figures["direct"], _ = aioload.run(config("direct", fake.url, "direct"), timeout + 60)
        _print_stream_line("s12-direct", figures["direct"])
        for worker_class in WORKER_CLASSES:
            with _server(runner, "s12", worker_class, **fake.env) as server:
                aioload.run(config("app", server.url, f"warm-{worker_class}", 40, max_tokens=1), 60)
                result = _load(runner, server, config("app", server.url, worker_class), timeout=timeout + 60,
                               extra_pids=[fake.pid])
            _record(runner, f"s12-{worker_class}", f"{plan.s12_streams} streams of {stream_s:g} s, {worker_class}",
                    result, requests=result["complete"], duration=result["span_s"],
                    errors=(result["streams"] - result["complete"], 0), latency_ms=result["duration_ms"],
                    connections=plan.s12_streams)
            figures[worker_class] = result
            _print_stream_line(f"s12-{worker_class}", result)


def _print_stream_line(key: str, r: dict) -> None:
    def ms(d):
        return f"p50 {d['p50'] or 0:.1f} p99 {d['p99'] or 0:.1f} max {d['max'] or 0:.1f} ms"
    print(f"  {key:<14} {r['complete']}/{r['streams']} complete {r['outcomes']}, at most {r['max_open']} open; "
          f"per-token delay after the fake sent it {ms(r['delay_vs_sent_ms'])}; after its schedule "
          f"{ms(r['delay_vs_schedule_ms'])}; first token {ms(r['first_token_ms'])}"
          + (f"; charged != usage: {r['charged_not_usage']} of {r['checked_charges']}" if r["target"] == "app" else ""),
          flush=True)


# --- keep-alive -------------------------------------------------------------------------------

def keep_alive(runner, plan: Plan, tokens) -> None:
    """GET /api/credits/balance with wrk, keep-alive on (gunicorn.conf.py's `keepalive = 5`) and off
    (`--keep-alive 0` through GUNICORN_CMD_ARGS, which gunicorn applies over the config file), and a
    probe that counts the answers saying `Connection: close` and the TCP connections it took."""
    balance = Load("GET", "/api/credits/balance", None, tokens)
    connections, per_connection = plan.probe
    figures = runner.run.concurrency.setdefault("keepalive", {"probe_connections": connections,
                                                              "probe_requests_each": per_connection})
    for worker_class in WORKER_CLASSES:
        for mode, env in (("on", {}), ("off", {"GUNICORN_CMD_ARGS": "--keep-alive 0"})):
            key = f"ka-{worker_class}" + ("-off" if mode == "off" else "")
            with _server(runner, "ka" + ("-off" if mode == "off" else ""), worker_class, **env) as server:
                runner.warm_up(server, balance)
                spread = _sampling_connections(server)
                with spread:
                    m = runner.measure(server, key, f"GET /api/credits/balance, keep-alive {mode}, {worker_class}",
                                       balance)
                probe, _ = aioload.run({"mode": "probe", "url": server.url, "method": "GET",
                                        "path": "/api/credits/balance", "tokens_file": str(tokens),
                                        "connections": connections, "requests_per_connection": per_connection}, 120)
            figures[key] = {"worker_class": worker_class, "keepalive": mode, "rps": m.result.rps,
                            "p99_ms": m.result.p99_ms, "errors": m.result.errors,
                            "connections_per_worker": spread.busiest(), **probe}
            print(f"  {key:<14} probe: {probe['requests']} requests ({probe['statuses']}) over "
                  f"{probe['tcp_connections']} TCP connections, {probe['connection_close']} said Connection: close",
                  flush=True)


class _sampling_connections:
    """While a load runs: each worker's share of the established connections, sampled every interval,
    sorted (keep-alive clients stay on the worker that accepted them)."""

    def __init__(self, server, interval: float = 0.5):
        self.server, self.interval, self.samples, self.stop = server, interval, [], threading.Event()
        self.port = int(server.url.rsplit(":", 1)[1])
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.interval):
            counts = procstats.connections_per_process(self.server.worker_pids(), self.port)
            self.samples.append(sorted(counts.values(), reverse=True))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def busiest(self) -> list[int]:
        """The sample with the widest gap between the busiest and the idlest worker (the latest of equals)."""
        return max(reversed(self.samples), key=lambda counts: counts[0] - counts[-1] if counts else -1, default=[])
