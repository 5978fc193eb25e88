"""Streamed completions (`"stream": true`): the provider's text relayed as server-sent events, and
charged exactly what was delivered.

The guard has held the worst case (prompt + max_tokens) before the first byte. A stream that
completes is charged the provider's usage. One that ends early (the client hangs up, the provider
fails, STREAM_MAX_SECONDS passes, the hold would expire) is charged the prompt and the completion
text delivered so far, as the app counts it, never more than the hold; nothing at all if no text was
delivered. "Delivered" is text whose event the server has written to the connection: the relay
counts a piece only when the server asks for the next one, so a piece whose write failed is free.

The provider is read on a thread of its own (a greenlet under gevent) into a queue, so that the
relay can send a `: ping` while the provider is silent and notice a client that has gone.
"""
import json
import logging
import queue
import select
import socket
import threading
import time
from datetime import timezone

from flask import Response, current_app, g, request, stream_with_context

from ..ai import ai_service, count_tokens
from ..features import cost_of
from ..ledger import HoldExpired, InsufficientCredits, credit_service
from ..ledger.clock import utcnow
from ..metrics import metrics
from .guard import close_streamed, hold_for_stream

log = logging.getLogger("creditapp.access")
MAX_TOKENS = 10**9  # more than any completion: a usage above it is nonsense
FEATURE = "ai_complete"
PING = b": ping\n\n"
MESSAGES = {
    "client_gone": "The client went away; charged for what was delivered.",
    "generation_failed": "The AI provider failed mid-way; charged for what was delivered.",
    "stream_timed_out": "The stream ran out of time; charged for what was delivered.",
    "usage_exceeded_hold": "The AI used more than was held and the balance could not cover it; "
                           "charged for what was delivered.",
    "reservation_expired": "The hold expired; nothing was charged.",
    "database_unavailable": "The charge could not be recorded; nothing was charged.",
}
# The outcome metrics and logs count a stream by, for each way it can end.
OUTCOMES = {None: "completed", "client_gone": "client_gone", "generation_failed": "provider_failed",
            "stream_timed_out": "timed_out", "usage_exceeded_hold": "usage_exceeded_hold",
            "reservation_expired": "reservation_expired", "database_unavailable": "database_unavailable"}


def delivered_tokens(text: str, pieces: int) -> int:
    """The app's count of delivered completion tokens: the larger of the pieces sent (OpenAI
    sends a token per chunk) and the stand-in tokenizer's count (a server may send several)."""
    return max(pieces, count_tokens(text)) if text else 0


def event(body: dict) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def streamed_completion(params: dict) -> Response:
    """Open the provider's stream (a failure now is the guard's 502, nothing charged) and answer
    with the relay; from here the stream owns the hold."""
    hold = hold_for_stream()
    stream = ai_service.stream(params["prompt"], params["max_tokens"])
    relay = Relay(current_app._get_current_object(), hold, stream, params, request.environ.get("gunicorn.socket"))
    response = Response(stream_with_context(relay.events()), mimetype="text/event-stream")
    response.headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(relay.abandoned)
    return response


