"""`--profile`: py-spy on one gunicorn worker during an extra scenario-3 run, summarised.

py-spy runs with --gil: it samples only the thread holding the GIL, so the profile shows where
the worker spends CPU (the machine's bottleneck), not the threads waiting in the pool or on the
database.
"""
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path


def find_py_spy() -> str | None:
    beside_python = Path(sys.executable).with_name("py-spy")
    return str(beside_python) if beside_python.exists() else shutil.which("py-spy")


def profile_worker(server, drive, *, duration: int, output: Path) -> dict:
    """Record one worker with py-spy while `drive()` loads the server; the measured runs are
    never profiled, since sampling slows the worker down."""
    py_spy = find_py_spy()
    if py_spy is None:
        print("  profile: skipped, py-spy is not installed (.venv/bin/pip install py-spy)", flush=True)
        return {"skipped": "py-spy is not installed"}
    worker = server.worker_pids()[0]
    command = [py_spy, "record", "--gil", "--format", "raw", "-o", str(output),
               "-d", str(duration), "-p", str(worker)]
    recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    load = threading.Thread(target=drive)
    load.start()
    load.join()
    log, _ = recorder.communicate(timeout=duration + 60)
    if recorder.returncode != 0 or not output.exists():
        print(f"  profile: py-spy failed: {log.strip()[-300:]}", flush=True)
        return {"skipped": f"py-spy failed: {log.strip()[-300:]}"}
    summary = summarise(output)
    summary.update(worker=worker, file=str(output))
    print(f"  profile: {summary['samples']} samples of worker {worker} in {output}", flush=True)
    return summary


_LINE = re.compile(r":\d+\)$")


def summarise(path: Path, top: int = 25) -> dict:
    """From py-spy's collapsed stacks ("frame;frame;... count"): where the samples were spent,
    per function, as the innermost frame (self) and anywhere on the stack (total). Functions
    on (nearly) every stack, such as the thread and request entry points, say nothing and are
    left out of the totals."""
    own, total = Counter(), Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    informative = [(f, n) for f, n in total.most_common() if n < 0.9 * samples]
    return {
        "samples": samples,
        "top_self": own.most_common(top),
        "top_total": informative[:top],
    }
