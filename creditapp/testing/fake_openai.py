"""A local fake of an OpenAI-compatible API, for the part creditapp calls (chat completions, streamed
or not, and image generation), speaking OpenAI's wire format so that the real `openai` package is
what talks to it: Bearer keys, OpenAI's error JSON, server-sent events ending in `data: [DONE]`,
usage on a last chunk with no choices when `stream_options.include_usage` is asked.

Its answers are deterministic (token i of a completion is the text `w{i} `) and its knobs, plain
attributes, play what a real provider does to the app: slow first tokens, slow streams, streams
that fail or are cut, usage missing or wrong, error statuses, requests that never answer.

Tests use `fake_openai_server()` (werkzeug, a thread per connection). A benchmark runs
`python -m creditapp.testing.fake_openai --port N`: the same app under gevent, which holds
thousands of slow streams in one process.
"""
import argparse
import errno
import json
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

API_KEY = "sk-creditapp-fake"

# Every knob and its default; a request reads them all when it arrives, so changing one does not
# change a stream already under way.
DEFAULTS = {
    "completion_tokens": 8,  # how long a completion is when max_tokens does not cut it
    "prompt_overhead": 3,  # a real provider counts a prompt differently from the app: keep them apart
    "first_token_delay": 0.0,  # seconds before the first content chunk (or before a whole answer)
    "tokens_per_second": 0.0,  # 0: no delay between content chunks
    "fail_after": None,  # after that many content chunks the completion fails
    "fail_mode": "error",  # "error": an error event (500 when not streamed); "drop": the connection is cut
    "usage_mode": "normal",  # "none": never any usage; "over": completion_tokens reported 1000 too many
    "status": None,  # answer this HTTP status with OpenAI's error JSON instead
    "hang": False,  # never answer, until release() or the server stops
}

_ERRORS = {  # status -> OpenAI's type, code and message for it
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
}


class _Dropped(ConnectionResetError):
    """Raised from a response's body to cut the connection mid-answer. werkzeug's server and
    gevent's both take ECONNRESET for a client gone: they close the socket without ending the
    chunked body and log nothing, so the client sees an incomplete response."""

    def __init__(self):
        super().__init__(errno.ECONNRESET, "fake_openai cut the connection")


def error_body(status: int, message: str | None = None, param: str | None = None) -> dict:
    kind, code, default = _ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                               None, f"HTTP {status}"))
    return {"error": {"message": message or default, "type": kind, "param": param, "code": code}}


def _json(obj: dict, status: int = 200) -> Response:
    return Response(json.dumps(obj), status, {"x-request-id": f"req_{secrets.token_hex(16)}"},
                    content_type="application/json")


def _error(status: int, message: str | None = None, param: str | None = None) -> Response:
    return _json(error_body(status, message, param), status)


