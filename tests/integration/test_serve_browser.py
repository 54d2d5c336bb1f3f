"""The chat page of ``lhp serve`` in a real browser: Debian's headless Chromium driven by Selenium
types a prompt and reads the answer as it streams in.

Needs the ``chromium`` and ``chromium-driver`` packages (``scripts/ci_chromium.sh`` installs them).
Without them the test is skipped, except in CI (``CI=true``), where it fails instead.
``LHP_SERVE_SCREENSHOT=<file.png>`` saves a screenshot of the page (docs/img/serve_chat.png);
``LHP_SERVE_BROWSER_CKPT=<ckpt>`` serves that checkpoint instead of the tiny one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from experiments.serve import build_app, serve_in_thread
from tests.conftest import compose_config
from tests.integration.test_serve import tiny_checkpoint

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        why = f"{CHROMIUM} or {CHROMEDRIVER} missing: run scripts/ci_chromium.sh (as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,760", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_chat_page_streams_the_answer(browser, tmp_path_factory: pytest.TempPathFactory,
                                      data_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    other = os.environ.get("LHP_SERVE_BROWSER_CKPT")
    ckpt = other or tiny_checkpoint(tmp_path_factory, data_dir)
    out = tmp_path_factory.mktemp("serve_browser")
    app = build_app(compose_config("serve", [f"ckpt_path={ckpt}"], out))
    with serve_in_thread(app) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "context" in d.find_element(By.ID, "model").text)  # /v1/models read
        # the tiny model greedy: its likeliest first token is not <eos> (sampling could end at once)
        temperature = "0.8" if other else "0"
        for field, value in (("temperature", temperature), ("max_tokens", "48"), ("seed", "1")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.send_keys("Where is Mary?")
        browser.find_element(By.ID, "send").click()
        answer = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant"))
        wait.until(lambda d: answer.get_attribute("data-done") == "true")
        text = answer.find_element(By.CSS_SELECTOR, ".text").get_attribute("textContent")
        chunks = int(answer.get_attribute("data-chunks"))
        stats = answer.find_element(By.CSS_SELECTOR, ".stats").text
        assert "error" not in answer.find_element(By.CSS_SELECTOR, ".stats").get_attribute("class"), stats
        assert text, f"empty answer ({stats})"  # (the 30-step model's greedy answer may be blanks)
        assert chunks > 1, f"the answer came in {chunks} chunk(s), not streamed"
        assert browser.find_element(By.CSS_SELECTOR, ".msg.user .text").text == "Where is Mary?"
        shot = os.environ.get("LHP_SERVE_SCREENSHOT")
        if shot:
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(tmp_path_factory.getbasetemp() / "serve_chat.png"))
            shutil.copyfile(tmp_path_factory.getbasetemp() / "serve_chat.png", shot)
