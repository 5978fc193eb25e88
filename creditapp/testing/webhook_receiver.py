"""A real webhook receiver on loopback, for tests of outgoing webhooks: a threaded HTTP server
that verifies every request with the `standardwebhooks` package, as an operator's would, and
records what came. Knobs: `fail_next(n, status=500)` (answer an error), `hang_next(n, seconds)`
(answer only after `seconds`: past a timeout), `sleep_next(n, seconds)` (the same, any reason).

`receiver.secret` must be set to the endpoint's secret (`POST /api/admin/webhooks` answers it)
before anything is sent; `receiver.url` is where to subscribe (a path of your own may follow)."""
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from standardwebhooks import Webhook, WebhookVerificationError
from werkzeug.wrappers import Request, Response

from .servers import local_wsgi_server


@dataclass
class Received:
    webhook_id: str
    timestamp: str
    signature: str
    body: bytes
    payload: dict | None  # verified and parsed; None when the signature did not verify
    answered: int
    path: str
    delayed: float = 0.0  # seconds the answer was held back (hang_next)

    @property
    def type(self) -> str | None:
        return self.payload["type"] if self.payload else None


class WebhookReceiver:
    def __init__(self):
        self.url = ""
        self.secret: str | None = None
        self.received: list[Received] = []
        self._plan: list[tuple[int, float]] = []  # (status, seconds) for the next requests
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        with self._lock:
            self._plan += [(status, 0.0)] * n

    def hang_next(self, n: int = 1, seconds: float = 5) -> None:
        with self._lock:
            self._plan += [(200, seconds)] * n

    def __call__(self, environ, start_response):
        request = Request(environ)
        body = request.get_data()
        headers = {key.lower(): value for key, value in request.headers.items()}
        with self._lock:
            status, delay = self._plan.pop(0) if self._plan else (200, 0.0)
        try:
            payload = Webhook(self.secret).verify(body, headers)
        except (WebhookVerificationError, TypeError, ValueError):
            payload, status = None, 400
        with self._changed:  # recorded as it arrives: a hung answer's sender may have given up on it
            self.received.append(Received(headers.get("webhook-id", ""), headers.get("webhook-timestamp", ""),
                                          headers.get("webhook-signature", ""), body, payload, status, request.path,
                                          delay))
            self._changed.notify_all()
        if delay:
            time.sleep(delay)
        return Response(json.dumps({"status": status}), status=status, mimetype="application/json")(
            environ, start_response)

    def verified(self) -> list[Received]:
        """What came signed right and was answered 2xx at once."""
        with self._lock:
            return [r for r in self.received if _ok(r)]

    def wait_for(self, count: int, timeout: float = 10, *, verified_only: bool = True) -> list[Received]:
        """Block until `count` requests came (verified and answered 2xx at once, by default)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                got = [r for r in self.received if not verified_only or _ok(r)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(got)} of {count} webhooks within {timeout} s: {self.received}")
                self._changed.wait(left)


def _ok(received: Received) -> bool:
    return received.payload is not None and 200 <= received.answered < 300 and not received.delayed


@contextmanager
def webhook_receiver_server() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    with local_wsgi_server(receiver) as port:
        receiver.url = f"http://127.0.0.1:{port}/hooks"
        yield receiver
