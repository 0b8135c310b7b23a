"""The dashboard in headless Chromium against a real daemon process with a token (taken from the URL
fragment): the overview's node count follows a join, the nodes table filters, attacker-controlled meta
(<script>, ANSI escapes) renders as text, an event arrives live on the events page, the peers and bans pages
render, and no JS error or alert happens. Generous waits, no timing asserts: the box is shared."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from abuse import NETWORK, live_pool  # noqa: E402

from galaxynode.identity import Identity  # noqa: E402
from galaxynode.nodeclient import connect  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium/chromedriver not installed")
EVIL = "<script>alert(1)</script>\x1b[31mred\x1b[0m"
ADMIN = Identity.generate()
TOKEN = "browser-test-token"
WAIT = 60  # seconds: a loaded 2-core box may be slow; nothing here measures time


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_pages_in_a_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    env = {"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0", "GALAXYNODE_DASHBOARD_TOKEN": TOKEN,
           "GALAXYNODE_ADMISSION_ADMINS": ADMIN.public_text}
    with live_pool(tmp_path / "d", env=env) as pool:
        base = pool.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1) + "dashboard/"
        wait = WebDriverWait(browser, WAIT)

        def text(element_id: str) -> str:
            return browser.find_element(By.ID, element_id).text

        def rows(tbody: str) -> list:
            return browser.find_elements(By.CSS_SELECTOR, f"#{tbody} tr")

        async def until(check) -> None:
            await trio.to_thread.run_sync(lambda: wait.until(lambda b: check()))

        browser.get(base + "#token=" + TOKEN)
        wait.until(lambda b: text("v-nodes") == "0" and text("live") == "live")
        assert "token" not in browser.current_url  # the fragment is dropped once read
        assert browser.find_element(By.ID, "v-key").text.startswith("ed25519:")

        async def scenario() -> None:
            async with connect(pool.url, Identity.generate(), network=NETWORK) as node, \
                    connect(pool.url, ADMIN, network=NETWORK) as admin:
                await node.join(capabilities=["gpu"], meta={"note": EVIL})
                await until(lambda: text("v-nodes") == "1")  # pushed by the stream
                await until(lambda: text("ready-word") == "ready")

                browser.get(base + "nodes")
                await until(lambda: len(rows("nodes")) == 1)
                shown = rows("nodes")[0].text
                assert "<script>alert(1)</script>" in shown and "\\x1b[31mred" in shown
                assert browser.find_elements(By.CSS_SELECTOR, "#nodes script") == []
                browser.find_element(By.ID, "cap").send_keys("cpu")
                await until(lambda: len(rows("nodes")) == 0)

                browser.get(base + "events")
                await until(lambda: any(r.get_attribute("data-topic") == "node.joined" for r in rows("events")))
                await admin.admin("ban", key=Identity.generate().public, duration=600)  # node.banned, live
                await until(lambda: any(r.get_attribute("data-topic") == "node.banned" for r in rows("events")))
                topics = browser.find_element(By.ID, "topics")
                topics.clear()
                topics.send_keys("peer.*")
                await until(lambda: len(rows("events")) == 0)

                browser.get(base + "bans")
                await until(lambda: len(rows("bans")) == 1)
                assert "admin" in rows("bans")[0].text

                browser.get(base + "peers")
                await until(lambda: text("live") == "live")
                assert rows("peers") == []
                assert len(rows("events")) == 0  # the page that is shown, not the others

        trio.run(scenario)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert browser.execute_script("return typeof window.alert") == "function"
