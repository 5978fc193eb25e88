"""The printed tables, the ratios against their targets, and the JSON file."""
import json
import operator
import os
from dataclasses import dataclass
from pathlib import Path

from .scenarios import DatabaseRun
from .streams import WORKER_CLASSES

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

    def worker_cpu_ms(key):
        """The servers' (gunicorn's) CPU per answered request, in ms."""
        m = run.get(key)
        return 1000 * m.cpu["gunicorn_s"] / m.result.requests if m and m.result.requests else None

    s6, floor_s6 = run.get("s6"), run.get("s0-s6")
    jobs = run.jobs or {}
    return [
        Ratio("s3/s0 generate vs the raw floor, requests/s", _div(rps("s3"), rps("s0")), ">= 0.8"),
        Ratio("s4/s0 one user vs the raw floor", _div(rps("s4"), rps("s0")), ""),
        Ratio("s5/s0 ai/complete vs the raw floor", _div(rps("s5"), rps("s0")), ">= 0.7"),
        Ratio("s3 worker CPU per request, ms", worker_cpu_ms("s3"), ""),
        Ratio("s0 worker CPU per request (the floor), ms", worker_cpu_ms("s0"), ""),
        Ratio("s3/s0 worker CPU per request", _div(worker_cpu_ms("s3"), worker_cpu_ms("s0")), "<= 1.5"),
        Ratio("s6/s0-s6 AI 1000 ms vs the floor at 1000 ms, ok/s",
              _div(s6.result.ok_per_s if s6 else None, floor_s6.result.ok_per_s if floor_s6 else None), ""),
        *[Ratio(f"round trips per request, {trips['title']}", trips["per_request"], target)
          for key, target in (("rt-generate", "<= 2"), ("rt-balance", "<= 1"), ("rt-floor", ""))
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
        *_concurrency_ratios(run.concurrency),
        *[Ratio(f"s13 usage report, a year by day, group_by={name}, p50", r["p50_s"], f"< {run.usage['target_s']}",
                " s") for name in ("feature", "user") if (r := run.usage.get(name))],
        *[Ratio(f"s13 usage report by {name}: totals differing from the ledger", 0 if r["exact"] else 1, "<= 0")
          for name in ("feature", "user") if (r := run.usage.get(name))],
    ]


def _concurrency_ratios(c: dict) -> list[Ratio]:
    """s11 and s12 are judged under gevent; gthread's figures stand next to them, as they come."""
    s11, s12, ka, out = c.get("s11", {}), c.get("s12", {}), c.get("keepalive", {}), []
    for wc in WORKER_CLASSES:
        if r := s11.get(wc):
            out.append(Ratio(f"s11 completions/s / ({s11['connections']} / {s11['latency_s']} s), {wc}",
                             _div(r["per_s"], s11["expected_per_s"]), ">= 0.9" if wc == "gevent" else ""))
    for wc in WORKER_CLASSES:
        if r := s12.get(wc):
            gevent = wc == "gevent"
            out += [Ratio(f"s12 streams complete (done) / started, {wc}", _div(r["complete"], r["streams"]),
                          ">= 1" if gevent else ""),
                    Ratio(f"s12 p99 per-token delay added by creditapp, {wc}", r["delay_vs_sent_ms"]["p99"],
                          "< 100" if gevent else "", " ms"),
                    Ratio(f"s12 streams with charged != usage, {wc}", r["charged_not_usage"], "<= 0")]
    for wc in WORKER_CLASSES:
        on, off = ka.get(f"ka-{wc}"), ka.get(f"ka-{wc}-off")
        if on:
            out.append(Ratio(f"keep-alive on: Connection: close answers, {wc}", on["connection_close"], "<= 0"))
        if on and off:
            out.append(Ratio(f"keep-alive on / off requests/s, {wc}", _div(on["rps"], off["rps"]), ""))
    return out


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
        if ratio.value is None:
            value = "n/a"
        else:  # 1593 ms, not 1.59e+03 ms
            value = (f"{ratio.value:.3g}" if abs(ratio.value) < 1000 else f"{ratio.value:.0f}") + ratio.unit
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
    if run.usage:
        u = run.usage
        print(f"s13: {u['ledger_rows']:,} ledger rows, {u['rollup_rows']:,} rollup rows, seeded in {u['seed_s']:.1f} s")
    _print_concurrency(run.concurrency)

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
    print("(wrk: the load generator, bench/aioload.py's for s11 and s12; jobs: s8's workers, s12's fake AI)")
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


def _table(title: str, columns: list[tuple[str, dict]], rows: list[tuple[str, object]]) -> None:
    columns = [(name, r) for name, r in columns if r]
    if not columns:
        return
    print(f"\n{title}")
    print(f"{'':<50}" + "".join(f"{name:>25}" for name, _ in columns))
    for label, cell in rows:
        print(f"{label:<50}" + "".join(f"{cell(r):>25}" for _, r in columns))


def _per_worker(r: dict) -> str:
    return "+".join(map(str, r.get("connections_per_worker") or ())) or "-"


def _ms(d: dict, *keys: str, scale: float = 1.0) -> str:
    return " / ".join("n/a" if d.get(k) is None else f"{d[k] / scale:.1f}" for k in keys)


def _print_concurrency(c: dict) -> None:
    if s11 := c.get("s11"):
        _table(f"s11: {s11['connections']} clients, POST /api/generate, AI {s11['latency_s']} s: target >= 0.9 x "
               f"{s11['expected_per_s']:.0f}/s under gevent (gthread's cap: workers x threads / latency = "
               f"{s11['gthread_cap_per_s']:.0f}/s)",
               [(wc, s11.get(wc)) for wc in WORKER_CLASSES], [
                   ("completions/s in the steady window", lambda r: f"{r['per_s']:.1f} in {r['window_s']} s"),
                   (f"  / {s11['expected_per_s']:.0f}", lambda r: f"{r['per_s'] / s11['expected_per_s']:.3f}"),
                   ("answers by status", lambda r: " ".join(f"{k}:{v}" for k, v in r["statuses"].items()) or "none"),
                   ("socket errors", lambda r: str(sum(r["errors"].values()))),
                   ("no answer when the run ended (+ drain)", lambda r: str(r["unfinished"])),
                   ("latency p50 / p99 / max s", lambda r: _ms(r["latency_ms"], "p50", "p99", "max", scale=1000)),
                   ("most PostgreSQL connections", lambda r: str(r["peak_db_connections"] or "-")),
                   ("connections per worker, most uneven sample", _per_worker),
                   ("CPU s: gunicorn / load generator", lambda r: f"{r['cpu']['gunicorn_s']:.1f} / {r['cpu']['wrk_s']:.1f}"),
               ])
    if s12 := c.get("s12"):
        _table(f"s12: {s12['streams']} streams of {s12['tokens']} tokens at {s12['tokens_per_second']:g}/s "
               f"({s12['stream_s']:g} s), started over {s12['ramp_s']:g} s: targets under gevent: all complete, "
               f"p99 delay per token after the fake sent it < 100 ms, charged = usage",
               [("direct to the fake", s12.get("direct"))] + [(wc, s12.get(wc)) for wc in WORKER_CLASSES], [
                   ("complete (done, every token) / started", lambda r: f"{r['complete']} / {r['streams']}"),
                   ("outcomes", lambda r: " ".join(f"{k}:{v}" for k, v in r["outcomes"].items())),
                   ("charged != usage / streams done", lambda r: f"{r['charged_not_usage']} / {r['checked_charges']}"
                    if r["target"] == "app" else "-"),
                   ("open at once: most / all for s", lambda r: f"{r['max_open']} / {r['all_open_s']:.1f}"),
                   ("token delay after the fake sent it p50/p99/max ms",
                    lambda r: _ms(r["delay_vs_sent_ms"], "p50", "p99", "max")),
                   ("token delay after the fake's schedule p50/p99 ms",
                    lambda r: _ms(r["delay_vs_schedule_ms"], "p50", "p99")),
                   ("  the fake's own lateness p50 / p99 ms", lambda r: _ms(r["fake_late_ms"], "p50", "p99")),
                   ("client send to request at the fake p50/p99 ms",
                    lambda r: _ms(r["before_provider_ms"], "p50", "p99")),
                   ("first token p50 / p99 ms", lambda r: _ms(r["first_token_ms"], "p50", "p99")),
                   ("stream p50 / p99 s", lambda r: _ms(r["duration_ms"], "p50", "p99", scale=1000)),
                   ("pings", lambda r: str(r["pings"])),
                   ("connections per worker, most uneven sample", _per_worker),
               ])
    if ka := c.get("keepalive"):
        each = f"{ka['probe_connections']} connections x {ka['probe_requests_each']} requests"
        _table(f"keep-alive: GET /api/credits/balance, wrk requests/s; probe: {each} one after another",
               [(f"{r['worker_class']} {r['keepalive']}", r) for k, r in ka.items() if isinstance(r, dict)], [
                   ("requests/s (wrk)", lambda r: f"{r['rps']:.1f}"),
                   ("p99 ms (wrk)", lambda r: f"{r['p99_ms']:.1f}"),
                   ("errors (wrk)", lambda r: str(r["errors"])),
                   ("connections per worker, most uneven sample", _per_worker),
                   ("probe: answers saying Connection: close", lambda r: f"{r['connection_close']} / {r['requests']}"),
                   ("probe: TCP connections / requests reusing one", lambda r: f"{r['tcp_connections']} / {r['reused']}"),
               ])


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
                "concurrency": run.concurrency,
                "usage": run.usage,
                "verify": run.verify,
            }
            for run in runs
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
