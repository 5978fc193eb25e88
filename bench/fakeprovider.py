"""Scenario 12's AI provider: creditapp.testing.fake_openai's FakeOpenAI, served the way its own
command line serves it (gevent's WSGIServer, one greenlet per connection), plus a stopwatch.

For every streamed chat completion the stopwatch notes, on CLOCK_MONOTONIC (time.monotonic(),
one clock for every process of the machine), when the request reached the fake and when the fake
handed each chunk of its answer to the server to send. The load generator reads the notes
afterwards (`GET /bench/timings?prefix=...`, keyed by the prompt, which is unique per stream) and
sets the time each token reached the client against the time the fake sent it.

Run: python -m bench.fakeprovider --tokens-per-second 5 --completion-tokens 50
(prints `listening on http://127.0.0.1:PORT/v1`; SIGTERM stops it).
"""
import io
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from creditapp.testing import servers
from creditapp.testing.fake_openai import API_KEY

ROOT = Path(__file__).resolve().parent.parent


class Stopwatch:
    """WSGI middleware around the fake: {prompt: {"reached": t, "sent": [t of each chunk]}}."""

    def __init__(self, app):
        self.app, self.notes = app, {}

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/bench/timings":
            prefix = parse_qs(environ.get("QUERY_STRING", "")).get("prefix", [""])[0]
            body = json.dumps({k: v for k, v in self.notes.items() if k.startswith(prefix)}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if environ["PATH_INFO"] != "/v1/chat/completions":
            return self.app(environ, start_response)
        reached = time.monotonic()
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            prompt = json.loads(raw)["messages"][-1]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return self.app(environ, start_response)
        note = self.notes[prompt] = {"reached": reached, "sent": []}
        return self._timed(self.app(environ, start_response), note["sent"])

    @staticmethod
    def _timed(chunks, sent: list):
        try:
            for chunk in chunks:
                sent.append(time.monotonic())  # the server writes it as soon as this returns
                yield chunk
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()


def main(argv=None) -> None:
    from creditapp.testing import fake_openai

    fake_openai.main(argv, wrap=Stopwatch)


@dataclass
class Fake:
    url: str  # its OpenAI base URL, http://127.0.0.1:PORT/v1
    pid: int

    @property
    def env(self) -> dict:
        """The app's settings to use it."""
        return {"AI_PROVIDER": "openai", "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": self.url,
                "OPENAI_MODEL": "fake-chat"}

    @property
    def timings_url(self) -> str:
        return self.url.rsplit("/v1", 1)[0] + "/bench/timings"


@contextmanager
def running(log_path: Path, *, tokens_per_second: float, completion_tokens: int, first_token_delay: float = 0.0):
    """Yields the running fake (a Fake); stops it, by its process group, afterwards."""
    command = [sys.executable, "-m", "bench.fakeprovider", "--tokens-per-second", str(tokens_per_second),
               "--completion-tokens", str(completion_tokens), "--first-token-delay", str(first_token_delay)]
    process = servers.start_process(command, {**os.environ, "PYTHONUNBUFFERED": "1"}, log_path, cwd=ROOT)
    try:
        yield Fake(_wait_listening(process, log_path), process.pid)
    finally:
        servers.stop(process)


def _wait_listening(process: subprocess.Popen, log_path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            if line.startswith("listening on "):
                return line.split()[-1]
        if process.poll() is not None:
            raise RuntimeError(f"the fake provider exited with {process.returncode}; see {log_path}")
        time.sleep(0.1)
    raise RuntimeError(f"the fake provider did not start within {timeout}s; see {log_path}")


if __name__ == "__main__":
    main()
