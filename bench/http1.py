"""A minimal HTTP/1.1 client on asyncio streams, for the load generators that keep thousands of
connections open at once (bench/aioload.py): keep-alive, Content-Length and chunked bodies, and a
callback for each piece of a body as it arrives (for streams read event by event).

Loopback only, no TLS, no redirects, no retries: a request either gets its answer or raises.
"""
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class ServerClosed(Exception):
    """The server closed the connection before the answer was complete."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case; a repeated header keeps its last value
    body: bytes = b""
    keep_alive: bool = True  # False: the server said `Connection: close` (or spoke HTTP/1.0)
    first_byte: float = 0.0  # time.monotonic() when the head arrived


@dataclass
class Connection:
    """One client connection: opened on first use, and again after the server closed it."""

    host: str
    port: int
    opened: int = 0  # TCP connections opened so far
    _reader: asyncio.StreamReader | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes | None = None, on_data: Callable[[bytes, float], None] | None = None) -> Answer:
        """Send one request and read its answer. With `on_data`, the body is handed over piece by
        piece (with the time it arrived) instead of being kept in `Answer.body`."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        try:
            answer = await self._answer(method, on_data)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.close()
            raise ServerClosed(f"{type(exc).__name__} reading the answer to {method} {path}") from None
        except BaseException:
            self.close()  # cancelled mid-answer: the connection cannot be used again
            raise
        if not answer.keep_alive:
            self.close()
        return answer

    async def _answer(self, method: str, on_data) -> Answer:
        reader = self._reader
        head = await reader.readuntil(b"\r\n\r\n")
        first_byte = time.monotonic()
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status = status_line.split(" ", 2)[:2]
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        answer = Answer(int(status), headers, keep_alive=keep_alive, first_byte=first_byte)
        pieces = []
        deliver = on_data or (lambda data, _at: pieces.append(data))
        if method == "HEAD" or answer.status in (204, 304) or 100 <= answer.status < 200:
            return answer
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                        pass
                    break
                data = await reader.readexactly(size + 2)
                deliver(data[:-2], time.monotonic())
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                deliver(await reader.readexactly(length), time.monotonic())
        else:  # the body runs until the server closes
            answer.keep_alive = False
            while data := await reader.read(65536):
                deliver(data, time.monotonic())
        answer.body = b"".join(pieces)
        return answer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
