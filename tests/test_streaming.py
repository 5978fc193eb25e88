"""Streamed completions through the test client (unbuffered, closed mid-stream): the events, the
money of every way a stream ends, the Idempotency-Key, the hold of a stream that outlives it."""
import json
import threading
import time

import pytest

from creditapp.ai import StubAIProvider, Usage, count_tokens, set_provider
from creditapp.exceptions import GenerationFailed
from creditapp.ledger import credit_service
from creditapp.testing import ledger_is_clean

from .test_observability import metric

URL = "/api/ai/complete"
PROMPT = "write a short poem about the sea"  # 7 tokens as the app counts


def tokens(user) -> int:
    return credit_service.get_credit_balance(user.id).ai_tokens


def parse(raw: bytes) -> list:
    """The events of a body: each `data:` a JSON object, each `: ping` the string "ping"."""
    events = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            events.append(json.loads(block[len("data: "):]))
        elif block.startswith(":"):
            events.append("ping")
    return events


class ScriptedStream:
    """A provider's stream told what to do: `pieces` (strings, or a float: sleep that long, or an
    exception: raise it), then `usage`."""

    def __init__(self, script, usage):
        self.script, self.final, self.usage, self.closed = script, usage, None, threading.Event()

    def __iter__(self):
        for step in self.script:
            if self.closed.is_set():
                return
            if isinstance(step, float):
                self.closed.wait(step)
            elif isinstance(step, Exception):
                raise step
            else:
                yield step
        self.usage = self.final

    def close(self):
        self.closed.set()


class ScriptedProvider(StubAIProvider):
    def __init__(self):
        super().__init__()
        self.script, self.usage, self.opened, self.fail_open = [], None, [], False

    def stream(self, prompt, max_tokens):
        if self.fail_open:
            raise GenerationFailed("the AI provider did not answer")
        stream = ScriptedStream(list(self.script), self.usage)
        self.opened.append(stream)
        return stream


@pytest.fixture
def provider(app):
    scripted = ScriptedProvider()
    set_provider(app, scripted)
    return scripted


def stream(client, user, max_tokens=20, **headers):
    return client.post(URL, json={"prompt": PROMPT, "max_tokens": max_tokens, "stream": True},
                       headers={**user.headers, **headers}, buffered=False)


