"""The README's own AI provider ("Plugging in your own AI provider"), run as written: the app it
makes answers the paid routes with the provider's results and charges what it reports."""
import json
import re

import pytest

from creditapp.extensions import db
from creditapp.testing import ledger_is_clean
from creditapp.testing.servers import ROOT


@pytest.fixture
def readme_module() -> dict:
    text = (ROOT / "README.md").read_text()
    part = text[text.index("### Plugging in your own AI provider"):text.index("### Browser clients")]
    (code,) = re.findall(r"^```python\n(.*?)^```", part, re.S | re.M)
    assert code.startswith("# echo_provider.py\n")
    module = {"__name__": "echo_provider"}
    exec(compile(code, "README.md: echo_provider.py", "exec"), module)
    return module


@pytest.fixture
def echo_client(readme_module, database_url):
    app = readme_module["create_echo_app"]({"SQLALCHEMY_DATABASE_URI": database_url, "JOBS_BROKER_URL": "stub://"})
    yield app.test_client()
    with app.app_context():
        db.engine.dispose()


def login(client, user) -> dict:
    response = client.post("/api/auth/login", json={"username": user.username, "password": user.password})
    assert response.status_code == 200, response.json
    return {"Authorization": f"Bearer {response.json['access_token']}"}


def test_the_readme_provider_answers_and_is_charged_what_it_reports(echo_client, make_user):
    headers = login(echo_client, make_user(credits=2, tokens=100))

    image = echo_client.post("/api/generate/hairstyle", json={"image_url": "https://example.com/a.png",
                                                             "hairstyle": "bob"}, headers=headers)
    assert image.status_code == 200, image.json
    assert image.json["result"] == {"feature": "change_hairstyle",
                                    "image_url": "https://images.example.com/change_hairstyle.png"}
    assert image.json["charged"] == {"credit_type": "generation_credits", "amount": 1}

    completed = echo_client.post("/api/ai/complete", json={"prompt": "one two three", "max_tokens": 2},
                                 headers=headers)
    assert completed.status_code == 200, completed.json
    assert completed.json["result"] == {"text": "three two"}
    assert completed.json["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert completed.json["charged"] == {"credit_type": "ai_tokens", "amount": 5}
    assert completed.json["balance"] == {"generation_credits": 1, "ai_tokens": 95}
    ledger_is_clean()


def test_the_readme_provider_without_stream_streams_its_completion_as_one_piece(echo_client, make_user):
    headers = login(echo_client, make_user(tokens=100))
    streamed = echo_client.post("/api/ai/complete", json={"prompt": "one two three", "max_tokens": 2, "stream": True},
                                headers=headers)
    assert streamed.status_code == 200 and streamed.mimetype == "text/event-stream"
    events = [json.loads(line[len("data: "):]) for line in streamed.get_data(as_text=True).splitlines()
              if line.startswith("data: ")]
    assert [event["type"] for event in events] == ["delta", "done"] and events[0]["text"] == "three two"
    assert events[1]["charged"] == {"credit_type": "ai_tokens", "amount": 5}
    ledger_is_clean()
