"""The stub provider: answers like a provider would, with configurable latency and failure rate."""
import random
import threading
import time
import uuid
from collections.abc import Iterator

from ..exceptions import GenerationFailed
from .types import Completion, Usage, count_tokens


class StubAIProvider:
    def __init__(self, latency_ms: int = 0, failure_rate: float = 0.0, call_log: str | None = None,
                 seed: int | None = None, result_log: str | None = None, token_ms: int = 0):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError("failure_rate must be between 0 and 1")
        self.latency_ms = latency_ms
        self.failure_rate = failure_rate
        self.call_log = call_log
        self.result_log = result_log  # one line per result handed out (tests count them across processes)
        self.token_ms = token_ms  # between the pieces of a stream
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
        prompt_tokens, completion_tokens = self._sizes(prompt, max_tokens)
        text = " ".join(["lorem"] * completion_tokens)
        self._delivered(f"completion of {completion_tokens} tokens")
        return Completion(text, prompt_tokens, completion_tokens)

    def stream(self, prompt: str, max_tokens: int) -> "StubStream":
        self._call("ai_complete")
        return StubStream(self, *self._sizes(prompt, max_tokens))

    @staticmethod
    def _sizes(prompt: str, max_tokens: int) -> tuple[int, int]:
        prompt_tokens = count_tokens(prompt)
        return prompt_tokens, min(max_tokens, 8 + prompt_tokens // 2)

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


class StubStream:
    """`completion_tokens` pieces of "lorem ", `token_ms` apart; the stub's usage at the end."""

    def __init__(self, stub: StubAIProvider, prompt_tokens: int, completion_tokens: int):
        self._stub, self._sizes = stub, (prompt_tokens, completion_tokens)
        self._closed = threading.Event()
        self.usage: Usage | None = None

    def __iter__(self) -> Iterator[str]:
        prompt_tokens, completion_tokens = self._sizes
        for i in range(completion_tokens):
            if self._closed.wait(self._stub.token_ms / 1000) if self._stub.token_ms else self._closed.is_set():
                return
            yield "lorem" if i == 0 else " lorem"
        self.usage = Usage(prompt_tokens, completion_tokens)
        self._stub._delivered(f"completion of {completion_tokens} tokens")

    def close(self) -> None:
        self._closed.set()
