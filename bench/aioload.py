"""The load generator of scenarios 11 and 12 and the keep-alive probe: one asyncio process that
holds thousands of connections (bench/http1.py), run by `run(config)` as wrk is run by bench/wrk.py.

Modes (config["mode"]):
  requests  a closed loop: `connections` clients, client j sending its first request at
            j * ramp_s / connections and the next as soon as an answer comes, until end_s; then up
            to drain_s for the answers still due. The rate is the 200 answers that came in the
            steady window [ramp_s, end_s] over its length: the staggered start makes answers arrive
            evenly rather than in waves of `connections` every latency.
  streams   `streams` streamed completions, stream k starting at k * ramp_s / streams, each read
            event by event with the time each token arrived; then the fake provider's notes of
            when each request reached it and when it sent each chunk (bench/fakeprovider.py).
            `target` app: POST /api/ai/complete through creditapp; direct: the fake's own
            /v1/chat/completions, the same streams with no creditapp in between (the baseline).
  probe     `connections` clients sending `requests_per_connection` requests one after another:
            how many answers said `Connection: close` and how many TCP connections it took.
"""
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from urllib.parse import quote, urlsplit

from bench.http1 import Connection, ServerClosed

MARKER = "BENCH_RESULT "


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (sorted here); None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


def spread(values: list[float], scale: float = 1000.0) -> dict:
    """p50, p90, p99 and max of seconds, in milliseconds (scale)."""
    def ms(v):
        return None if v is None else v * scale
    return {"n": len(values), **{f"p{p}": ms(percentile(values, p)) for p in (50, 90, 99)},
            "max": ms(max(values) if values else None)}


def _target(cfg) -> tuple[str, int, list[str]]:
    url = urlsplit(cfg["url"])
    tokens = Path(cfg["tokens_file"]).read_text().split() if cfg.get("tokens_file") else []
    return url.hostname, url.port, tokens


def _headers(cfg, tokens: list[str], index: int) -> dict:
    headers = {"Content-Type": "application/json", **cfg.get("headers", {})}
    if tokens:
        headers["Authorization"] = f"Bearer {tokens[index % len(tokens)]}"
    return headers


async def closed_loop(cfg) -> dict:
    host, port, tokens = _target(cfg)
    n, ramp, end, drain = cfg["connections"], cfg["ramp_s"], cfg["end_s"], cfg["drain_s"]
    body = cfg["body"].encode() if cfg.get("body") is not None else None
    statuses, errors, samples = Counter(), Counter(), []
    answered = []  # (sent, finished) of each 200, seconds from the start
    start = time.monotonic()

    async def client(j: int) -> None:
        await asyncio.sleep(j * ramp / n)
        connection, headers = Connection(host, port), _headers(cfg, tokens, j)
        try:
            while (sent := time.monotonic()) - start < end:
                try:
                    answer = await connection.request(cfg["method"], cfg["path"], headers, body)
                except (ServerClosed, OSError) as exc:
                    errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.1)  # a refused connection must not spin
                    continue
                statuses[answer.status] += 1
                if answer.status == 200:
                    answered.append((sent - start, time.monotonic() - start))
                elif len(samples) < 3:
                    samples.append(f"{answer.status} {answer.body[:300].decode(errors='replace')}")
        finally:
            connection.close()

    tasks = [asyncio.create_task(client(j)) for j in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=end + drain)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    in_window = [(s, f) for s, f in answered if ramp <= f <= end]
    window = end - ramp
    return {"connections": n, "window_s": window, "in_window": len(in_window),
            "per_s": len(in_window) / window if window > 0 else None, "answered": sum(statuses.values()),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "errors": dict(errors),
            "unfinished": len(pending), "error_samples": samples, "wall_s": time.monotonic() - start,
            "latency_ms": spread([f - s for s, f in in_window])}


