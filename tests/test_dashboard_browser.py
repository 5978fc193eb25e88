"""The dashboard in headless Chromium, against a real gunicorn server: the test makes real
requests (an administrator made with `flask users create --admin`, a grant, paid requests with
failures among them, a purchase through the test provider's checkout, `flask credits verify`),
then logs in on the page and reads each part's numbers. Skipped where Chromium is missing, a
failure instead with CREDITAPP_REQUIRE_BROWSER (see tests/test_browser.py, whose fixtures these are).

With CREDITAPP_DASHBOARD_SCREENSHOT=<path> the screenshot is also copied there (docs/dashboard.png
in the README comes from this test)."""
import os
import shutil
import struct
import zlib
from pathlib import Path

import requests

from creditapp.ledger import credit_service
from creditapp.testing import PASSWORD, make_app
from creditapp.testing.servers import flask_cli, gunicorn, server_env
from tests.test_browser import WAIT_SECONDS, browser, sqlite_url  # noqa: F401  (fixtures)

GEN = "generation_credits"


class Api:
    def __init__(self, url: str):
        self.url = url

    def user(self, username: str) -> dict:
        credentials = {"username": username, "password": PASSWORD}
        made = requests.post(f"{self.url}/api/auth/register", json=credentials, timeout=30)
        assert made.status_code == 201, made.text
        return self.login(username, made.json()["id"])

    def login(self, username: str, user_id: int) -> dict:
        answer = requests.post(f"{self.url}/api/auth/login", json={"username": username, "password": PASSWORD},
                               timeout=30).json()
        headers = {"Authorization": f"Bearer {answer['access_token']}"}
        me = self.balance(headers)
        return {"id": user_id, "name": username, "headers": headers, "start": me[GEN]}

    def balance(self, headers) -> dict:
        return requests.get(f"{self.url}/api/credits/balance", headers=headers, timeout=30).json()

    def post(self, path: str, headers, **kwargs):
        return requests.post(f"{self.url}{path}", headers=headers, timeout=30, **kwargs)


