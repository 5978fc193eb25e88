"""The local fake of an OpenAI-compatible API (creditapp.testing.fake_openai), checked with the real
`openai` package: what it answers, and what the SDK makes of each failure it plays. No database."""
import re
import selectors
import signal
import subprocess
import sys
import threading
import time

import httpx2
import openai
import pytest

from creditapp.testing.fake_openai import API_KEY, DEFAULTS, fake_openai_server
from creditapp.testing.servers import ROOT, die_with_parent, fire_together

WORDS = "one two three four"  # 4 words: the fake counts 4 + prompt_overhead (3) prompt tokens
TOKENS = [f"w{i} " for i in range(8)]


def client(url: str, **options) -> openai.OpenAI:
    return openai.OpenAI(api_key=options.pop("api_key", API_KEY), base_url=url, max_retries=0, **options)


def ask(sdk: openai.OpenAI, **params):
    return sdk.chat.completions.create(model="fake-chat", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": WORDS}], **params)


def content(chunk) -> str | None:
    return chunk.choices[0].delta.content if chunk.choices else None


def read_until_failure(stream) -> tuple[list[str], BaseException]:
    """The content chunks a stream gave before it raised, and what it raised."""
    texts = []
    with pytest.raises(openai.OpenAIError) as raised:
        for chunk in stream:
            if content(chunk):
                texts.append(content(chunk))
    return texts, raised.value


def test_its_settings_point_the_app_at_it(fake_openai):
    assert fake_openai.url.startswith("http://127.0.0.1:") and fake_openai.url.endswith("/v1")
    assert fake_openai.settings == {"AI_PROVIDER": "openai", "OPENAI_API_KEY": API_KEY,
                                    "OPENAI_BASE_URL": fake_openai.url, "OPENAI_MODEL": "fake-chat",
                                    "OPENAI_IMAGE_MODEL": "fake-image"}


def test_a_completion_with_its_usage(fake_openai):
    answer = ask(client(fake_openai.url))
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == "fake-chat"
    [choice] = answer.choices
    assert (choice.index, choice.finish_reason, choice.message.role) == (0, "stop", "assistant")
    assert choice.message.content == "".join(TOKENS)
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (7, 8, 15)


def test_a_stream_without_include_usage_carries_no_usage(fake_openai):
    chunks = list(ask(client(fake_openai.url), stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert [content(chunk) for chunk in chunks[1:-1]] == TOKENS
    assert chunks[-1].choices[0].delta.content is None and chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == chunks[0].id for chunk in chunks)
    assert all(chunk.choices and "usage" not in chunk.model_fields_set for chunk in chunks)


def test_a_stream_with_include_usage_has_it_on_its_last_chunk_only(fake_openai):
    chunks = list(ask(client(fake_openai.url), stream=True, stream_options={"include_usage": True}))
    *earlier, last = chunks
    assert [content(chunk) for chunk in earlier[1:-1]] == TOKENS
    assert earlier[-1].choices[0].finish_reason == "stop"
    # OpenAI sends `"usage": null` on every chunk before the last
    assert all(chunk.choices and chunk.usage is None and "usage" in chunk.model_fields_set for chunk in earlier)
    assert last.choices == [] and (last.usage.prompt_tokens, last.usage.completion_tokens) == (7, 8)


@pytest.mark.parametrize("limit, sent, finish", [({"max_tokens": 3}, 3, "length"),
                                                 ({"max_completion_tokens": 3}, 3, "length"),
                                                 ({"max_tokens": 8}, 8, "stop"),
                                                 ({"max_tokens": 50}, 8, "stop")])
def test_max_tokens_cuts_a_completion(fake_openai, limit, sent, finish):
    sdk = client(fake_openai.url)
    answer = ask(sdk, **limit)
    assert answer.choices[0].finish_reason == finish and answer.choices[0].message.content == "".join(TOKENS[:sent])
    assert answer.usage.completion_tokens == sent
    *chunks, last = ask(sdk, stream=True, stream_options={"include_usage": True}, **limit)
    assert [content(chunk) for chunk in chunks if content(chunk)] == TOKENS[:sent]
    assert chunks[-1].choices[0].finish_reason == finish and last.usage.completion_tokens == sent


def test_first_token_delay_holds_the_first_content_chunk_back(fake_openai):
    fake_openai.first_token_delay = 0.4
    start = time.monotonic()
    stream = ask(client(fake_openai.url), stream=True)
    role_at = None
    for chunk in stream:
        if chunk.choices[0].delta.role:
            role_at = time.monotonic()
        elif content(chunk):
            first_at = time.monotonic()
            break
    stream.close()
    # the headers and the role chunk came first, then the wait
    assert role_at is not None and first_at - role_at >= 0.9 * 0.4 and first_at - start >= 0.9 * 0.4


def test_tokens_per_second_paces_the_stream_and_the_whole_answer(fake_openai):
    fake_openai.tokens_per_second, fake_openai.completion_tokens = 20, 6
    sdk = client(fake_openai.url)
    arrivals = [time.monotonic() for chunk in ask(sdk, stream=True) if content(chunk)]
    assert len(arrivals) == 6 and arrivals[-1] - arrivals[0] >= 0.9 * 5 / 20
    fake_openai.first_token_delay = 0.2
    start = time.monotonic()
    ask(sdk)
    assert time.monotonic() - start >= 0.9 * (0.2 + 5 / 20)  # as long as its stream would take


@pytest.mark.parametrize("k", [0, 3])
def test_an_error_event_after_k_chunks_raises_api_error(fake_openai, k):
    fake_openai.fail_after = k
    texts, error = read_until_failure(ask(client(fake_openai.url), stream=True))
    assert texts == TOKENS[:k]
    assert type(error) is openai.APIError  # no status: the answer began with a 200
    assert error.body["type"] == "server_error" and "server had an error" in error.message


@pytest.mark.parametrize("k", [0, 3])
def test_a_connection_cut_after_k_chunks_raises_api_connection_error(fake_openai, k):
    fake_openai.fail_after, fake_openai.fail_mode = k, "drop"
    texts, error = read_until_failure(ask(client(fake_openai.url), stream=True))
    assert texts == TOKENS[:k]
    assert type(error) is openai.APIConnectionError  # the chunked body never ended
    assert isinstance(error.__cause__, httpx2.RemoteProtocolError)


def test_a_completion_not_streamed_fails_with_a_500_or_a_cut_connection(fake_openai):
    sdk = client(fake_openai.url)
    fake_openai.fail_after = 3
    with pytest.raises(openai.InternalServerError):
        ask(sdk)
    fake_openai.fail_mode = "drop"
    with pytest.raises(openai.APIConnectionError) as raised:
        ask(sdk)
    assert isinstance(raised.value.__cause__, httpx2.RemoteProtocolError)
    fake_openai.fail_after = 8  # not before the end: no failure
    assert ask(sdk).choices[0].message.content == "".join(TOKENS)


def test_usage_mode_none_never_sends_usage(fake_openai):
    fake_openai.usage_mode = "none"
    sdk = client(fake_openai.url)
    answer = ask(sdk)
    assert answer.usage is None and "usage" not in answer.model_fields_set
    chunks = list(ask(sdk, stream=True, stream_options={"include_usage": True}))
    assert [content(chunk) for chunk in chunks if content(chunk)] == TOKENS
    assert all(chunk.choices and "usage" not in chunk.model_fields_set for chunk in chunks)


def test_usage_mode_over_reports_a_thousand_tokens_too_many(fake_openai):
    fake_openai.usage_mode = "over"
    sdk = client(fake_openai.url)
    usage = ask(sdk, max_tokens=5).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 1005, 1012)
    *chunks, last = ask(sdk, max_tokens=5, stream=True, stream_options={"include_usage": True})
    assert len([chunk for chunk in chunks if content(chunk)]) == 5 and last.usage.completion_tokens == 1005


@pytest.mark.parametrize("status, error, kind", [(500, openai.InternalServerError, "server_error"),
                                                 (429, openai.RateLimitError, "requests"),
                                                 (400, openai.BadRequestError, "invalid_request_error")])
def test_status_answers_openais_error_json(fake_openai, status, error, kind):
    fake_openai.status = status
    sdk = client(fake_openai.url)
    for params in ({}, {"stream": True}):
        with pytest.raises(error) as raised:
            ask(sdk, **params)
        assert raised.value.status_code == status
        assert set(raised.value.body) == {"message", "type", "param", "code"} and raised.value.body["type"] == kind
    assert len(fake_openai.requests) == 2


def test_a_hanging_request_times_out_and_the_fake_still_stops_at_once():
    before = set(threading.enumerate())
    with fake_openai_server() as fake:
        fake.hang = True
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(client(fake.url, timeout=0.5), stream=True)
        assert time.monotonic() - start < 5
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 2
    # None of the fake's request threads is left (other tests' threads may come and go meanwhile);
    # one told to stop may take a moment to end on a loaded machine, within the same 2 s.
    def left():
        return [t for t in threading.enumerate() if t not in before and "process_request" in t.name]

    while left() and time.monotonic() - stopping < 2:
        time.sleep(0.02)
    assert left() == [], left()


def test_release_lets_the_hanging_requests_answer(fake_openai):
    fake_openai.hang = True
    sdk = client(fake_openai.url, timeout=10)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(ask(sdk)))
    waiting.start()
    deadline = time.monotonic() + 5
    while not fake_openai.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert answers == []
    fake_openai.release()
    waiting.join(5)
    assert answers and answers[0].choices[0].message.content == "".join(TOKENS)
    with pytest.raises(openai.APITimeoutError):  # `hang` still set: the next one hangs in turn
        ask(client(fake_openai.url, timeout=0.3))


