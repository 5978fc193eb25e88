"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, LiteLLM...) through the official `openai`
package: chat completions, streamed or not, and basic generation through the images API.

The SDK's retries are off: a retry is a new charge decision, which the guard makes (a failure is a
502 with nothing charged, and the client may try again), not one hidden inside a call. Every call
ends within AI_TIMEOUT_SECONDS and nine tenths of the hold's lifetime, so no answer outlives its hold.
"""
import threading
from collections.abc import Iterator

import openai

from ..exceptions import GenerationFailed
from .types import Completion, Usage, count_tokens


def _failed(exc: Exception) -> GenerationFailed:
    detail = getattr(exc, "status_code", None) or type(exc).__name__
    return GenerationFailed(f"the AI provider failed ({detail})")


class OpenAICompatibleProvider:
    def __init__(self, client: openai.OpenAI, model: str, image_model: str):
        self.client, self.model, self.image_model = client, model, image_model

    @classmethod
    def from_config(cls, config) -> "OpenAICompatibleProvider":
        timeout = min(config["AI_TIMEOUT_SECONDS"], 0.9 * config["CREDIT_HOLD_TTL_SECONDS"])
        client = openai.OpenAI(api_key=config["OPENAI_API_KEY"], base_url=config["OPENAI_BASE_URL"], max_retries=0,
                               timeout=openai.Timeout(timeout, connect=min(10.0, timeout)))
        return cls(client, config["OPENAI_MODEL"], config["OPENAI_IMAGE_MODEL"])

    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        if feature != "basic_generation":
            # The other image features edit a photo, which needs a model of their own: a provider
            # for them is the app's (set_provider). Nothing is charged for the 502.
            raise GenerationFailed(f"{feature} is not served by the OpenAI-compatible provider")
        try:
            answer = self.client.images.generate(model=self.image_model, prompt=params["prompt"], n=1)
        except openai.OpenAIError as exc:
            raise _failed(exc) from exc
        image = (answer.data or [None])[0]
        if image is None or not (image.url or image.b64_json):
            raise GenerationFailed("the AI provider answered no image")
        url = image.url or f"data:image/{answer.output_format or 'png'};base64,{image.b64_json}"
        return {"feature": feature, "image_url": url}

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        try:
            answer = self.client.chat.completions.create(model=self.model, max_tokens=max_tokens,
                                                         messages=[{"role": "user", "content": prompt}])
        except openai.OpenAIError as exc:
            raise _failed(exc) from exc
        text = "".join(choice.message.content or "" for choice in answer.choices[:1])
        usage = answer.usage
        if usage is not None and all(type(n) is int and n >= 0 for n in (usage.prompt_tokens, usage.completion_tokens)):
            return Completion(text, usage.prompt_tokens, usage.completion_tokens)
        # No usage (some servers send none, or nulls): counted as a stream's delivered text is (README).
        return Completion(text, count_tokens(prompt), count_tokens(text) if text else 0)

    def stream(self, prompt: str, max_tokens: int) -> "OpenAIStream":
        try:
            raw = self.client.chat.completions.create(
                model=self.model, max_tokens=max_tokens, messages=[{"role": "user", "content": prompt}],
                stream=True, stream_options={"include_usage": True})
        except openai.OpenAIError as exc:
            raise _failed(exc) from exc
        return OpenAIStream(raw)


class OpenAIStream:
    """The SDK's stream as a CompletionStream: the first choice's text, and the usage OpenAI sends
    on its last chunk when `include_usage` is asked (some servers never send it)."""

    def __init__(self, raw):
        self._raw = raw
        self._closed = threading.Event()
        self.usage: Usage | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for chunk in self._raw:
                if chunk.usage is not None:
                    self.usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                for choice in chunk.choices:
                    if choice.index == 0 and choice.delta is not None and choice.delta.content:
                        yield choice.delta.content
        except Exception as exc:  # an error event, a dropped connection, a timeout: the provider's
            if self._closed.is_set():
                return
            raise _failed(exc) from exc

    def close(self) -> None:
        self._closed.set()
        try:
            self._raw.close()
        except Exception:  # closing a connection being read from another thread may complain
            pass
