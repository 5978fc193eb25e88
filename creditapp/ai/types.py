"""What a provider is and what it answers: a completion, a stream of one, their usage."""
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks, at least one token."""
    return max(1, len(_TOKEN.findall(text)))


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens}


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class CompletionStream(Protocol):
    """A completion as the provider sends it: iterating gives its text piece by piece (and raises
    GenerationFailed when the provider fails on the way); `usage` is the provider's own count once
    the iteration has ended, None if it sent none; `close()` stops it (from any thread)."""

    usage: Usage | None

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class AIProvider(Protocol):
    def generate_image(self, params: dict, feature: str = "basic_generation") -> dict:
        """Run an image feature; returns at least {"image_url"}. Raises GenerationFailed."""

    def complete(self, prompt: str, max_tokens: int) -> Completion:
        """Complete a prompt, using at most `max_tokens` completion tokens. Raises GenerationFailed."""

    # Optional: `stream(prompt, max_tokens) -> CompletionStream`, opened when it returns (or
    # GenerationFailed). A provider without it streams its whole completion as one piece.


class OneShotStream:
    """A whole completion as a stream of one piece, for providers that cannot stream."""

    def __init__(self, completion: Completion):
        self._completion = completion
        self.usage = Usage(completion.prompt_tokens, completion.completion_tokens)

    def __iter__(self) -> Iterator[str]:
        yield self._completion.text

    def close(self) -> None:
        pass
