"""`nami serve` in a real browser: headless Chromium (the OS package) loads the page against a server
on a committed run (the shipped reader: `nami serve` with no run named), asks a question, and the
highlighted answer must be the API's answer.

`.ci/run` installs the browser (Debian: chromium, chromium-driver, a Japanese font) and selenium; on
CI a missing browser fails this test instead of skipping it. ``NAMI_SCREENSHOT=path.png`` also keeps
the page's screenshot there (README's picture is taken this way: docs/images/serve.png).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)


def _need(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}: .ci/run installs it (apt-get install chromium chromium-driver; pip install selenium)")
    pytest.skip(f"{what} (apt-get install chromium chromium-driver fonts-ipafont-gothic; pip install selenium)")


def _browser() -> tuple[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need("selenium is not installed")
    binary = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = next((shutil.which(d) for d in DRIVERS if shutil.which(d)), None)
    if binary is None or driver is None:
        _need("no Chromium and chromedriver on PATH")
    return binary, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> object:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture()
def server():
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nami", "serve", "--port", str(port)],  # the shipped reader
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"nami serve did not start: {proc.stdout.read()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_the_page_highlights_the_answer_the_api_gives(server, tmp_path):
    binary, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1100,760", "--lang=ja"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        browser.get(server + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#qa-models input")))  # the models loaded
        context = browser.find_element(By.ID, "context").get_attribute("value")
        question = browser.find_element(By.ID, "question").get_attribute("value")
        assert context.startswith("富士山は") and question  # the page's example, readable (no mojibake)
        browser.find_element(By.ID, "ask").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#answers .context mark")))
        shown = browser.find_element(By.CSS_SELECTOR, "#answers .answer").text
        marked = browser.find_element(By.CSS_SELECTOR, "#answers .context mark").text
        whole = browser.find_element(By.CSS_SELECTOR, "#answers .context").text
        api = _post(server + "/v1/question-answering", {"question": question, "context": context, "top_k": 1})
        best = api[0]
        assert best["answer"] and context[best["start"]:best["end"]] == best["answer"]
        assert shown == marked == best["answer"], (shown, marked, best)
        assert whole == context  # the highlighted context is the context, character for character
        assert "3776" in shown  # the page's example question, answered by the shipped reader
        shot = tmp_path / "serve-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        keep = os.environ.get("NAMI_SCREENSHOT")
        if keep:
            Path(keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, keep)
    finally:
        browser.quit()
