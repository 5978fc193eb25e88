"""The AI provider behind a small interface: the stub that stands in for it (stub.py) and any
OpenAI-compatible server through the official SDK (openai_compatible.py), chosen by AI_PROVIDER.

Views use `ai_service`, which resolves to the app's provider; tests and deployments swap the
provider with `set_provider(app, provider)`.
"""
import time
from collections.abc import Iterator

from flask import Flask, current_app
from werkzeug.local import LocalProxy

from ..metrics import metrics
from .stub import StubAIProvider
from .types import AIProvider, Completion, CompletionStream, OneShotStream, Usage, count_tokens

__all__ = ["AIProvider", "Completion", "CompletionStream", "StubAIProvider", "Usage", "ai_service", "count_tokens",
           "init_app", "set_provider"]
_EXTENSION_KEY = "creditapp.ai"


class InstrumentedProvider:
    """Times every call and counts failures, whatever provider stands behind it; gives a
    provider without `stream` one (its whole completion as one piece)."""

    def __init__(self, provider: AIProvider):
        self.provider = provider

    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        return self._timed(feature, lambda: self.provider.generate_image(params, feature=feature))

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        return self._timed("ai_complete", lambda: self.provider.complete(prompt, max_tokens))

    def stream(self, prompt: str, max_tokens: int) -> CompletionStream:
        """Opened (the provider has answered, or GenerationFailed); its pieces come as iterated."""
        if not hasattr(self.provider, "stream"):
            return OneShotStream(self.complete(prompt, max_tokens))
        # Labelled as the feature it serves (the stream's own outcomes are creditapp_streams).
        return self._timed("ai_complete", lambda: self.provider.stream(prompt, max_tokens))

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
    if app.config["AI_PROVIDER"] == "openai":
        from .openai_compatible import OpenAICompatibleProvider

        set_provider(app, OpenAICompatibleProvider.from_config(app.config))
        return
    set_provider(app, StubAIProvider(
        latency_ms=app.config["AI_STUB_LATENCY_MS"],
        failure_rate=app.config["AI_STUB_FAILURE_RATE"],
        call_log=app.config["AI_STUB_CALL_LOG"],
        result_log=app.config["AI_STUB_RESULT_LOG"],
        token_ms=app.config["AI_STUB_TOKEN_MS"],
    ))


def set_provider(app: Flask, provider: AIProvider) -> None:
    app.extensions[_EXTENSION_KEY] = InstrumentedProvider(provider)


ai_service: AIProvider = LocalProxy(lambda: current_app.extensions[_EXTENSION_KEY])
