"""The API as browsers see it: a web client on another origin calling it through CORS, and
Swagger UI with no internet.

The browser tests drive headless Chromium (Debian's `chromium` and `chromium-driver`, which
`make browsers` installs) with selenium, against real gunicorn servers on loopback ports. Where
Chromium is missing they are skipped; with CREDITAPP_REQUIRE_BROWSER set (.ci/run sets it) that
is a failure instead. The browser resolves no host name, so a page can reach nothing but the
loopback addresses it is given.
"""
import functools
import http.server
import json
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests
# selenium is imported where it is used, so that this module loads (and skips) without it.

from creditapp.testing import make_app
from creditapp.testing.servers import gunicorn, server_env

CHROMIUM = os.environ.get("CHROMIUM_BINARY") or "/usr/bin/chromium"
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or "/usr/bin/chromedriver"
CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-dev-shm-usage",
    # Every host but 127.0.0.1 fails to resolve: a page can fetch nothing from the internet.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
PAGES = Path(__file__).parent / "browser"
WAIT_SECONDS = 30
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _unavailable(reason: str):
    # CI sets CREDITAPP_REQUIRE_BROWSER: there a missing browser is a failure, not a skip.
    if os.environ.get("CREDITAPP_REQUIRE_BROWSER"):
        pytest.fail(f"Chromium is required here but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver; both stopped, by PID if need be, when the test ends."""
    try:
        from selenium import webdriver
    except ImportError:
        _unavailable("selenium is not installed (pip install -r requirements.txt)")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            _unavailable(f"{path} is missing (`make browsers` installs Debian's chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    # An explicit driver path: selenium then never runs Selenium Manager, which would download one.
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        processes = [service.process.pid, *_descendants(service.process.pid)]
        driver.quit()
        for pid in processes:  # whatever quitting left behind (a crashed tab, a hung helper)
            if _is_chrome(pid):
                os.kill(pid, signal.SIGKILL)


def _is_chrome(pid: int) -> bool:
    """Still running (not a zombie) and still Chromium or its driver, not a process that took the PID over."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return state != "Z" and name.startswith("chrom")


def _descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path):
    """A migrated SQLite database: what a browser sees does not depend on the backend."""
    path = tmp_path / "creditapp.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def static_site(directory: Path):
    """Serves `directory` at http://127.0.0.1:<free port> from a thread: another origin than the API's."""
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def run_web_client(browser, web: str, api: str, username: str) -> dict:
    """Opens tests/browser/client.html on `web` and returns what its calls to `api` answered."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{web}/client.html?{urlencode({'api': api, 'username': username})}")
    results = browser.find_element(By.ID, "results")
    WebDriverWait(browser, WAIT_SECONDS).until(lambda _: results.get_attribute("data-state") == "done")
    return json.loads(results.get_attribute("textContent"))


def test_a_web_client_on_another_origin_registers_logs_in_and_generates(browser, sqlite_url, tmp_path):
    with static_site(PAGES) as web:
        env = server_env(sqlite_url, CORS_ORIGINS=web, GUNICORN_ACCESSLOG="-")
        with gunicorn(env, workers=2, threads=4, log_path=tmp_path / "gunicorn.log") as api:
            results = run_web_client(browser, web, api.url, "webclient")
            log = api.log()

    assert "error" not in results, results
    assert results["register"] == {"status": 201, "body": {"id": results["register"]["body"]["id"],
                                                          "username": "webclient"}}
    assert results["login"]["status"] == 200
    assert results["login"]["body"]["token_type"] == "Bearer"
    assert results["before"]["status"] == 200
    assert results["generate"]["status"] == 200, results["generate"]
    charged = results["generate"]["body"]["charged"]
    assert charged == {"credit_type": "generation_credits", "amount": 1}
    before, after = results["before"]["body"], results["after"]["body"]
    assert before["generation_credits"] == 3  # the signup grant
    assert after["generation_credits"] == before["generation_credits"] - charged["amount"]
    assert results["generate"]["body"]["balance"]["generation_credits"] == after["generation_credits"]
    assert after["ai_tokens"] == before["ai_tokens"]
    # Authorization and a JSON body are not "simple": the browser asked first, and was let through.
    assert re.search(r'"OPTIONS /api/generate HTTP/1\.1" 200', log), log
    assert re.search(r'"POST /api/generate HTTP/1\.1" 200', log), log


def test_a_web_client_on_an_origin_not_listed_is_stopped_by_the_browser(browser, sqlite_url, tmp_path):
    with static_site(PAGES) as web, static_site(PAGES) as stranger:
        env = server_env(sqlite_url, CORS_ORIGINS=web, GUNICORN_ACCESSLOG="-")
        with gunicorn(env, workers=1, threads=4, log_path=tmp_path / "gunicorn.log") as api:
            results = run_web_client(browser, stranger, api.url, "stranger")
            log = api.log()

    assert results == {"error": "TypeError: Failed to fetch"}
    # The preflight got no Access-Control-Allow-Origin, so the registration itself was never sent.
    assert re.search(r'"OPTIONS /api/auth/register HTTP/1\.1"', log), log
    assert "POST /api/auth/register" not in log, log


def test_swagger_ui_lists_every_operation_with_no_internet(browser, sqlite_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with gunicorn(server_env(sqlite_url), workers=1, threads=4) as api:
        document = requests.get(f"{api.url}/api/openapi.json", timeout=10).json()
        browser.get(f"{api.url}/api/docs")
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock"))
        rendered = browser.execute_script("""
            return Array.from(document.querySelectorAll('.opblock'), block => [
                block.querySelector('.opblock-summary-method').textContent,
                block.querySelector('.opblock-summary-path').dataset.path,
                block.textContent,
            ]);""")
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")

    operations = {(method, path) for method, path, _ in rendered}
    documented = {(method.upper(), path) for path, item in document["paths"].items()
                  for method in item if method in HTTP_METHODS}
    assert operations == documented
    assert ("POST", "/api/generate") in operations
    texts = [text for _, _, text in rendered]
    assert any(text.startswith("POST/api/generate") for text in texts), texts
    assert any("/api/credits/balance" in text for text in texts), texts
    # Everything the page loaded came from the app: its three files, the API document (and a favicon).
    assert f"{api.url}/api/docs/static/swagger-ui-bundle.js" in loaded, loaded
    assert all(url.startswith(f"{api.url}/") for url in loaded), loaded


def test_the_docs_page_loads_its_scripts_and_styles_from_the_app(tmp_path):
    client = make_app(f"sqlite:///{tmp_path / 'docs.db'}").test_client()
    page = client.get("/api/docs")
    assert page.status_code == 200
    assets = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3, page.text  # swagger-ui.css, its standalone preset and its bundle
    for url in assets:
        assert url.startswith("/api/docs/static/"), f"{url} is not served by the app"
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert answer.content_type.startswith(("text/css", "text/javascript")), (url, answer.content_type)
        assert len(answer.data) > 10_000, url


def test_an_unknown_docs_file_is_a_json_404(tmp_path):
    client = make_app(f"sqlite:///{tmp_path / 'docs.db'}").test_client()
    answer = client.get("/api/docs/static/no-such-file.js")
    assert answer.status_code == 404
    assert answer.json["error"] == "not_found"


def test_a_buyer_presses_pay_on_the_test_checkout_and_the_balance_shows_the_pack(browser, sqlite_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    env = server_env(sqlite_url)  # the testing configuration: the built-in test provider
    with gunicorn(env, workers=2, threads=4, log_path=tmp_path / "gunicorn.log") as api:
        credentials = {"username": "buyer", "password": "correct-horse-battery"}
        assert requests.post(f"{api.url}/api/auth/register", json=credentials, timeout=30).status_code == 201
        token = requests.post(f"{api.url}/api/auth/login", json=credentials, timeout=30).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        before = requests.get(f"{api.url}/api/credits/balance", headers=headers, timeout=30).json()
        purchase = requests.post(f"{api.url}/api/purchases", json={"pack": "starter"}, headers=headers,
                                 timeout=30).json()
        assert purchase["checkout_url"].startswith(f"{api.url}/checkout/test/"), purchase
        browser.get(purchase["checkout_url"])
        assert "5.00 USD" in browser.find_element(By.ID, "price").text
        browser.find_element(By.ID, "pay").click()
        WebDriverWait(browser, WAIT_SECONDS).until(lambda b: "/checkout/return" in b.current_url)
        assert "Thank you" in browser.page_source
        after = requests.get(f"{api.url}/api/credits/balance", headers=headers, timeout=30).json()
        bought = requests.get(f"{api.url}/api/purchases/{purchase['id']}", headers=headers, timeout=30).json()
    assert bought["status"] == "paid"
    assert after["generation_credits"] == before["generation_credits"] + 20