def png_idat(path: Path) -> tuple[int, int, bytes]:
    """Width, height and the compressed pixel data of a PNG (no Pillow here)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width = height = 0
    idat, at = b"", 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        chunk = data[at + 8:at + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        at += 12 + length
    return width, height, idat


def assert_not_blank(shot: Path, blank: Path) -> None:
    """A page of tables, tiles and a chart compresses far worse than a blank page of the same
    size, and its decompressed rows hold many distinct byte values."""
    width, height, pixels = png_idat(shot)
    blank_width, blank_height, blank_pixels = png_idat(blank)
    assert (width, height) == (blank_width, blank_height) and width >= 800
    assert len(pixels) > 10 * len(blank_pixels), (len(pixels), len(blank_pixels))
    assert len(set(zlib.decompress(pixels))) > 100


def test_an_administrator_logs_in_and_sees_what_the_requests_did(browser, sqlite_url, tmp_path):  # noqa: F811
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = server_env(sqlite_url, AI_STUB_FAILURE_RATE="0.5")  # some paid requests fail (and are free)
    made = flask_cli(env, "users", "create", "boss", "--password", PASSWORD, "--admin")
    assert made.returncode == 0, made.stderr
    with gunicorn(env, workers=2, threads=4, log_path=tmp_path / "gunicorn.log") as server:
        api = Api(server.url)
        boss_id = int(made.stdout.rsplit("(id ", 1)[1].rstrip(")\n"))
        boss, alice, bob = api.login("boss", boss_id), api.user("alice"), api.user("bob")
        granted = api.post(f"/api/admin/users/{alice['id']}/credits", boss["headers"],
                           json={"amount": 30})
        assert granted.status_code == 201, granted.text
        ok = failed = 0
        while not (ok >= 2 and failed >= 1):  # 2 × 0.5^n: the loop ends within a few tries
            answer = api.post("/api/generate", alice["headers"], json={"prompt": "a lighthouse"})
            assert answer.status_code in (200, 502), answer.text
            ok, failed = ok + (answer.status_code == 200), failed + (answer.status_code == 502)
            assert ok + failed < 30
        purchase = api.post("/api/purchases", bob["headers"], json={"pack": "starter"}).json()
        paying = requests.post(purchase["checkout_url"], data={"action": "pay"}, timeout=30, allow_redirects=False)
        assert paying.status_code == 303
        with make_app(sqlite_url).app_context():
            hold = credit_service.reserve(bob["id"], 2, GEN, feature="basic_generation")  # bob's, left open
        verified = flask_cli(env, "credits", "verify")
        assert verified.returncode == 0, verified.stderr
        alice_balance = api.balance(alice["headers"])[GEN]

        browser.set_window_size(1280, 900)
        browser.get(f"{server.url}/admin/")
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: "/admin/login" in b.current_url)
        browser.find_element(By.ID, "username").send_keys("boss")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "log-in").click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: b.find_elements(By.ID, "tiles"))

        def text(selector: str) -> str:
            return browser.find_element(By.CSS_SELECTOR, selector).text.strip()

        today = "#tile-today "
        assert text(f'{today}[data-figure="charged-{GEN}"]') == str(ok)
        assert text(f'{today}[data-figure="requests"]') == str(ok + failed)
        assert text(f'{today}[data-figure="failure-rate"]').startswith(f"{failed / (ok + failed) * 100:.1f} %")
        assert text(f'{today}[data-figure="purchases"]') == "1"
        assert text(f'{today}[data-figure="revenue"]') == "5.00 USD"
        signups = boss["start"] + alice["start"] + bob["start"]
        assert text(f'{today}[data-figure="granted-{GEN}"]') == str(signups + 30 + 20)
        series = browser.find_element(By.CSS_SELECTOR, f'#chart-{GEN} g.series[data-feature="basic_generation"]')
        assert series.get_attribute("data-total") == str(ok)
        assert series.find_elements(By.CSS_SELECTOR, f'circle[data-value="{ok}"]')
        top = browser.find_element(By.CSS_SELECTOR, "#top-users tbody tr")
        assert top.find_element(By.TAG_NAME, "a").text == "alice"
        assert top.find_element(By.CSS_SELECTOR, '[data-figure="spent"]').text == str(ok)
        assert top.find_element(By.CSS_SELECTOR, '[data-figure="balance"]').text == str(alice_balance)
        assert browser.find_element(By.ID, "open-holds").get_attribute("data-count") == "1"
        assert text("#verify-result") == "ok"
        first_run = browser.find_element(By.ID, "verify-time").get_attribute("datetime")

        browser.set_window_size(1280, browser.execute_script("return document.documentElement.scrollHeight") + 200)
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))

        browser.find_element(By.ID, "run-verify").click()
        # The page is replaced under the wait: an element found on the old one goes stale.
        WebDriverWait(browser, WAIT_SECONDS, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda b: b.find_element(By.ID, "verify-time").get_attribute("datetime") != first_run)
        assert browser.find_element(By.ID, "verify-time").get_attribute("datetime") > first_run
        assert text("#verify-result") == "ok"

        browser.find_element(By.CSS_SELECTOR, "#top-users tbody tr a").click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: b.find_elements(By.ID, "lots"))
        assert browser.current_url.endswith(f"/admin/users/{alice['id']}")
        assert text(f'[data-figure="balance-{GEN}"]') == str(alice_balance)
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")]
                 for row in browser.find_elements(By.CSS_SELECTOR, "#lots tbody tr")]
        assert sorted(int(c[3]) for c in cells if c[1] == GEN) == sorted([alice["start"], 30])
        rows = [(int(row.get_attribute("data-row-id")), row.get_attribute("data-kind"))
                for row in browser.find_elements(By.CSS_SELECTOR, "#ledger tbody tr")]
        ledger = requests.get(f"{server.url}/api/credits/transactions?limit=25", headers=alice["headers"],
                              timeout=30).json()["items"]
        assert rows == [(item["id"], item["kind"]) for item in ledger]  # the user's own ledger, newest first
        if len(ledger) < 25:  # all of it on the page: one settle per success, one release per failure
            kinds = [item["kind"] for item in ledger if item["credit_type"] == GEN]
            assert (kinds.count("settle"), kinds.count("release"), kinds.count("grant")) == (ok, failed, 2)

        browser.find_element(By.ID, "logout").click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: b.find_elements(By.ID, "log-in"))
        browser.find_element(By.ID, "username").send_keys("alice")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "log-in").click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: b.find_elements(By.ID, "problem"))
        assert "not an administrator" in text("#problem")
        browser.get(f"{server.url}/admin/")
        assert "/admin/login" in browser.current_url

        browser.get("about:blank")
        blank = tmp_path / "blank.png"
        browser.save_screenshot(str(blank))
    assert hold.amount == 2
    assert_not_blank(shot, blank)
    if os.environ.get("CREDITAPP_DASHBOARD_SCREENSHOT"):
        shutil.copy(shot, os.environ["CREDITAPP_DASHBOARD_SCREENSHOT"])
