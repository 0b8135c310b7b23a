"""The dashboard in headless Chromium against a real daemon: the node count follows a join, the nodes table
filters, and attacker-controlled meta (<script>, ANSI escapes) renders as text with no alert or JS error."""

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


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome'}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_overview_and_nodes_in_a_browser(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    with live_pool(tmp_path / "d", env={"GALAXYNODE_METRICS_LISTEN": "127.0.0.1:0"}) as pool:
        base = pool.wait_for(r"serving metrics on (http://127\.0\.0\.1:\d+/)metrics").group(1)
        browser.get(base + "dashboard/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_element(By.ID, "v-nodes").text == "0")

        async def join_and_check() -> None:
            async with connect(pool.url, Identity.generate(), network=NETWORK) as node:
                await node.join(capabilities=["gpu"], meta={"note": EVIL})
                await trio.to_thread.run_sync(
                    lambda: wait.until(lambda b: b.find_element(By.ID, "v-nodes").text == "1"))
                await trio.to_thread.run_sync(
                    lambda: wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#nodes tr")) == 1))
                rows = browser.find_elements(By.CSS_SELECTOR, "#nodes tr")
                assert "<script>alert(1)</script>" in rows[0].text
                assert browser.find_elements(By.CSS_SELECTOR, "#nodes script") == []
                browser.find_element(By.ID, "cap").send_keys("cpu")
                await trio.to_thread.run_sync(
                    lambda: wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#nodes tr")) == 0))

        trio.run(join_and_check)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        assert browser.execute_script("return typeof window.alert") == "function"