def test_a_stream_that_completes_is_charged_the_providers_usage(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script, provider.usage = ["Waves ", "fold ", "into ", "foam."], Usage(12, 5)
    response = stream(client, user)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["X-Accel-Buffering"] == "no"
    events = parse(response.get_data())
    assert [e["text"] for e in events if e["type"] == "delta"] == ["Waves ", "fold ", "into ", "foam."]
    done = events[-1]
    assert done == {"type": "done", "charged": {"credit_type": "ai_tokens", "amount": 17},
                    "balance": {"generation_credits": 0, "ai_tokens": 83},
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}, done
    assert tokens(user) == 83
    ledger_is_clean()


def test_a_stub_stream_completes_with_the_stubs_usage(app, client, make_user):
    user = make_user(tokens=100)
    events = parse(stream(client, user, max_tokens=5).get_data())
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "lorem lorem lorem lorem lorem"
    assert events[-1]["charged"]["amount"] == count_tokens(PROMPT) + 5 == 100 - tokens(user)


def test_a_client_that_hangs_up_after_k_events_is_charged_the_prompt_and_what_it_received(
        app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = ["one ", "two ", "three ", 5.0, "never "]
    response = stream(client, user)
    chunks = response.response  # the body as a server takes it, piece by piece
    received = [parse(next(chunks)) for _ in range(2)]
    assert [e[0]["text"] for e in received] == ["one ", "two "]
    # As a server does: it wrote those two and takes the next, whose write fails (the client has
    # gone), and closes the answer mid-stream.
    assert parse(next(chunks))[0]["text"] == "three "
    response.close()
    assert tokens(user) == 100 - (count_tokens(PROMPT) + 2)
    assert provider.opened[0].closed.is_set()  # the provider's stream is stopped too
    ledger_is_clean()


def test_a_stream_never_read_gives_its_hold_back(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = ["one "]
    response = stream(client, user)
    assert tokens(user) < 100  # held
    response.close()
    assert tokens(user) == 100
    ledger_is_clean()


def test_a_provider_failing_mid_stream_charges_what_was_delivered(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = ["one ", "two ", GenerationFailed("the provider's connection dropped")]
    events = parse(stream(client, user).get_data())
    charged = count_tokens(PROMPT) + 2
    assert events[-1] == {"type": "error", "error": "generation_failed", "message": events[-1]["message"],
                          "charged": {"credit_type": "ai_tokens", "amount": charged},
                          "balance": {"generation_credits": 0, "ai_tokens": 100 - charged}}
    assert tokens(user) == 100 - charged
    ledger_is_clean()


def test_a_provider_failing_before_any_text_charges_nothing(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = [GenerationFailed("no")]
    events = parse(stream(client, user).get_data())
    assert events[-1]["error"] == "generation_failed" and events[-1]["charged"]["amount"] == 0
    assert tokens(user) == 100
    provider.fail_open = True  # refused before the first byte: the JSON 502 of today
    response = stream(client, user)
    assert response.status_code == 502 and response.json["error"] == "generation_failed"
    assert tokens(user) == 100
    ledger_is_clean()


def test_a_stream_without_usage_is_charged_what_the_app_counted(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script, provider.usage = ["a b ", "c, d."], None
    events = parse(stream(client, user).get_data())
    # Two pieces, but the stand-in tokenizer counts 6 tokens in "a b c, d.": the larger one.
    assert events[-1]["type"] == "done" and events[-1]["usage"]["completion_tokens"] == 6
    assert tokens(user) == 100 - (count_tokens(PROMPT) + 6)
    ledger_is_clean()


def test_usage_beyond_the_hold_takes_the_balance_or_ends_as_usage_exceeded_hold(app, client, make_user, provider):
    user = make_user(tokens=40)
    held = count_tokens(PROMPT) + 20
    provider.script, provider.usage = ["one ", "two "], Usage(10, 25)  # 35 of 40: the balance covers it
    assert parse(stream(client, user).get_data())[-1]["charged"]["amount"] == 35
    assert tokens(user) == 5
    provider.usage = Usage(10, 500)
    user = make_user(tokens=held)
    events = parse(stream(client, user).get_data())
    assert events[-1]["error"] == "usage_exceeded_hold"
    assert events[-1]["charged"]["amount"] == count_tokens(PROMPT) + 2 == held - tokens(user)
    ledger_is_clean()


def test_a_provider_that_sends_more_than_max_tokens_is_cut_at_it(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = [f"w{i} " for i in range(10)]
    events = parse(stream(client, user, max_tokens=4).get_data())
    assert len([e for e in events if e["type"] == "delta"]) == 4
    assert tokens(user) == 100 - (count_tokens(PROMPT) + 4)
    ledger_is_clean()


@pytest.mark.parametrize("creditapp_settings", [{"STREAM_PING_SECONDS": 0.1, "STREAM_MAX_SECONDS": 0.6}])
def test_pings_while_the_provider_is_silent_and_an_end_at_stream_max_seconds(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script = ["one ", 0.35, "two ", 5.0, "never "]
    started = time.monotonic()
    events = parse(stream(client, user).get_data())
    assert time.monotonic() - started < 4
    assert events.count("ping") >= 2
    assert [e["text"] for e in events if isinstance(e, dict) and e["type"] == "delta"] == ["one ", "two "]
    assert events[-1]["error"] == "stream_timed_out"
    assert tokens(user) == 100 - (count_tokens(PROMPT) + 2)
    ledger_is_clean()


@pytest.mark.parametrize("creditapp_settings", [{"CREDIT_HOLD_TTL_SECONDS": 2, "STREAM_PING_SECONDS": 0.2}])
def test_a_stream_longer_than_the_holds_lifetime_extends_it(app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script, provider.usage = ["one ", 1.5, "two ", 1.5, "three "], Usage(7, 3)
    events = parse(stream(client, user).get_data())
    assert events[-1]["type"] == "done" and tokens(user) == 90, events[-1]
    ledger_is_clean()


def test_an_idempotent_stream_replays_its_final_answer_as_json_and_is_in_use_while_it_runs(
        app, client, make_user, provider):
    user = make_user(tokens=100)
    provider.script, provider.usage = ["one ", "two "], Usage(7, 2)
    response = stream(client, user, **{"Idempotency-Key": "poem-1"})
    chunks = response.response
    assert parse(next(chunks))[0]["text"] == "one "
    during = stream(client, user, **{"Idempotency-Key": "poem-1"})
    assert during.status_code == 409 and during.json["error"] == "idempotency_key_in_use"
    rest = parse(b"".join(chunks))
    assert rest[-1]["type"] == "done"
    replayed = stream(client, user, **{"Idempotency-Key": "poem-1"})
    assert replayed.status_code == 200 and replayed.mimetype == "application/json"
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json["result"] == {"text": "one two "} and replayed.json["charged"]["amount"] == 9
    assert replayed.json["stream"] == {"outcome": "completed", "delivered_tokens": 2}
    assert tokens(user) == 91 and len(provider.opened) == 1
    ledger_is_clean()


def test_before_the_first_byte_a_stream_answers_as_any_paid_request(app, client, make_user, provider):
    user = make_user(tokens=5)
    refused = stream(client, user)
    assert refused.status_code == 403 and refused.json["error"] == "insufficient_credits"
    bad = client.post(URL, json={"prompt": PROMPT, "max_tokens": 5, "stream": "yes"}, headers=user.headers)
    assert bad.status_code == 422 and "stream" in bad.json["errors"], bad.json
    assert client.post(URL, json={"prompt": PROMPT, "max_tokens": 5, "stream": True}).status_code == 401
    assert provider.opened == [] and tokens(user) == 5


def test_streams_are_counted_by_outcome_with_their_tokens_and_first_token_time(app, client, make_user, provider):
    user = make_user(tokens=200)
    before = client.get("/metrics").get_data(as_text=True)
    provider.script, provider.usage = ["one ", "two "], Usage(7, 2)
    parse(stream(client, user).get_data())
    provider.script = ["one ", GenerationFailed("cut")]
    parse(stream(client, user).get_data())
    text = client.get("/metrics").get_data(as_text=True)

    def moved(name, **labels):
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert moved("creditapp_streams_total", feature="ai_complete", outcome="completed") == 1
    assert moved("creditapp_streams_total", feature="ai_complete", outcome="provider_failed") == 1
    assert moved("creditapp_stream_delivered_tokens_total", feature="ai_complete") == 3
    assert moved("creditapp_stream_first_token_seconds_count", feature="ai_complete") == 2


def test_an_answer_heavy_with_punctuation_is_not_cut_and_nonsense_usage_is_not_charged(
        app, client, make_user, provider):
    user = make_user(tokens=100)
    # Four pieces, but 9 tokens to the stand-in tokenizer: the provider's max_tokens (4) is trusted.
    provider.script, provider.usage = ["```", "|---|", "py", "x"], Usage(7, 4)
    events = parse(stream(client, user, max_tokens=4).get_data())
    assert "".join(e["text"] for e in events if e["type"] == "delta") == "```|---|pyx"
    assert events[-1]["type"] == "done" and events[-1]["charged"]["amount"] == 11
    provider.script, provider.usage = ["one ", "two "], Usage(None, -3)  # a server's nulls
    events = parse(stream(client, user).get_data())
    assert events[-1]["type"] == "done" and events[-1]["charged"]["amount"] == count_tokens(PROMPT) + 2
    assert tokens(user) == 100 - 11 - (count_tokens(PROMPT) + 2)
    ledger_is_clean()


def test_a_stream_cannot_be_a_job(app, client, make_user, provider):
    user = make_user(tokens=100)
    answer = client.post(URL, json={"prompt": PROMPT, "max_tokens": 5, "stream": True},
                         headers={**user.headers, "Prefer": "respond-async"})
    assert answer.status_code == 422 and "stream" in answer.json["errors"], answer.json
    assert tokens(user) == 100 and provider.opened == []
