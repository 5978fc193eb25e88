"""The scenarios, run against one kind of database: fresh servers, wrk, and what /proc says."""
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import jobs, procstats, profiling, streams, usage, wrk
from .dbsetup import BenchDatabase, open_database
from .servers import Server, gunicorn, server_env
from .tokens import write_tokens
from .wrk import Load

FLOOR = "bench.floor:create_app()"
LOTS_PER_USER = 50  # scenario 7's last part
GENERATE_BODY = '{"prompt": "a lighthouse at dawn, oil on canvas"}'
COMPLETE_BODY = '{"prompt": "Write a haiku about ledgers.", "max_tokens": 16}'
ACCESS_KEYS = 1000  # scenario 10: keys with budgets, one per request in turn
JOBS_LATENCY_MS = 1000  # scenario 8: the AI as slow as scenario 6's, run by workers instead


@dataclass
class Settings:
    smoke: bool
    duration: int  # seconds per measured run
    warmup: int  # seconds of unmeasured load on a fresh server; 0 for none
    threads: int  # wrk threads
    connections: int  # wrk connections (scenario 6 has its own)
    s6_connections: int
    s6_duration: int
    workers: int
    users: int
    scale_rows: int  # ledger rows added for scenario 7's second half
    soak: int  # seconds of the scenario-3 memory run; 0 to skip
    profile_prefix: Path | None  # where --profile writes py-spy's output; None: no profile
    workdir: Path
    jwt_secret: str
    only: frozenset[str] = frozenset()  # scenario keys to run (s1 … s7); empty: all
    limiter_storage: str = "memory://"  # RATELIMIT_STORAGE_URI of the servers
    jobs_workers: int = 2  # scenario 8: `flask jobs worker` processes
    jobs_threads: int = 50  # ... and --threads of each
    # How long scenario 8 waits for the workers to empty the queue. Below CREDIT_HOLD_TTL_SECONDS
    # (600 s by default): a job still queued after that expires instead of running.
    jobs_drain: int = 540

    def wants(self, key: str) -> bool:
        return not self.only or key in self.only


@dataclass
class Measurement:
    key: str
    title: str
    result: wrk.WrkResult
    connections: int
    cpu: dict

    def as_dict(self) -> dict:
        return {"key": self.key, "title": self.title, "connections": self.connections,
                "cpu": self.cpu, **self.result.as_dict()}


@dataclass
class DatabaseRun:
    kind: str
    title: str
    label: str = ""
    measurements: list[Measurement] = field(default_factory=list)
    peak_rss_kib: dict = field(default_factory=dict)  # scenario 3, per worker (VmHWM)
    soak: dict | None = None
    ledger_rows: dict = field(default_factory=dict)
    verify: list[dict] = field(default_factory=list)
    profile: dict | None = None
    round_trips: dict = field(default_factory=dict)
    jobs: dict | None = None  # scenario 8, from the jobs table (bench/jobs.py figures())
    concurrency: dict = field(default_factory=dict)  # s11, s12, keep-alive (bench/streams.py)
    usage: dict = field(default_factory=dict)  # s13 (bench/usage.py)

    def get(self, key: str) -> Measurement | None:
        return next((m for m in self.measurements if m.key == key), None)


