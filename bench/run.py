"""creditapp's benchmark suite. Run it as `bench/run` (see --help).

For each database (SQLite, PostgreSQL): fresh throw-away databases, 1000 seeded users, real
gunicorn servers started per scenario, wrk as the load, one table of results, the ratios against
their targets, memory and CPU readings, and `flask credits verify` at the end. The results also
go to bench/results/<timestamp>.json.
"""
import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make `bench` and `creditapp` importable

from bench import report  # noqa: E402
from bench.dbsetup import Unavailable  # noqa: E402
from bench.scenarios import Settings, run_database  # noqa: E402
from bench.servers import PAID_RATE_LIMIT, limiter_storage  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="about 1 s per scenario, 10 connections, 10k scale rows, no memory run")
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both",
                        help="which databases to benchmark (default both)")
    parser.add_argument("--duration", type=int, default=10, metavar="SECONDS",
                        help="seconds per measured run (default 10; scenario 6 never less than 10)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=None,
                        help="wrk connections (default 50; 10 with --smoke); scenario 6 always "
                             "uses 200 (10 with --smoke)")
    parser.add_argument("--profile", action="store_true",
                        help="also record one worker with py-spy during an extra scenario-3 run "
                             "(20 s; needs .venv/bin/pip install py-spy)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenarios to run, e.g. s0,s3,rt (s0…s13, rt for round trips, memory, "
                             "keepalive); default all")
    parser.add_argument("--jobs-workers", type=int, default=2, metavar="N",
                        help="scenario 8: `flask jobs worker` processes (default 2)")
    parser.add_argument("--jobs-threads", type=int, default=50, metavar="N",
                        help="scenario 8: threads of each worker process (default 50)")
    args = parser.parse_args(argv)
    if args.duration < 1:
        parser.error("--duration must be at least 1")
    if args.jobs_workers < 1 or args.jobs_threads < 1:
        parser.error("--jobs-workers and --jobs-threads must be at least 1")
    return args


def settings_from(args, workdir: Path, stamp: str) -> Settings:
    smoke = args.smoke
    return Settings(
        smoke=smoke,
        duration=1 if smoke else args.duration,
        warmup=0 if smoke else 2,
        threads=args.threads,
        connections=args.connections or (10 if smoke else 50),
        s6_connections=10 if smoke else 200,
        # Each connection waits 1 s per request: a few seconds are needed to see any at all.
        s6_duration=3 if smoke else max(10, args.duration),
        workers=4,
        users=1000,
        scale_rows=10_000 if smoke else 1_000_000,
        soak=0 if smoke else 60,
        profile_prefix=RESULTS / f"{stamp}-profile" if args.profile else None,
        only=frozenset(name.strip() for name in args.only.split(",") if name.strip()),
        workdir=workdir,
        jwt_secret=secrets.token_hex(32),
        limiter_storage=limiter_storage(),
        jobs_workers=args.jobs_workers,
        jobs_threads=args.jobs_threads,
        jobs_drain=60 if smoke else 540,
    )


def _terminate(signum, _frame):
    # SIGTERM and SIGHUP unwind like Ctrl-C, so every server is stopped and database dropped.
    raise SystemExit(128 + signum)


def git_describe() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed; run bench/run, which installs it", file=sys.stderr)
        return 3
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    started_at = datetime.now()
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="creditapp_bench_"))
    mode = "smoke" if args.smoke else "full"
    stamp = f"{started_at:%Y%m%d-%H%M%S}-{mode}"
    if args.profile:
        RESULTS.mkdir(parents=True, exist_ok=True)
    settings = settings_from(args, workdir, stamp)
    print(f"creditapp benchmark ({mode}), commit {git_describe()}, {os.cpu_count()} cores; "
          f"logs in {workdir}", flush=True)
    print(f"servers: gunicorn -c gunicorn.conf.py wsgi:app, CREDITAPP_ENV=development, "
          f"PAID_RATE_LIMIT={PAID_RATE_LIMIT!r} (counted by the hold's own call; no run reaches it), "
          f"RATELIMIT_STORAGE_URI={settings.limiter_storage} (the per-IP login limits); "
          f"tokens carry a session id like /api/auth/login's", flush=True)

    runs, skipped = [], {}
    try:
        for kind in kinds:
            try:
                runs.append(run_database(kind, settings))
            except Unavailable as exc:
                skipped[kind] = str(exc)
                print(f"\n{kind}: skipped: {exc}", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped and databases dropped", file=sys.stderr)
        return 130

    for run in runs:
        report.print_database(run, settings, settings.smoke)
    for kind, reason in skipped.items():
        print(f"\n=== {kind}: skipped: {reason} ===")
    wall = time.monotonic() - started
    print(f"\nwall time: {wall:.0f} s")

    path = RESULTS / f"{stamp}.json"
    meta = {
        "started_at": started_at.isoformat(timespec="seconds"), "mode": mode,
        "commit": git_describe(), "wall_s": wall, "cores": os.cpu_count(),
        "settings": {k: v for k, v in vars(settings).items() if k != "jwt_secret"},
    }
    report.write_json(path, meta, runs, skipped)
    print(f"results: {path.relative_to(ROOT)}")

    if skipped and os.environ.get("CREDITAPP_REQUIRE_POSTGRES"):
        # As in the tests: where PostgreSQL is required, its absence is a failure.
        print("PostgreSQL is required here (CREDITAPP_REQUIRE_POSTGRES) but was skipped",
              file=sys.stderr)
        return 1
    if not all(v["clean"] for run in runs for v in run.verify):
        print(f"ledger verify FAILED; server logs kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
