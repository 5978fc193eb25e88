"""One attempt: the Standard Webhooks signature and one POST to the address that was checked.

Signed with the `standardwebhooks` package (the reference library), so that any Standard
Webhooks library verifies it: `webhook-signature` is `v1,` + base64 HMAC-SHA256 of
`webhook-id.webhook-timestamp.body` under the secret's bytes. The timestamp is the wall clock's
when the attempt is sent (receivers compare it with theirs to refuse replays), not the event's.
Redirects are not followed: a 3xx is a failed attempt, like any status outside 2xx.
"""
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from standardwebhooks import Webhook

from . import addresses
from .errors import InvalidEndpointUrl

USER_AGENT = "creditapp-webhooks/1"
READ_AT_MOST = 2048  # of the receiver's answer, kept for the attempt's error


@dataclass(frozen=True)
class Result:
    ok: bool
    response_code: int | None
    error: str | None
    duration_ms: int


def signed_headers(secret: str, webhook_id: str, body: bytes, at: datetime | None = None) -> dict:
    at = at or datetime.now(timezone.utc)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


def post(url: str, secret: str, webhook_id: str, body: bytes, *, timeout: float, allow_private: bool) -> Result:
    started = time.monotonic()
    try:
        code, text = _post(url, signed_headers(secret, webhook_id, body), body, timeout, allow_private)
    except InvalidEndpointUrl as exc:
        return Result(False, None, f"refused: {exc}", _ms(started))
    except (socket.timeout, TimeoutError):
        return Result(False, None, f"timeout: no answer within {timeout:g} s", _ms(started))
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Result(False, None, f"connection failed: {type(exc).__name__}: {exc}"[:500], _ms(started))
    if 200 <= code < 300:
        return Result(True, code, None, _ms(started))
    return Result(False, code, f"answered {code}: {text}"[:500], _ms(started))


def _post(url: str, headers: dict, body: bytes, timeout: float, allow_private: bool) -> tuple[int, str]:
    target = addresses.parse(url)
    address = addresses.checked_addresses(target, allow_private)[0]
    deadline = time.monotonic() + timeout
    connection = _connection(target, address, timeout, allow_private)
    try:
        connection.request("POST", target.path, body=body, headers={
            **headers, "Content-Type": "application/json", "User-Agent": USER_AGENT})
        sock = connection.sock  # getresponse lets go of it when the answer closes the connection
        sock.settimeout(_left(deadline))
        response = connection.getresponse()
        sock.settimeout(_left(deadline))
        text = response.read(READ_AT_MOST).decode("utf-8", "replace")
        return response.status, text
    finally:
        connection.close()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the attempt's time is up")
    return left


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to `address`, whatever the name resolves to now; checks the peer it reached."""

    def __init__(self, target: addresses.Target, address: str, timeout: float, allow_private: bool):
        super().__init__(target.host, target.port, timeout=timeout)
        self._address, self._allow_private = address, allow_private

    def _raw_socket(self) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        try:
            addresses.check_address(sock.getpeername()[0], self._allow_private)
        except InvalidEndpointUrl:
            sock.close()
            raise
        return sock

    def connect(self) -> None:
        self.sock = self._raw_socket()


class _PinnedHTTPS(_PinnedHTTP):
    def __init__(self, *args, context: ssl.SSLContext):
        super().__init__(*args)
        self._context = context

    def connect(self) -> None:
        # The certificate is checked against the URL's name, not the address.
        self.sock = self._context.wrap_socket(self._raw_socket(), server_hostname=self.host)


def _connection(target, address, timeout, allow_private) -> http.client.HTTPConnection:
    if target.scheme == "https":
        return _PinnedHTTPS(target, address, timeout, allow_private, context=ssl.create_default_context())
    return _PinnedHTTP(target, address, timeout, allow_private)


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
