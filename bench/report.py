"""The printed tables, the ratios against their targets, and the JSON file."""
import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path

from .scenarios import DatabaseRun

HEADER = f"{'scenario':<58} {'requests/s':>11} {'p50 ms':>9} {'p99 ms':>9} {'errors':>7}"


@dataclass
class Ratio:
    name: str
    value: float | None
    target: str  # e.g. ">= 0.15"; "" for none
    unit: str = ""

    def passed(self) -> bool | None:
        if self.value is None or not self.target:
            return None
        op, bound = self.target.split()
        compare = {">=": operator.ge, "<=": operator.le, "<": operator.lt, ">": operator.gt}[op]
        return compare(self.value, float(bound))

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "target": self.target, "passed": self.passed()}


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(run: DatabaseRun) -> list[Ratio]:
    def rps(key):
        m = run.get(key)
        return m.result.rps if m else None

    def p50(key):
        m = run.get(key)
        return m.result.p50_ms if m else None

    def ok_per_s(key):
        m = run.get(key)
        return m.result.ok_per_s if m else None

    s6, floor_s6 = run.get("s6"), run.get("s0-s6")
    jobs = run.jobs or {}
    return [
        Ratio("s3/s0 generate vs the raw floor, requests/s", _div(rps("s3"), rps("s0")), ">= 0.8"),
        Ratio("s4/s0 one user vs the raw floor", _div(rps("s4"), rps("s0")), ""),
        Ratio("s5/s0 ai/complete vs the raw floor", _div(rps("s5"), rps("s0")), ""),
        Ratio("s6/s0-s6 AI 1000 ms vs the floor at 1000 ms, ok/s",
              _div(s6.result.ok_per_s if s6 else None, floor_s6.result.ok_per_s if floor_s6 else None), ""),
        *[Ratio(f"round trips per request, {trips['title']}", trips["per_request"], target)
          for key, target in (("rt-generate", "<= 3"), ("rt-balance", "<= 2"), ("rt-floor", ""))
          if (trips := run.round_trips.get(key))],
        Ratio("s3/s1 requests/s (generate vs control)", _div(rps("s3"), rps("s1")), ">= 0.15"),
        Ratio("s4/s3 requests/s (one user vs all users)", _div(rps("s4"), rps("s3")), ">= 0.8"),
        Ratio("s10/s3 requests/s (API keys with budgets vs login tokens)", _div(rps("s10"), rps("s3")), ">= 0.9"),
        # Every member spends from the one team wallet: the same one-balance contention as s4.
        Ratio("s10-team/s4 requests/s (team members with caps vs one user)", _div(rps("s10-team"), rps("s4")),
              ">= 0.9"),
        Ratio("s10-team/s3 requests/s (team members with caps vs all users)", _div(rps("s10-team"), rps("s3")), ""),
        Ratio("s6 completed generations/s", s6.result.ok_per_s if s6 else None, ">= 180", "/s"),
        Ratio("s6 p99", s6.result.p99_ms / 1000 if s6 else None, "< 1.5", " s"),
        Ratio("s7 balance p50, big ledger / small ledger",
              _div(p50("s7-balance-big"), p50("s7-balance-small")), "<= 1.25"),
        Ratio("s7 generate p50, big ledger / small ledger",
              _div(p50("s7-generate-big"), p50("s7-generate-small")), "<= 1.25"),
        Ratio("s7 generate p50, 50 lots / 1 lot (big ledger)",
              _div(p50("s7-generate-lots"), p50("s7-generate-big")), "<= 1.25"),
        Ratio("s7 balance p50, 50 lots / 1 lot (big ledger)",
              _div(p50("s7-balance-lots"), p50("s7-balance-big")), "<= 1.25"),
        Ratio("s7 transactions p50, big ledger / small ledger",
              _div(p50("s7-history-big"), p50("s7-history-small")), ""),
        # A submit takes the same hold as the synchronous route but calls no AI: it must not cost more.
        Ratio("s8-api/s3 async submits vs sync generate, ok/s", _div(ok_per_s("s8-api"), ok_per_s("s3")),
              ">= 1"),
        Ratio("s8/s3 the same, workers running, ok/s", _div(ok_per_s("s8"), ok_per_s("s3")), ""),
        Ratio("s8 completions/s / (workers x threads / latency)",
              _div(jobs.get("completions_per_s"), jobs.get("expected_per_s")), ">= 0.9"),
        Ratio("s8 queue wait p50", jobs.get("queue_wait_p50_s"), "", " s"),
        Ratio("s8 queue wait p99", jobs.get("queue_wait_p99_s"), "", " s"),
    ]


def _mib(kib) -> str:
    return f"{kib / 1024:.1f}" if kib is not None else "?"


