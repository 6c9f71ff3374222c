"""
The admin page in a real browser: Debian's chromium, headless, driven by
Selenium through chromedriver (both local: nothing is downloaded). The page
loads from adminAddr, shows the Realtime session the test opened with its
consumer and cost, and its button ends it: the client gets 1000 "closed by
operator" and the session's tokens are in the access log. Nothing on the
page may fail (the browser's console: a script error, a request the
Content-Security-Policy blocked). Skipped without chromium and
chromedriver, except in CI, where it must run (C{.ci/run} installs them).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from agw.metering import AccessLog
from tests.support import listening_fake, open_client, recv_event, running_gateway, wait_closed, wait_until
from tests.test_admin_page import TEAM_KEY, admin_config, respond

WAIT = 15.0  # seconds the page has to show what the test waits for (it polls every second)


def browser_paths() -> tuple[str, str]:
    """chromium and chromedriver; skips without them (fails in CI)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium or chromedriver is not installed: .ci/run installs them (apt-get install chromium chromium-driver)")
        raise SkipTest("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver; CI installs them)")
    return chromium, driver


def start_browser(chromium: str, driver: str, profile: str) -> Any:
    """Headless chromium through C{driver}, its console kept for the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def operate(admin: str, chromium: str, driver_path: str) -> dict[str, Any]:
    """
    In the browser: load the page, wait for the session's row and its cost,
    read what the page shows, press "End session", wait for the row to go.
    Returns what was read (blocking: run in a thread).
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with tempfile.TemporaryDirectory() as profile:
        driver = start_browser(chromium, driver_path, profile)
        try:
            driver.get(admin + "/")
            wait = WebDriverWait(driver, WAIT)
            row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sessions-body tr[data-session-id]"))
            wait.until(lambda d: float(row.find_element(By.CSS_SELECTOR, "td.cost").get_attribute("data-usd") or 0) > 0)
            seen = {name: row.find_element(By.CSS_SELECTOR, f"td.{name}").text for name in ("consumer", "model", "transport", "cost")}
            seen["status"] = driver.find_element(By.ID, "status").text
            seen["consumers"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#consumers-body td.consumer") if e.text]
            seen["costs"] = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#costs-body td.consumer")]
            row.find_element(By.CSS_SELECTOR, "button.end-session").click()
            wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#sessions-body tr[data-session-id]"))
            seen["empty"] = driver.find_element(By.ID, "sessions-empty").is_displayed()
            seen["console"] = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
            return seen
        finally:
            driver.quit()


class AdminPageInBrowserTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_the_page_shows_a_live_session_and_ends_it(self) -> Any:
        chromium, driver = browser_paths()
        _, upstream_port = yield listening_fake(self)
        database = "sqlite://" + os.path.abspath(self.mktemp() + ".db")
        access_log = io.StringIO()
        gateway, service, port = yield running_gateway(self, admin_config(upstream_port, database), access_log=AccessLog(access_log))
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
        ws = yield deferToThread(open_client, url, additional_headers={"Authorization": f"Bearer {TEAM_KEY}"})
        self.addCleanup(deferToThread, ws.close)
        yield deferToThread(recv_event, ws)
        yield deferToThread(respond, ws)  # a response: the session has a cost

        admin = f"http://127.0.0.1:{service.admin.port.getHost().port}"
        seen = yield deferToThread(operate, admin, chromium, driver)
        self.assertEqual((seen["consumer"], seen["transport"]), ("team-a", "websocket"))
        self.assertTrue(seen["model"].startswith("gpt-realtime"), seen)
        self.assertRegex(seen["cost"], r"^\$0\.\d{6}$")
        self.assertIn("live", seen["status"])
        self.assertEqual(seen["consumers"], ["team-a", "team-b"])
        self.assertEqual(seen["costs"], ["team-a"])
        self.assertTrue(seen["empty"])
        self.assertEqual(seen["console"], [])  # no script error, nothing the page's CSP blocked

        code, reason = yield deferToThread(wait_closed, ws)
        self.assertEqual((code, reason), (1000, "closed by operator"))
        yield wait_until(lambda: '"realtime.session"' in access_log.getvalue())
        (line,) = [json.loads(l) for l in access_log.getvalue().splitlines() if '"realtime.session"' in l]
        self.assertEqual((line["agw.consumer"], line["websocket.close_code"], line["agw.responses"]), ("team-a", 1000, 1))
        self.assertGreater(line["agw.session.output_tokens"], 0)
        self.assertGreater(line["agw.session.cost_usd"], 0)
