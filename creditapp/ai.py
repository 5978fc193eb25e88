"""The AI provider behind a small interface, and the stub that stands in for it.

Views use `ai_service`, which resolves to the app's provider; tests and deployments swap the
provider with `set_provider(app, provider)`.
"""
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

from flask import Flask, current_app
from werkzeug.local import LocalProxy

from .exceptions import GenerationFailed
from .metrics import metrics

_EXTENSION_KEY = "creditapp.ai"
_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks, at least one token."""
    return max(1, len(_TOKEN.findall(text)))


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AIProvider(Protocol):
    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        """Run an image feature; returns at least {"image_url"}. Raises GenerationFailed."""

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """Complete a prompt, using at most `max_tokens` completion tokens. Raises GenerationFailed."""


class StubAIProvider:
    """Answers like a provider would, with configurable latency and failure rate."""

    def __init__(self, latency_ms: int = 0, failure_rate: float = 0.0, call_log: str | None = None,
                 seed: int | None = None, result_log: str | None = None):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.call_log = call_log
        self.result_log = result_log  # one line per result handed out (tests count them across processes)
        self.calls = 0
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        self._call(feature)
        url = f"https://images.stub.invalid/{uuid.uuid4().hex}.png"
        self._delivered(url)
        return {"feature": feature, "image_url": url}

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        self._call("ai_complete")
        prompt_tokens = count_tokens(prompt)
        completion_tokens = min(max_tokens, 8 + prompt_tokens // 2)
        text = " ".join(["lorem"] * completion_tokens)
        self._delivered(f"completion of {completion_tokens} tokens")
        return Completion(text, prompt_tokens, completion_tokens)

    def _delivered(self, result: str) -> None:
        if self.result_log:
            with open(self.result_log, "a", encoding="utf-8") as log:
                log.write(f"{result}\n")

    def _call(self, feature: str) -> None:
        with self._lock:
            self.calls += 1
            fail = self._random.random() < self.failure_rate
        if self.call_log:
            with open(self.call_log, "a", encoding="utf-8") as log:
                log.write(f"{feature}\n")
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if fail:
            raise GenerationFailed("the AI provider did not answer")


class InstrumentedProvider:
    """Times every call and counts failures, whatever provider stands behind it."""

    def __init__(self, provider: AIProvider):
        self.provider = provider

    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        return self._timed(feature, lambda: self.provider.generate_image(params, feature=feature))

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        return self._timed("ai_complete", lambda: self.provider.complete(prompt, max_tokens))

    def _timed(self, feature: str, call):
        started, outcome = time.perf_counter(), "failed"
        try:
            result = call()
            outcome = "ok"
            return result
        finally:
            if outcome == "failed":
                metrics().ai_failures.labels(feature).inc()
            metrics().ai_seconds.labels(feature, outcome).observe(time.perf_counter() - started)


def init_app(app: Flask) -> None:
    set_provider(app, StubAIProvider(
        latency_ms=app.config["AI_STUB_LATENCY_MS"],
        failure_rate=app.config["AI_STUB_FAILURE_RATE"],
        call_log=app.config["AI_STUB_CALL_LOG"],
        result_log=app.config["AI_STUB_RESULT_LOG"],
    ))


def set_provider(app: Flask, provider: AIProvider) -> None:
    app.extensions[_EXTENSION_KEY] = InstrumentedProvider(provider)


ai_service: AIProvider = LocalProxy(lambda: current_app.extensions[_EXTENSION_KEY])