def test_images(fake_openai):
    sdk = client(fake_openai.url)
    answer = sdk.images.generate(model="fake-image", prompt="a red fox", n=2)
    assert answer.created > 0 and len(answer.data) == 2
    assert all(re.fullmatch(r"https://images\.fake-openai\.invalid/[0-9a-f]+\.png", image.url) for image in answer.data)
    assert {image.revised_prompt for image in answer.data} == {"a red fox"}
    fake_openai.first_token_delay = 0.3
    start = time.monotonic()
    sdk.images.generate(model="fake-image", prompt="a red fox")
    assert time.monotonic() - start >= 0.9 * 0.3
    fake_openai.status = 500
    with pytest.raises(openai.InternalServerError):
        sdk.images.generate(model="fake-image", prompt="a red fox")


def test_a_wrong_api_key_is_a_401(fake_openai):
    with pytest.raises(openai.AuthenticationError) as raised:
        ask(client(fake_openai.url, api_key="sk-wrong"))
    assert raised.value.status_code == 401 and raised.value.body["code"] == "invalid_api_key"
    assert fake_openai.requests[-1]["authorization"] == "Bearer sk-wrong"


def test_it_records_what_was_sent(fake_openai):
    ask(client(fake_openai.url), max_tokens=5, stream=True, stream_options={"include_usage": True}).close()
    [request] = fake_openai.requests
    assert (request["method"], request["path"]) == ("POST", "/v1/chat/completions")
    assert request["authorization"] == f"Bearer {API_KEY}"
    assert request["json"] == {"model": "fake-chat", "max_tokens": 5, "stream": True,
                               "stream_options": {"include_usage": True},
                               "messages": [{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": WORDS}]}


def test_reset_restores_every_knob(fake_openai):
    fake_openai.status, fake_openai.hang, fake_openai.usage_mode, fake_openai.completion_tokens = 500, True, "none", 2
    fake_openai.reset()
    assert {name: getattr(fake_openai, name) for name in DEFAULTS} == DEFAULTS
    assert ask(client(fake_openai.url)).usage.completion_tokens == 8


def _first_line(process: subprocess.Popen, timeout: float) -> str:
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"the fake printed nothing within {timeout}s")
    return process.stdout.readline()


@pytest.mark.slow
def test_the_command_line_server_streams_many_completions_at_once(tmp_path):
    with open(tmp_path / "fake_openai.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "creditapp.testing.fake_openai", "--port", "0", "--tokens-per-second", "50",
             "--completion-tokens", "10", "--first-token-delay", "0.1"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=die_with_parent)
    try:
        line = _first_line(process, 30)
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+/v1)\n", line)
        assert match, line + (tmp_path / "fake_openai.log").read_text()
        sdk = client(match[1], timeout=30)

        def stream(_i):
            chunks = list(ask(sdk, stream=True, stream_options={"include_usage": True}))
            return [content(chunk) for chunk in chunks if content(chunk)], chunks[-1].usage.completion_tokens

        results = fire_together(50, stream)
        assert results == [([f"w{i} " for i in range(10)], 10)] * 50
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise
        process.stdout.close()
    assert returncode == 0, (tmp_path / "fake_openai.log").read_text()