class Runner:
    def __init__(self, settings: Settings, database: BenchDatabase, run: DatabaseRun):
        self.s = settings
        self.db = database
        self.run = run

    # --- plumbing ---------------------------------------------------------------------------

    def env(self, latency_ms: int = 0, workers: int | None = None, **extra: str) -> dict:
        return dict(server_env(self.db.url, self.s.jwt_secret, workers=workers or self.s.workers,
                               latency_ms=latency_ms, limiter_storage=self.s.limiter_storage), **extra)

    def server(self, name: str, latency_ms: int = 0, app: str = "wsgi:app", workers: int | None = None,
               **extra_env: str):
        return gunicorn(self.env(latency_ms, workers, **extra_env),
                        self.s.workdir / f"gunicorn-{self.db.kind}-{name}.log", app=app)

    def _backends(self) -> list[int]:
        name = getattr(self.db, "name", None)
        return procstats.postgres_backends(name) if name else []

    def warm_up(self, server: Server, load: Load, connections: int | None = None) -> None:
        if self.s.warmup:
            wrk.run(server.url, load, duration=self.s.warmup,
                    connections=connections or self.s.connections, threads=self.s.threads)

    def measure(self, server: Server, key: str, title: str, load: Load, *,
                connections: int | None = None, duration: int | None = None,
                job_workers: list[int] = ()) -> Measurement:
        connections = connections or self.s.connections
        backends = self._backends()
        before = procstats.snapshot(server.all_pids() + backends + list(job_workers))
        started = time.monotonic()
        result = wrk.run(server.url, load, duration=duration or self.s.duration,
                         connections=connections, threads=self.s.threads)
        wall = time.monotonic() - started
        busy_s, busy = procstats.machine_busy(before)
        cpu = {
            "wall_s": wall,
            "wrk_s": result.wrk_cpu_s,
            "gunicorn_s": procstats.cpu_used(before, server.all_pids()),
            "postgres_s": procstats.cpu_used(before, sorted(set(backends + self._backends()))),
            "jobs_s": procstats.cpu_used(before, list(job_workers)),
            "machine_busy": busy,
        }
        # Anything else on the machine (another job, this script): it skews the numbers.
        cpu["other_s"] = max(0.0, busy_s - cpu["wrk_s"] - cpu["gunicorn_s"] - cpu["postgres_s"] - cpu["jobs_s"])
        measurement = Measurement(key, title, result, connections, cpu)
        self.run.measurements.append(measurement)
        print(f"  {key:<14} {title:<44} {result.rps:9.1f} req/s  p50 {result.p50_ms:7.2f} ms  "
              f"p99 {result.p99_ms:8.2f} ms  errors {result.errors}", flush=True)
        return measurement

    def simple(self, key: str, title: str, load: Load, *, latency_ms: int = 0,
               connections: int | None = None, duration: int | None = None,
               app: str = "wsgi:app") -> Measurement:
        if not self.s.wants(key):
            return None
        with self.server(key, latency_ms, app=app) as server:
            self.warm_up(server, load, connections)
            return self.measure(server, key, title, load, connections=connections, duration=duration)

    # --- the scenarios ----------------------------------------------------------------------

    def main_scenarios(self) -> None:
        ids = self.db.seed_users(self.s.users)
        tokens = write_tokens(self.s.jwt_secret, ids, self.s.workdir / f"tokens-{self.db.kind}.txt")
        one = write_tokens(self.s.jwt_secret, ids[:1], self.s.workdir / f"token-{self.db.kind}-one.txt")
        generate = Load("POST", "/api/generate", GENERATE_BODY, tokens)

        self.db.seed_floor(ids)
        self.simple("s0", "floor: raw two-transaction guard (bench/floor.py)", generate, app=FLOOR)
        self.simple("s1", "control GET /api/bench/control", Load("GET", "/api/bench/control", None, tokens))
        self.simple("s2", "JWT only GET /api/bench/jwt", Load("GET", "/api/bench/jwt", None, tokens))
        self.scenario_3(generate)
        self.scenario_10(ids, generate)
        self.simple("s4", "POST /api/generate, all on one user",
                    Load("POST", "/api/generate", GENERATE_BODY, one))
        self.simple("s5", "POST /api/ai/complete max_tokens 16",
                    Load("POST", "/api/ai/complete", COMPLETE_BODY, tokens))
        self.simple("s6", "POST /api/generate, AI takes 1000 ms", generate, latency_ms=1000,
                    connections=self.s.s6_connections, duration=self.s.s6_duration)
        if self.s.wants("s6"):
            self.simple("s0-s6", "floor, AI takes 1000 ms", generate, latency_ms=1000,
                        connections=self.s.s6_connections, duration=self.s.s6_duration, app=FLOOR)
        self.scenario_8(generate)
        streams.run_scenarios(self, tokens)  # s11, s12, keep-alive
        if self.s.wants("rt"):
            self.round_trips(generate, Load("GET", "/api/credits/balance", None, tokens))
        if self.s.soak and self.s.wants("memory"):
            self.memory_soak(generate)

    def scenario_3(self, generate: Load) -> None:
        if not self.s.wants("s3"):
            return
        with self.server("s3") as server:
            self.warm_up(server, generate)
            self.measure(server, "s3", "POST /api/generate, over all users", generate)
            self.run.peak_rss_kib = {
                pid: procstats.status_kib(pid, "VmHWM") for pid in server.worker_pids()
            }
            if self.s.profile_prefix:
                seconds = self.s.duration if self.s.smoke else max(20, self.s.duration)
                self.run.profile = profiling.profile_worker(
                    server, lambda: wrk.run(server.url, generate, duration=seconds,
                                            connections=self.s.connections, threads=self.s.threads),
                    duration=seconds,
                    output=Path(f"{self.s.profile_prefix}-s3-{self.db.kind}.txt"),
                )

    def scenario_10(self, ids: list[int], generate: Load) -> None:
        """API keys with budgets, and team members with caps: every cap is counted in the hold's
        own statement, so either costs what a login-token request does (s3)."""
        if not (self.s.wants("s10") or self.s.wants("s10-team")):
            return
        secrets, team_id = self.db.seed_access(ids, ACCESS_KEYS)
        keys_file = self.s.workdir / f"keys-{self.db.kind}.txt"
        keys_file.write_text("\n".join(secrets) + "\n")
        self.simple("s10", f"POST /api/generate, {ACCESS_KEYS} API keys with budgets",
                    Load("POST", "/api/generate", GENERATE_BODY, keys_file))
        self.simple("s10-team", "POST /api/generate, team members with caps (X-Team)",
                    generate.with_headers(**{"X-Team": str(team_id)}))

    def scenario_8(self, generate: Load) -> None:
        """Jobs: submits with `Prefer: respond-async` as fast as the API takes them while worker
        processes run the jobs, then the jobs table's figures once the workers have drained it."""
        if not self.s.wants("s8"):
            return
        try:
            with jobs.redis_queue() as queue:
                self._scenario_8(generate.with_headers(Prefer="respond-async"), queue)
        except jobs.NoBroker as exc:
            print(f"  s8: skipped ({exc})", flush=True)

    def _scenario_8(self, submit: Load, queue: dict) -> None:
        workers, threads = self.s.jobs_workers, self.s.jobs_threads
        with self.server("s8", JOBS_LATENCY_MS, **queue) as server:
            with jobs.workers(self.env(JOBS_LATENCY_MS, **queue), workers, threads, self.s.workdir,
                              f"jobs-{self.db.kind}") as pids:
                self.warm_up(server, submit)
                self.measure(server, "s8", "POST /api/generate, Prefer: respond-async", submit, job_workers=pids)
                left = jobs.wait_drained(self.db.engine, self.s.jobs_drain)
            # Read after the workers stopped: those still running when the drain gave up have ended.
            figures = jobs.figures(self.db.engine, workers=workers, threads=threads,
                                   latency_s=JOBS_LATENCY_MS / 1000)
            self.run.jobs = {**figures, "unfinished_after_drain": left}
            rate = figures["completions_per_s"] or 0.0
            print(f"  {'s8 jobs':<14} {figures['jobs']} jobs {figures['statuses']}; {rate:.1f} completions/s "
                  f"(expected {figures['expected_per_s']:.0f}); queue wait p50 {figures['queue_wait_p50_s'] or 0:.2f} s "
                  f"p99 {figures['queue_wait_p99_s'] or 0:.2f} s" + (f"; {left} not drained" if left else ""),
                  flush=True)
            # The workers share the machine's cores with the API: submits alone are the API's own
            # cost, the one to set against s3's. Their jobs stay queued; the database is dropped.
            self.measure(server, "s8-api", "the same, no workers running", submit)

    def round_trips(self, generate: Load, balance: Load) -> None:
        """Round trips per request, counted by PostgreSQL: one worker, one thread, after a
        warm-up, `n` requests one after another, and the statements the server logged."""
        log = self.db.statement_log()
        if log is None:
            return
        if not log.readable():
            print(f"  round trips: not counted (cannot read PostgreSQL's log at {log.path})", flush=True)
            return
        n = 20
        with log:
            for key, title, load, app in (
                ("rt-generate", "POST /api/generate", generate, "wsgi:app"),
                ("rt-balance", "GET /api/credits/balance", balance, "wsgi:app"),
                ("rt-floor", "floor POST /api/generate", generate, FLOOR),
            ):
                with self.server(key, app=app, workers=1) as server:
                    for _ in range(5):  # warm-up: connections, prepared statements, caches
                        load.send_one(server.url, 0)
                    mark = log.mark()
                    for i in range(n):
                        load.send_one(server.url, i + 1)
                    time.sleep(0.5)  # the server's log is written asynchronously
                    statements = log.statements_since(mark)
                self.run.round_trips[key] = {"title": title, "per_request": len(statements) / n,
                                             "sample": statements[:len(statements) // n]}
                print(f"  {key:<14} {title:<44} {len(statements) / n:5.1f} round trips per request",
                      flush=True)

    def memory_soak(self, generate: Load) -> None:
        """Workers' RSS at the start and end of a long scenario-3 run, sampled as it goes."""
        print(f"  memory: {self.s.soak} s of scenario 3 ...", flush=True)
        with self.server("soak") as server:
            self.warm_up(server, generate)
            workers = server.worker_pids()
            samples = []
            stop = threading.Event()

            def sample():
                started = time.monotonic()
                while True:
                    samples.append({"t": round(time.monotonic() - started, 1),
                                    "rss_kib": {p: procstats.status_kib(p, "VmRSS") for p in workers}})
                    if stop.wait(5):
                        return

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                result = wrk.run(server.url, generate, duration=self.s.soak,
                                 connections=self.s.connections, threads=self.s.threads)
            finally:
                stop.set()
                sampler.join()
            end = {p: procstats.status_kib(p, "VmRSS") for p in workers}
            self.run.soak = {
                "duration_s": self.s.soak, "rps": result.rps, "errors": result.errors,
                "start_rss_kib": samples[0]["rss_kib"], "end_rss_kib": end, "samples": samples,
            }

    def scale(self) -> None:
        """Scenario 7, on a database of its own so that it starts from a known ledger size."""
        if not self.s.wants("s7"):
            return
        database = open_database(self.db.kind)
        try:
            Runner(self.s, database, self.run)._scale()
        finally:
            database.drop()

    def _scale(self) -> None:
        ids = self.db.seed_users(self.s.users, credit_types=("generation_credits",))
        tokens = write_tokens(self.s.jwt_secret, ids, self.s.workdir / f"tokens-{self.db.kind}-scale.txt")
        balance = Load("GET", "/api/credits/balance", None, tokens)
        history = Load("GET", "/api/credits/transactions?limit=20", None, tokens)
        generate = Load("POST", "/api/generate", GENERATE_BODY, tokens)
        with self.server("s7") as server:
            self.warm_up(server, balance)  # reads only, so the ledger keeps its starting size
            for size in ("small", "big"):
                if size == "big":
                    per_user = self.s.scale_rows // self.s.users
                    print(f"  seeding {per_user * self.s.users:,} ledger rows ...", flush=True)
                    started = time.monotonic()
                    self.db.seed_ledger(per_user)
                    self.run.ledger_rows["seed_seconds"] = time.monotonic() - started
                rows = self.db.ledger_rows()
                self.run.ledger_rows[size] = rows
                at = f"@ {rows:,} rows"
                self.measure(server, f"s7-balance-{size}", f"GET /api/credits/balance {at}", balance)
                self.measure(server, f"s7-history-{size}", f"GET .../transactions?limit=20 {at}", history)
                self.measure(server, f"s7-generate-{size}", f"POST /api/generate {at}", generate)
            # A user with 50 active lots must pay no more per request than a user with one.
            self.db.add_lots(LOTS_PER_USER - 1)
            self.measure(server, "s7-balance-lots", f"GET /api/credits/balance, {LOTS_PER_USER} lots each", balance)
            self.measure(server, "s7-generate-lots", f"POST /api/generate, {LOTS_PER_USER} lots each", generate)
        self.run.verify.append(self._verify(self.db, "scenario 7 database"))

    def _verify(self, database: BenchDatabase, what: str) -> dict:
        clean, output = database.verify()
        print(f"  verify ({what}): {output}", flush=True)
        return {"database": what, "clean": clean, "output": output}


def run_database(kind: str, settings: Settings) -> DatabaseRun:
    """Every scenario against fresh databases of `kind`; raises dbsetup.Unavailable if none."""
    database = open_database(kind)
    run = DatabaseRun(kind=kind, title=database.title, label=database.label)
    try:
        print(f"\n{database.title}: {database.label}", flush=True)
        runner = Runner(settings, database, run)
        runner.main_scenarios()
        run.verify.append(runner._verify(database, "main database"))
        runner.scale()
        usage.run(runner)  # s13, on a database of its own
    finally:
        database.drop()
    return run