class Relay:
    def __init__(self, app, hold, stream, params: dict, client: socket.socket | None = None):
        config = app.config
        self.app, self.hold, self.stream, self.client = app, hold, stream, client
        self.price = cost_of(FEATURE)
        self.prompt_tokens, self.max_tokens = count_tokens(params["prompt"]), params["max_tokens"]
        self.ping = config["STREAM_PING_SECONDS"]
        self.ttl = config["CREDIT_HOLD_TTL_SECONDS"]
        # How often the relay looks at the hold and the clock, provider silent or not.
        self.wake = min(self.ping, self.ttl / 8)
        self.started = time.monotonic()
        self.deadline = self.started + config["STREAM_MAX_SECONDS"]
        self.pieces: queue.Queue = queue.Queue()
        self.text, self.count, self.first_token = "", 0, None
        self.ended = threading.Lock()  # held by whichever ending comes first
        self.finished = False

    # --- the provider's side, on its own thread --------------------------------------------
    def _read(self) -> None:
        try:
            for piece in self.stream:
                self.pieces.put(("text", piece))
            self.pieces.put(("end", self.stream.usage))
        except Exception as exc:  # GenerationFailed, or a provider's own bug: a failure either way
            self.pieces.put(("failed", exc))

    # --- the client's side -----------------------------------------------------------------
    def events(self):
        reader = threading.Thread(target=self._read, name="creditapp-stream", daemon=True)
        reader.start()
        timeout = self._write_timeout()
        try:
            usage, error, wrote = None, None, time.monotonic()
            while True:
                error = self._keep_hold()
                if error:
                    break
                now = time.monotonic()
                if now >= self.deadline:
                    error = "stream_timed_out"
                    break
                try:
                    kind, value = self.pieces.get(timeout=min(self.wake, self.deadline - now))
                except queue.Empty:
                    if time.monotonic() - wrote >= self.ping and time.monotonic() < self.deadline:
                        yield PING  # a client that has gone fails this write
                        wrote = time.monotonic()
                    continue
                if kind == "end":
                    usage = value
                    break
                if kind == "failed":
                    error = "generation_failed"
                    current_app.logger.warning("stream of hold %s: %s", self.hold.hold_id, value)
                    break
                if self._client_gone():
                    error = "client_gone"
                    break
                if self._overran(value):
                    break  # more than max_tokens by every count: the provider overran what was held
                yield event({"type": "delta", "text": value})
                self._delivered(value)  # the server wrote it: it asks for the next one
                wrote = time.monotonic()
            yield event(self._end(error, usage))
        finally:
            try:
                self.stream.close()
                if timeout is not None:
                    self.client.settimeout(timeout[0])
            except Exception:
                pass
            self._end("client_gone", None)  # nothing if it ended already

    def _write_timeout(self):
        """A client that stops reading (and keeps its connection) must not block a write for
        longer than the hold can wait: the write fails, and the stream ends charged for what was
        delivered while the hold still stands. The socket's own timeout comes back at the end."""
        if self.client is None:
            return None
        try:
            previous = self.client.gettimeout()
            self.client.settimeout(max(1.0, min(30.0, self.ttl / 4)))
            return (previous,)
        except Exception:
            return None

    def abandoned(self) -> None:
        """The server closed the answer: if its stream never started (no request context is left
        then), give the hold back whole."""
        if self.finished or not self.ended.acquire(blocking=False):
            return
        self.finished = True
        with self.app.app_context():
            try:
                self.stream.close()
                credit_service.close(self.hold, succeeded=False)
                metrics().open_holds.dec()
                metrics().count("released", FEATURE, self.hold.credit_type.value, self.hold.amount)
            except Exception:
                self.app.logger.exception("hold %s stays until it expires", self.hold.hold_id)
            metrics().streams.labels(FEATURE, "client_gone").inc()

    def _client_gone(self) -> bool:
        """Whether the client has closed its side. A write after that still succeeds (the kernel
        takes it before the client's reset comes back), so without this look the piece after the
        client's last would be charged. A server that gives no socket: its failed write says so."""
        if self.client is None:
            return False
        try:
            # poll, not select: a gevent worker's connections pass descriptor 1024.
            poller = select.poll()
            poller.register(self.client, select.POLLIN)
            if not poller.poll(0):
                return False
            return self.client.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _overran(self, piece: str) -> bool:
        """Whether `piece` takes the delivered text past max_tokens by both counts: one count alone
        (punctuation is a token each to the stand-in tokenizer) must not cut a fair answer short."""
        text = self.text + piece
        return min(self.count + 1, count_tokens(text)) > self.max_tokens

    def _delivered(self, piece: str) -> None:
        if self.first_token is None:
            self.first_token = time.monotonic() - self.started
            metrics().stream_first_token.labels(FEATURE).observe(self.first_token)
        self.text += piece
        self.count += 1

    def _keep_hold(self) -> str | None:
        """Extend the hold before half its life is gone (a stream may outlive CREDIT_HOLD_TTL_SECONDS);
        if it cannot be, end the stream while the hold still stands."""
        expires_at = self.hold.expires_at
        if expires_at is None:
            return None
        if expires_at.tzinfo is None:  # SQLite's
            expires_at = expires_at.replace(tzinfo=timezone.utc)
        left = (expires_at - utcnow()).total_seconds()
        if left > self.ttl / 2:
            return None
        try:
            self.hold.expires_at = credit_service.extend(self.hold)
            return None
        except HoldExpired:
            return "reservation_expired"
        except Exception:
            current_app.logger.exception("could not extend the hold %s of a stream", self.hold.hold_id)
            return "stream_timed_out" if left < self.ttl / 4 else None

    def _end(self, error: str | None, usage) -> dict:
        """Charge and close the hold, once, whichever ending comes first; the last event."""
        if not self.ended.acquire(blocking=False):
            return {}
        self.finished = True
        hold = self.hold
        delivered = min(self.max_tokens, delivered_tokens(self.text, self.count))
        app_count = {"prompt_tokens": self.prompt_tokens if delivered else 0, "completion_tokens": delivered}
        early = min(hold.amount, (app_count["prompt_tokens"] + delivered) * self.price)
        counted, charge = app_count, early
        if error is None and _sane(usage):
            counted, charge = usage.as_dict(), usage.total_tokens * self.price
        if error == "reservation_expired":
            charge = 0
        balance, closed = None, None
        try:
            with credit_service.activate(hold):
                try:
                    balance = credit_service.deduct_credits(hold.wallet_id, charge, hold.credit_type)
                except InsufficientCredits:
                    # The provider's usage outgrew the hold and the balance: the text is out, so
                    # it is charged as an early end is (never more than the hold).
                    metrics().usage_exceeded.labels(FEATURE, hold.credit_type.value).inc()
                    error, counted, charge = "usage_exceeded_hold", app_count, early
                    balance = credit_service.deduct_credits(hold.wallet_id, charge, hold.credit_type)
            counted = {**counted, "total_tokens": counted["prompt_tokens"] + counted["completion_tokens"]}
            answer = {"result": {"text": self.text}, "charged": {"credit_type": hold.credit_type.value, "amount": charge},
                      "balance": balance.as_dict(), "usage": counted,
                      "stream": {"outcome": OUTCOMES[error], "delivered_tokens": delivered}}
            closed = close_streamed(hold, json.dumps(answer) if charge else None)
        except Exception:
            current_app.logger.exception("could not close the hold %s of a stream", hold.hold_id)
            closed = "database_unavailable"
            try:
                close_streamed(hold, None)  # give it back; failing that, it expires charging nothing
            except Exception:
                pass
        if closed is not None:  # nothing was charged after all
            error, charge = closed, 0
            try:
                balance = credit_service.get_credit_balance(hold.wallet_id)
            except Exception:
                balance = None
        outcome = OUTCOMES[error]
        metrics().streams.labels(FEATURE, outcome).inc()
        metrics().stream_tokens.labels(FEATURE).inc(delivered)
        log.info("stream", extra={"request_id": g.get("request_id"), "hold_id": hold.hold_id,
                                  "outcome": outcome, "charged": charge, "delivered_tokens": delivered,
                                  "first_token_ms": None if self.first_token is None else round(self.first_token * 1000),
                                  "seconds": round(time.monotonic() - self.started, 3)})
        charged = {"credit_type": hold.credit_type.value, "amount": charge}
        shown = balance.as_dict() if balance is not None else None
        if error is None:
            return {"type": "done", "charged": charged, "balance": shown,
                    "usage": {**counted, "total_tokens": counted["prompt_tokens"] + counted["completion_tokens"]}}
        return {"type": "error", "error": error, "message": MESSAGES[error], "charged": charged, "balance": shown}


def _sane(usage) -> bool:
    """A provider's usage the ledger can charge: whole numbers, none negative (a server may send
    nulls or nonsense; then the app's own count is charged)."""
    if usage is None:
        return False
    values = (usage.prompt_tokens, usage.completion_tokens)
    return all(type(v) is int and 0 <= v <= MAX_TOKENS for v in values)