def _usage(reply, knobs) -> dict | None:
    """The usage reported for a completion sent whole."""
    if knobs.usage_mode == "none":
        return None
    prompt = reply.prompt_tokens
    completion = len(reply.tokens) + (1000 if knobs.usage_mode == "over" else 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class FakeOpenAI:
    def __init__(self):
        self.url = ""
        self.requests: list[dict] = []  # every request: method, path, json (its body), authorization
        self._lock = threading.Lock()
        self._gate = threading.Event()  # what hanging requests wait on; set to let them answer
        self._stopped = False
        self.reset()

    @property
    def settings(self) -> dict:
        """The app's settings to use this fake."""
        return {"AI_PROVIDER": "openai", "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": self.url,
                "OPENAI_MODEL": "fake-chat", "OPENAI_IMAGE_MODEL": "fake-image"}

    def reset(self) -> None:
        """Every knob back to its default (the recorded requests stay)."""
        for name, value in DEFAULTS.items():
            setattr(self, name, value)

    def release(self) -> None:
        """The requests hanging now answer; with `hang` still set, the following ones hang again."""
        with self._lock:
            gate = self._gate
            if not self._stopped:
                self._gate = threading.Event()
        gate.set()

    def close(self) -> None:
        """The server is stopping: hanging requests end, and no request hangs any more."""
        with self._lock:
            self._stopped = True
        self._gate.set()

    # --- the API -------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        return self._answer(Request(environ))(environ, start_response)

    def _answer(self, request: Request) -> Response:
        body = request.get_json(silent=True)
        knobs = SimpleNamespace(**{name: getattr(self, name) for name in DEFAULTS})
        authorization = request.headers.get("Authorization")
        with self._lock:
            self.requests.append({"method": request.method, "path": request.path, "json": body,
                                  "authorization": authorization})
            gate = self._gate
        if authorization != f"Bearer {API_KEY}":
            return _error(401)
        if knobs.hang:
            gate.wait()
            if self._stopped:
                return _error(503, "The server is shutting down.")
        if knobs.status:
            return _error(knobs.status)
        route = {("POST", "/v1/chat/completions"): self._chat,
                 ("POST", "/v1/images/generations"): self._images}.get((request.method, request.path))
        if route is None:
            return _error(404, f"Invalid URL ({request.method} {request.path})")
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        return route(body, knobs)

    def _chat(self, body: dict, knobs) -> Response:
        messages, model = body.get("messages"), body.get("model")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' is a required property", "messages")
        if not isinstance(model, str) or not model:
            return _error(400, "you must provide a model parameter", "model")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and not _positive_int(limit):
            return _error(400, f"Invalid 'max_tokens': expected an integer >= 1, got {limit!r}.", "max_tokens")
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        prompt_tokens = len(content.split() if isinstance(content, str) else ()) + knobs.prompt_overhead
        n = knobs.completion_tokens if limit is None else min(limit, knobs.completion_tokens)
        finish = "length" if n == limit < knobs.completion_tokens else "stop"
        reply = SimpleNamespace(id=f"chatcmpl-{secrets.token_hex(12)}", created=int(time.time()), model=model,
                                tokens=[f"w{i} " for i in range(n)], finish=finish, prompt_tokens=prompt_tokens)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return Response(self._events(reply, knobs, include_usage), 200, {"Cache-Control": "no-cache"},
                            mimetype="text/event-stream", direct_passthrough=True)
        return self._completion(reply, knobs)

    def _completion(self, reply, knobs) -> Response:
        n = len(reply.tokens)
        fails = knobs.fail_after is not None and knobs.fail_after < n
        pause = knobs.first_token_delay + (max(n - 1, 0) / knobs.tokens_per_second if knobs.tokens_per_second else 0)
        if pause:  # as long as the stream of the same completion would take
            time.sleep(pause)
        if fails and knobs.fail_mode != "drop":
            return _error(500)
        answer = {"id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(reply.tokens),
                                                       "refusal": None, "annotations": []},
                               "logprobs": None, "finish_reason": reply.finish}],
                  "service_tier": "default", "system_fingerprint": "fp_fake"}
        usage = _usage(reply, knobs)
        if usage is not None:
            answer["usage"] = usage
        if not fails:
            return _json(answer)
        text = json.dumps(answer).encode()

        def cut() -> Iterator[bytes]:
            yield text[:len(text) // 2]
            raise _Dropped()

        return Response(cut(), 200, content_type="application/json", direct_passthrough=True)

    def _events(self, reply, knobs, include_usage: bool) -> Iterator[bytes]:
        """The stream's body, one event per item: the WSGI server sends each as it is yielded."""
        usage_field = include_usage and knobs.usage_mode != "none"

        def event(obj: dict) -> bytes:
            return f"data: {json.dumps(obj)}\n\n".encode()

        head = {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model,
                "service_tier": "default", "system_fingerprint": "fp_fake"}

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            obj = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if usage_field:
                obj["usage"] = None  # OpenAI says so on every chunk but the last
            return event(obj)

        yield chunk({"role": "assistant", "content": ""})
        for i, token in enumerate(reply.tokens):
            if i == knobs.fail_after:
                if knobs.fail_mode == "drop":
                    raise _Dropped()
                yield event(error_body(500))
                return
            pause = knobs.first_token_delay if i == 0 else (
                1 / knobs.tokens_per_second if knobs.tokens_per_second else 0)
            if pause:
                time.sleep(pause)  # gevent's under the command line's server: one greenlet waits
            yield chunk({"content": token})
        yield chunk({}, reply.finish)
        if usage_field:
            yield event({**head, "choices": [], "usage": _usage(reply, knobs)})
        yield b"data: [DONE]\n\n"

    def _images(self, body: dict, knobs) -> Response:
        prompt, n = body.get("prompt"), body.get("n", 1)
        if not isinstance(prompt, str) or not prompt:
            return _error(400, "'prompt' is a required property", "prompt")
        if not _positive_int(n) or n > 10:
            return _error(400, f"Invalid 'n': expected an integer from 1 to 10, got {n!r}.", "n")
        if knobs.first_token_delay:
            time.sleep(knobs.first_token_delay)
        return _json({"created": int(time.time()),
                      "data": [{"url": f"https://images.fake-openai.invalid/{secrets.token_hex(16)}.png",
                                "revised_prompt": prompt} for _ in range(n)]})


class _Handler(WSGIRequestHandler):
    # Each event is a few small writes: without this, Nagle's algorithm holds them back until
    # the client's ACK (delayed by up to 40 ms on Linux), and the stream arrives in bursts.
    disable_nagle_algorithm = True

    def log_request(self, *args) -> None:
        pass  # a line on stderr for every request says nothing a test would read


@contextmanager
def fake_openai_server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    server = make_server("127.0.0.1", 0, fake, threaded=True, request_handler=_Handler)
    fake.url = f"http://127.0.0.1:{server.server_port}/v1"
    # A short poll: shutdown() waits for the serving loop to look, 0.5 s by default, at every test's end.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.close()
        server.shutdown()
        server.server_close()  # also joins the request threads
        thread.join(10)


def main(argv: list[str] | None = None, wrap=None) -> None:
    """Serve a fake under gevent until SIGTERM; `wrap(fake)` is the WSGI app served, if given (a
    benchmark's stopwatch around it)."""
    # Patched here, not at import: tests import this module and keep real threads. The package's
    # imports came first, so patching changes their modules in place; ssl is left alone (this
    # server speaks plain HTTP, and ssl cannot be patched once imported).
    from gevent import monkey

    monkey.patch_all(ssl=False)
    import gevent
    from gevent.pywsgi import WSGIServer

    parser = argparse.ArgumentParser(description="A local OpenAI-compatible API for benchmarks.")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (the line printed says which)")
    parser.add_argument("--tokens-per-second", type=float, default=DEFAULTS["tokens_per_second"])
    parser.add_argument("--completion-tokens", type=int, default=DEFAULTS["completion_tokens"])
    parser.add_argument("--first-token-delay", type=float, default=DEFAULTS["first_token_delay"])
    args = parser.parse_args(argv)

    fake = FakeOpenAI()
    fake.tokens_per_second, fake.completion_tokens = args.tokens_per_second, args.completion_tokens
    fake.first_token_delay = args.first_token_delay
    server = WSGIServer(("127.0.0.1", args.port), wrap(fake) if wrap else fake, log=None, backlog=4096)
    server.start()
    fake.url = f"http://127.0.0.1:{server.server_port}/v1"

    def stop() -> None:
        fake.close()
        server.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, stop)
    print(f"listening on {fake.url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