def print_database(run: DatabaseRun, settings, smoke: bool) -> None:
    print(f"\n=== {run.title}: {settings.users} users, {settings.workers} gunicorn workers, "
          f"{settings.duration} s per scenario, wrk -t{settings.threads} -c{settings.connections} "
          f"(s6: -c{settings.s6_connections}, {settings.s6_duration} s) ===")
    print(HEADER)
    for m in run.measurements:
        r = m.result
        print(f"{m.key + ' ' + m.title:<58} {r.rps:>11.1f} {r.p50_ms:>9.2f} {r.p99_ms:>9.2f} "
              f"{r.errors:>7}")

    print(f"\n{'ratio':<50} {'value':>10}  {'target':<9} result")
    for ratio in ratios(run):
        value = f"{ratio.value:.3g}{ratio.unit}" if ratio.value is not None else "n/a"
        verdict = {True: "ok", False: "MISS", None: "-"}[ratio.passed()]
        if smoke and ratio.target:
            verdict = "- (smoke: not judged)"
        target = ratio.target + ratio.unit if ratio.target else ""
        print(f"{ratio.name:<50} {value:>10}  {target:<9} {verdict}")

    rows = run.ledger_rows
    if rows:
        seeded = f", seeded in {rows['seed_seconds']:.1f} s" if "seed_seconds" in rows else ""
        print(f"\ns7 ledger rows: small {rows.get('small', 0):,}, big {rows.get('big', 0):,}{seeded}")

    if run.jobs:
        print(_jobs_line(run.jobs))

    if run.peak_rss_kib:
        peaks = ", ".join(_mib(v) for v in run.peak_rss_kib.values())
        print(f"memory: s3 peak RSS (VmHWM) per worker: {peaks} MiB")
    if run.soak:
        start, end = run.soak["start_rss_kib"], run.soak["end_rss_kib"]

        def total(rss):
            return sum(v or 0 for v in rss.values())

        growth = total(end) - total(start)
        per_worker = ", ".join(f"{_mib(start[p])} -> {_mib(end.get(p))}" for p in start)
        print(f"memory: {run.soak['duration_s']} s of s3 ({run.soak['rps']:.0f} req/s): worker RSS "
              f"{per_worker} MiB; growth {growth / 1024:+.1f} MiB in total")
        samples = run.soak["samples"]
        if len(samples) > 2:
            # The first seconds fill thread pools and caches; what follows is the trend to watch.
            after = samples[1]
            steady = total(end) - total(after["rss_kib"])
            minutes = (run.soak["duration_s"] - after["t"]) / 60
            print(f"        of which {(growth - steady) / 1024:+.1f} MiB in the first {after['t']:.0f} s, "
                  f"then {steady / 1024:+.1f} MiB ({steady / 1024 / minutes:+.1f} MiB a minute)")

    print(f"\n{'CPU seconds during each run':<30} {'wall':>6} {'wrk':>6} {'gunicorn':>9} "
          f"{'postgres':>9} {'jobs':>6} {'other':>6} {'machine busy':>13}")
    for m in run.measurements:
        c = m.cpu
        print(f"{m.key:<30} {c['wall_s']:>6.1f} {c['wrk_s']:>6.2f} {c['gunicorn_s']:>9.2f} "
              f"{c['postgres_s']:>9.2f} {c.get('jobs_s', 0):>6.2f} {c['other_s']:>6.2f} {c['machine_busy']:>12.0%}")
    wrk_s = sum(m.cpu["wrk_s"] for m in run.measurements)
    served_s = sum(m.cpu["gunicorn_s"] + m.cpu["postgres_s"] + m.cpu.get("jobs_s", 0) for m in run.measurements)
    other_s = sum(m.cpu["other_s"] for m in run.measurements)
    wall_s = sum(m.cpu["wall_s"] for m in run.measurements)
    print(f"load generator: wrk used {wrk_s:.1f} CPU s against {served_s:.1f} s for the servers "
          f"({wrk_s / served_s if served_s else 0:.1%}); other processes used {other_s:.1f} s "
          f"({other_s / wall_s if wall_s else 0:.2f} cores on average)")
    if wall_s and other_s / wall_s > 0.25:
        print(f"WARNING: other processes kept {other_s / wall_s:.2f} of {os.cpu_count()} cores busy "
              "during the runs; the numbers above are lower than this machine can do")

    if run.profile and "top_self" in run.profile:
        samples = run.profile["samples"] or 1
        print(f"\nprofile (py-spy --gil: CPU time) of worker {run.profile['worker']} under s3 "
              f"({samples} samples, {run.profile['file']}); top functions by own time:")
        for frame, n in run.profile["top_self"][:12]:
            print(f"  {n / samples:6.1%}  {frame}")
        print("top functions including what they call (those on over 90% of the samples left out):")
        for frame, n in run.profile["top_total"][:15]:
            print(f"  {n / samples:6.1%}  {frame}")

    for v in run.verify:
        print(f"verify {v['database']}: {'clean' if v['clean'] else 'FAILED'}: {v['output']}")


def _jobs_line(jobs: dict) -> str:
    def seconds(value):
        return f"{value:.2f} s" if value is not None else "n/a"

    rate = jobs["completions_per_s"]
    line = (f"s8 jobs: {jobs['jobs']} submitted, {jobs['statuses']}; {jobs['workers']} workers x "
            f"{jobs['threads']} threads, AI {jobs['latency_s']:g} s: "
            f"{f'{rate:.1f}' if rate is not None else 'n/a'} completions/s over {jobs['drain_span_s']:.1f} s "
            f"(expected {jobs['expected_per_s']:.0f}/s); queue wait p50 {seconds(jobs['queue_wait_p50_s'])}, "
            f"p99 {seconds(jobs['queue_wait_p99_s'])}, max {seconds(jobs['queue_wait_max_s'])}")
    if jobs.get("unfinished_after_drain"):
        line += f"; {jobs['unfinished_after_drain']} still unfinished when the drain gave up"
    return line


def write_json(path: Path, meta: dict, runs: list[DatabaseRun], skipped: dict) -> None:
    data = {
        **meta,
        "skipped": skipped,
        "databases": [
            {
                "kind": run.kind, "title": run.title, "url": run.label,
                "scenarios": [m.as_dict() for m in run.measurements],
                "ratios": [r.as_dict() for r in ratios(run)],
                "ledger_rows": run.ledger_rows,
                "memory": {"s3_peak_rss_kib": run.peak_rss_kib, "soak": run.soak},
                "profile": run.profile,
                "round_trips": run.round_trips,
                "jobs": run.jobs,
                "verify": run.verify,
            }
            for run in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