async def streams(cfg) -> dict:
    host, port, tokens = _target(cfg)
    n, ramp, direct = cfg["streams"], cfg["ramp_s"], cfg["target"] == "direct"
    path = urlsplit(cfg["url"]).path.rstrip("/") + ("/chat/completions" if direct else "/api/ai/complete")
    records = [{"k": k, "prompt": f"{cfg['prompt_prefix']} {k} write about ledgers", "tokens": [], "pings": 0,
                "last": None, "usage": None, "error": None} for k in range(n)]
    start = time.monotonic()

    async def stream(rec: dict) -> None:
        await asyncio.sleep(rec["k"] * ramp / n)
        if direct:
            body = {"model": "fake-chat", "messages": [{"role": "user", "content": rec["prompt"]}],
                    "max_tokens": cfg["max_tokens"], "stream": True, "stream_options": {"include_usage": True}}
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {cfg['api_key']}"}
        else:
            body = {"prompt": rec["prompt"], "max_tokens": cfg["max_tokens"], "stream": True}
            headers = _headers(cfg, tokens, rec["k"])
        buffer = bytearray()

        def on_data(data: bytes, at: float) -> None:
            buffer.extend(data)
            while (cut := buffer.find(b"\n\n")) >= 0:
                event = bytes(buffer[:cut])
                del buffer[:cut + 2]
                _event(rec, event, at, direct)

        connection = Connection(host, port)
        rec["sent"] = time.monotonic()
        try:
            answer = await connection.request("POST", path, headers, json.dumps(body).encode(), on_data)
            rec["status"] = answer.status
            if answer.status != 200:
                rec["error"] = f"status {answer.status}: {bytes(buffer[:300]).decode(errors='replace')}"
        except (ServerClosed, OSError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()
            rec["finished"] = time.monotonic()

    tasks = [asyncio.create_task(stream(rec)) for rec in records]
    _, pending = await asyncio.wait(tasks, timeout=cfg["timeout_s"])
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for rec in records:
        if rec.get("finished") is None or (rec["error"] is None and rec["last"] is None):
            rec["error"] = rec["error"] or "unfinished when the run's time was up"
            rec.setdefault("finished", time.monotonic())
    with urllib.request.urlopen(f"{cfg['timings_url']}?prefix={quote(cfg['prompt_prefix'] + ' ')}", timeout=60) as answer:
        notes = json.loads(answer.read())
    return _stream_figures(cfg, records, notes, time.monotonic() - start)


def _event(rec: dict, event: bytes, at: float, direct: bool) -> None:
    if event.startswith(b":"):
        rec["pings"] += 1
        return
    if not event.startswith(b"data: "):
        return
    payload = event[6:]
    if payload == b"[DONE]":
        rec["last"] = {"type": "[DONE]"}
        return
    obj = json.loads(payload)
    if direct:
        rec["usage"] = obj.get("usage") or rec["usage"]
        for choice in obj.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                rec["tokens"].append((at, choice["delta"]["content"]))
    elif obj.get("type") == "delta":
        rec["tokens"].append((at, obj["text"]))
    else:
        rec["last"] = obj


def _stream_figures(cfg, records: list[dict], notes: dict, wall: float) -> dict:
    tps, first, expected = cfg["tokens_per_second"], cfg["first_token_delay"], cfg["completion_tokens"]
    want_text = "".join(f"w{i} " for i in range(expected))
    vs_sent, vs_schedule, fake_late, before_provider, first_token, durations = [], [], [], [], [], []
    outcomes, mismatched, worst = Counter(), 0, []
    for rec in records:
        last = rec["last"] or {}
        ok = rec["error"] is None and last.get("type") in ("done", "[DONE]")
        ok = ok and len(rec["tokens"]) == expected and "".join(t for _, t in rec["tokens"]) == want_text
        outcomes["complete" if ok else (last.get("error") or (rec["error"] or "incomplete").split(":")[0])] += 1
        if last.get("type") == "done" and last["charged"]["amount"] != last["usage"]["total_tokens"]:
            mismatched += 1
        note = notes.get(rec["prompt"])
        if not rec["tokens"] or note is None:
            continue
        reached, sent = note["reached"], note["sent"]
        before_provider.append(reached - rec["sent"])
        first_token.append(rec["tokens"][0][0] - rec["sent"])
        durations.append(rec["finished"] - rec["sent"])
        for i, (at, _) in enumerate(rec["tokens"]):
            scheduled = reached + first + i / tps
            vs_schedule.append(at - scheduled)
            if i + 1 < len(sent):  # the fake's chunk 0 is the role; token i is chunk i + 1
                vs_sent.append(at - sent[i + 1])
                fake_late.append(sent[i + 1] - scheduled)
                worst.append((at - sent[i + 1], rec["k"], i))
    opened = sorted(r["sent"] for r in records if r.get("sent"))
    closed = sorted(r["finished"] for r in records if r.get("sent"))
    return {
        "target": cfg["target"], "streams": len(records), "outcomes": dict(outcomes),
        "complete": outcomes["complete"], "charged_not_usage": mismatched,
        "checked_charges": sum(1 for r in records if (r["last"] or {}).get("type") == "done"),
        "tokens_timed": len(vs_sent), "pings": sum(r["pings"] for r in records),
        "delay_vs_sent_ms": spread(vs_sent), "delay_vs_schedule_ms": spread(vs_schedule),
        "fake_late_ms": spread(fake_late), "before_provider_ms": spread(before_provider),
        "first_token_ms": spread(first_token), "duration_ms": spread(durations),
        "max_open": _max_open(opened, closed),
        "all_open_s": max(0.0, closed[0] - opened[-1]) if opened else 0.0,
        "span_s": (closed[-1] - opened[0]) if opened else 0.0, "wall_s": wall,
        "worst_tokens": [{"delay_ms": d * 1000, "stream": k, "token": i} for d, k, i in sorted(worst)[-5:]],
        "error_samples": [r["error"] for r in records if r["error"]][:3],
    }


def _max_open(opened: list[float], closed: list[float]) -> int:
    events = sorted([(t, 1) for t in opened] + [(t, -1) for t in closed], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


async def probe(cfg) -> dict:
    host, port, tokens = _target(cfg)
    statuses, close_headers, connections = Counter(), 0, []
    start = time.monotonic()

    async def client(j: int) -> None:
        nonlocal close_headers
        connection = Connection(host, port)
        connections.append(connection)
        for _ in range(cfg["requests_per_connection"]):
            answer = await connection.request(cfg["method"], cfg["path"], _headers(cfg, tokens, j))
            statuses[answer.status] += 1
            close_headers += answer.headers.get("connection", "").lower() == "close"
        connection.close()

    await asyncio.gather(*(client(j) for j in range(cfg["connections"])))
    requests, opened = sum(statuses.values()), sum(c.opened for c in connections)
    return {"requests": requests, "statuses": {str(k): v for k, v in statuses.items()},
            "connection_close": close_headers, "tcp_connections": opened, "reused": requests - opened,
            "wall_s": time.monotonic() - start}


MODES = {"requests": closed_loop, "streams": streams, "probe": probe}


def run(config: dict, timeout: float) -> tuple[dict, float]:
    """Run one load in its own process; (its figures, the CPU seconds it used)."""
    process = subprocess.Popen([sys.executable, "-m", "bench.aioload"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent, preexec_fn=raise_nofile,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(json.dumps(config), timeout=timeout)
    except BaseException:
        os.killpg(process.pid, 9)
        process.wait()
        raise
    line = next((line for line in stdout.splitlines() if line.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"bench.aioload {config['mode']} failed ({process.returncode}):\n{stdout}\n{stderr}")
    result = json.loads(line[len(MARKER):])
    return result, result.pop("cpu_s")


def raise_nofile() -> None:
    """Thousands of sockets: the soft limit on open files up to the hard one (20000 here)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    config = json.loads(sys.stdin.read())
    result = asyncio.run(MODES[config["mode"]](config))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
