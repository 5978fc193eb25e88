"""The README's webhook receiver, verbatim: run as it says (`flask --app receiver run`), it takes
what creditapp sends and refuses a body whose signature does not match."""
import re
import subprocess
import sys
import time

import pytest
import requests

from creditapp.ledger.clock import utcnow
from creditapp.ledger.transactions import atomic
from creditapp.testing.servers import ROOT, free_port, stop
from creditapp.webhooks import outbox
from creditapp.webhooks.queue import webhook_queue

pytestmark = pytest.mark.slow


def receiver_source() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Outgoing webhooks"):text.index("## API keys and team wallets")]
    (source,) = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert source.startswith("# receiver.py: flask --app receiver run --port 8000\n")
    return source


@pytest.fixture
def creditapp_settings():
    return {"WEBHOOK_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": "0"}


def test_the_readme_receiver_verifies_what_creditapp_sends(client, make_user, tmp_path):
    admin = make_user(admin=True)
    (tmp_path / "receiver.py").write_text(receiver_source())
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    answer = client.post("/api/admin/webhooks", json={"url": url, "events": ["purchase.paid"]}, headers=admin.headers)
    log = tmp_path / "receiver.log"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "receiver", "run", "--port", str(port)],
                                   cwd=tmp_path, env={"WEBHOOK_SECRET": answer.json["secret"], "PATH": "/usr/bin:/bin"},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while "Running on" not in log.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        with atomic() as session:
            outbox.emit(session, "purchase.paid", {"purchase_id": 42}, at=utcnow())
        webhook_queue().sweep(inline=True)
        forged = requests.post(url, data=b'{"type":"purchase.paid","timestamp":"x","data":{}}', timeout=5, headers={
            "webhook-id": "msg_1", "webhook-timestamp": str(int(time.time())), "webhook-signature": "v1,Zm9yZ2Vk"})
    finally:
        stop(process)
    output = log.read_text()
    assert "msg_1 purchase.paid {'purchase_id': 42}" in output, output
    assert forged.status_code == 400 and forged.text == "bad signature"
    (delivery,) = client.get(f"/api/admin/webhooks/{answer.json['id']}/deliveries", headers=admin.headers).json["items"]
    assert [(a["status"], a["response_code"]) for a in delivery["attempts"]] == [("succeeded", 204)]
