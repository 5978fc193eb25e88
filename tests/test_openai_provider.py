"""AI_PROVIDER=openai against the local fake of an OpenAI-compatible server (creditapp.testing.
fake_openai), called by the real `openai` package: usage from the provider, streams with and without
it, failures mid-stream and before it, slow first tokens, timeouts, images, the SDK's retries off."""
import json

import pytest

from creditapp.ai import count_tokens
from creditapp.ledger import credit_service
from creditapp.testing import ledger_is_clean, make_app

URL = "/api/ai/complete"
PROMPT = "write a short poem about the sea"  # 7 words: the fake counts 7 + 3, the app 7


@pytest.fixture
def creditapp_settings(fake_openai):
    return {**fake_openai.settings, "STREAM_PING_SECONDS": 0.1, "AI_TIMEOUT_SECONDS": 2}


def tokens(user) -> int:
    return credit_service.get_credit_balance(user.id).ai_tokens


def events_of(response) -> list:
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        if block.startswith("data: "):
            events.append(json.loads(block[len("data: "):]))
        elif block.startswith(":"):
            events.append("ping")
    return events


def ask(client, user, stream: bool, max_tokens: int = 20):
    return client.post(URL, json={"prompt": PROMPT, "max_tokens": max_tokens, "stream": stream},
                       headers=user.headers, buffered=stream)


def test_a_completion_is_charged_the_providers_usage(app, client, make_user, fake_openai):
    user = make_user(tokens=100)
    answer = ask(client, user, stream=False)
    assert answer.status_code == 200, answer.json
    assert answer.json["result"]["text"] == "".join(f"w{i} " for i in range(8))
    assert answer.json["usage"] == {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}
    assert answer.json["charged"]["amount"] == 18 == 100 - tokens(user)
    sent = fake_openai.requests[-1]["json"]
    assert sent["model"] == "fake-chat" and sent["max_tokens"] == 20 and "stream" not in sent
    assert sent["messages"] == [{"role": "user", "content": PROMPT}]
    ledger_is_clean()


def test_a_stream_asks_for_usage_and_is_charged_it(app, client, make_user, fake_openai):
    user = make_user(tokens=100)
    events = events_of(ask(client, user, stream=True))
    assert [e["text"] for e in events if e["type"] == "delta"] == [f"w{i} " for i in range(8)]
    assert events[-1]["type"] == "done" and events[-1]["usage"]["total_tokens"] == 18
    assert events[-1]["charged"]["amount"] == 18 == 100 - tokens(user)
    sent = fake_openai.requests[-1]["json"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    ledger_is_clean()


def test_without_usage_the_app_counts_what_it_delivered(app, client, make_user, fake_openai):
    user = make_user(tokens=100)
    fake_openai.usage_mode = "none"
    events = events_of(ask(client, user, stream=True))
    assert events[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}
    assert tokens(user) == 85
    answer = ask(client, user, stream=False)
    assert answer.json["charged"]["amount"] == count_tokens(PROMPT) + 8 == 85 - tokens(user)
    ledger_is_clean()


@pytest.mark.parametrize("mode", ["error", "drop"])
def test_a_provider_failing_mid_stream_charges_the_prompt_and_what_was_delivered(app, client, make_user,
                                                                                 fake_openai, mode):
    user = make_user(tokens=100)
    fake_openai.fail_after, fake_openai.fail_mode = 3, mode
    events = events_of(ask(client, user, stream=True))
    assert [e["text"] for e in events if e["type"] == "delta"] == ["w0 ", "w1 ", "w2 "]
    assert events[-1]["type"] == "error" and events[-1]["error"] == "generation_failed"
    assert events[-1]["charged"]["amount"] == count_tokens(PROMPT) + 3 == 100 - tokens(user)
    ledger_is_clean()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("status", [500, 429])
def test_a_provider_error_before_any_output_is_a_502_with_nothing_charged_and_no_retry(
        app, client, make_user, fake_openai, stream, status):
    user = make_user(tokens=100)
    fake_openai.status = status
    answer = ask(client, user, stream=stream)
    assert answer.status_code == 502 and answer.json["error"] == "generation_failed"
    assert tokens(user) == 100 and len(fake_openai.requests) == 1  # the SDK did not retry on its own
    ledger_is_clean()


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_that_never_answers_times_out_within_the_hold(app, client, make_user, fake_openai, stream):
    user = make_user(tokens=100)
    fake_openai.hang = True
    answer = ask(client, user, stream=stream)
    assert answer.status_code == 502 and answer.json["error"] == "generation_failed"
    assert tokens(user) == 100
    fake_openai.release()
    ledger_is_clean()


def test_a_slow_first_token_gets_pings_and_then_the_stream(app, client, make_user, fake_openai):
    user = make_user(tokens=100)
    fake_openai.first_token_delay = 0.5
    events = events_of(ask(client, user, stream=True))
    first_delta = next(i for i, e in enumerate(events) if isinstance(e, dict) and e["type"] == "delta")
    assert events[:first_delta].count("ping") >= 2
    assert events[-1]["type"] == "done" and tokens(user) == 82
    ledger_is_clean()


def test_usage_over_the_hold_and_the_balance_is_usage_exceeded_hold(app, client, make_user, fake_openai):
    user = make_user(tokens=count_tokens(PROMPT) + 20)
    fake_openai.usage_mode = "over"
    events = events_of(ask(client, user, stream=True))
    assert events[-1]["error"] == "usage_exceeded_hold"
    assert events[-1]["charged"]["amount"] == count_tokens(PROMPT) + 8  # what the app delivered
    assert tokens(user) == 20 - 8
    user = make_user(tokens=count_tokens(PROMPT) + 20)
    answer = ask(client, user, stream=False)  # not streamed: today's 403, nothing charged, nothing shown
    assert answer.status_code == 403 and answer.json["error"] == "insufficient_credits"
    assert tokens(user) == count_tokens(PROMPT) + 20
    ledger_is_clean()


def test_basic_generation_goes_through_the_images_api(app, client, make_user, fake_openai):
    user = make_user(credits=2)
    answer = client.post("/api/generate", json={"prompt": "a lighthouse"}, headers=user.headers)
    assert answer.status_code == 200, answer.json
    assert answer.json["result"]["image_url"].startswith("https://images.fake-openai.invalid/")
    sent = fake_openai.requests[-1]
    assert sent["path"] == "/v1/images/generations" and sent["json"]["model"] == "fake-image"
    assert sent["json"]["prompt"] == "a lighthouse"
    fake_openai.status = 500
    failed = client.post("/api/generate", json={"prompt": "a lighthouse"}, headers=user.headers)
    assert failed.status_code == 502 and credit_service.get_credit_balance(user.id).generation_credits == 1
    ledger_is_clean()


def test_the_provider_settings_are_checked_at_start(database_url, fake_openai):
    with pytest.raises(RuntimeError, match="AI_PROVIDER must be stub or openai"):
        make_app(database_url, AI_PROVIDER="gpt")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY must be set"):
        make_app(database_url, AI_PROVIDER="openai")
    with pytest.raises(RuntimeError, match="STREAM_PING_SECONDS must be above 0"):
        make_app(database_url, STREAM_PING_SECONDS=0)
