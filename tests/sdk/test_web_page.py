"""The photo-chat page of `covip serve`, end to end in headless Chromium from Debian's packages (Selenium +
/usr/bin/chromedriver, no downloads): remember a photo, ask about a new one, see the answer and the memories
used, forget one; then the token prompt of a server that needs a token.

Skips only when chromium / chromium-driver are not installed (``apt-get install -y chromium
chromium-driver``). ``COVIP_UPDATE_SCREENSHOT=1`` also writes the screenshot to docs/screenshot.png.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from covip.sdk.server import BackgroundServer, ServeConfig
from tests.sdk.serve_util import fast_assistant, png

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver")) if p and Path(p).exists()),
                    None)

pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
                                       "chromium-driver)")


@pytest.fixture
def browser(tmp_path: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="covip-chromium-", dir=tmp_path)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def assistant(tmp_path: Path, tiny_engine, tiny_embedder):
    bot = fast_assistant(tmp_path / "home", tiny_engine, tiny_embedder)
    yield bot
    bot.memory.close()


def test_remember_ask_forget_in_the_browser(browser, assistant, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    photos = {}
    for key, (name, variant) in {"bori": ("Bori", 0), "bori-new": ("Bori", 7), "mom": ("Mom", 0)}.items():
        photos[key] = tmp_path / f"{key}.png"
        photos[key].write_bytes(png(name, variant))
    assistant.memory.add_user("me")
    assistant.memory.remember("me", photos["mom"], "User: Mom in her red coat at Busan station, waving goodbye.",
                              ["Mom"], place="Busan station", taken_at="2024-11-02T08:15")

    with BackgroundServer(assistant, ServeConfig(port=0)) as srv:
        browser.get(srv.url + "/")
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "model:"))
        assert not browser.find_element(By.ID, "meaningless").get_attribute("hidden")  # the tiny model says so

        # upload a photo and remember it with a note
        browser.find_element(By.ID, "file").send_keys(str(photos["bori"]))
        wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:image/png"))
        browser.find_element(By.ID, "note").send_keys("This is Bori, my white jindo, at the Han river.")
        browser.find_element(By.ID, "concepts").send_keys("Bori")
        browser.find_element(By.ID, "remember").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Remembered photo"))
        bori_id = assistant.memory.find_photo("me", photos["bori"]).id

        # ask about a new photo: the answer streams in, with the caption and the memories used
        browser.find_element(By.ID, "file").send_keys(str(photos["bori-new"]))
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "bori-new.png"))
        browser.find_element(By.ID, "question").send_keys("Who is this, and where did I last see her?")
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_element(By.ID, "answer").get_attribute("data-done") == "1")
        answer = browser.find_element(By.ID, "answer")
        assert answer.text.strip() and "error" not in answer.get_attribute("class")
        assert browser.find_element(By.ID, "caption").text.strip()
        items = browser.find_elements(By.CSS_SELECTOR, "#memories li.memory")
        assert {int(li.get_attribute("data-photo-id")) for li in items} >= {bori_id}
        assert "Han river" in browser.find_element(By.ID, "memories").text
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#memories img[data-loaded='1']")) == len(items))

        shot = tmp_path / "screenshot.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("COVIP_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, ROOT / "docs" / "screenshot.png")

        # forget the Bori memory from the page: gone from the list and from the memory
        li = browser.find_element(By.CSS_SELECTOR, f"#memories li.memory[data-photo-id='{bori_id}']")
        li.find_element(By.CSS_SELECTOR, "button.forget").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), f"Forgot photo {bori_id}"))
        assert not browser.find_elements(By.CSS_SELECTOR, f"#memories li.memory[data-photo-id='{bori_id}']")
        assert [p.id for p in assistant.memory.photos("me")] == [assistant.memory.find_photo("me", photos["mom"]).id]
        assert assistant.memory.verify().ok


def test_page_asks_for_the_token(browser, assistant):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    with BackgroundServer(assistant, ServeConfig(port=0, token="s3cret-token")) as srv:
        browser.get(srv.url + "/")
        wait.until(ec.visibility_of_element_located((By.ID, "token-form")))
        assert "API token" in browser.find_element(By.ID, "status").text
        browser.find_element(By.ID, "token").send_keys("s3cret-token")
        browser.find_element(By.ID, "token-save").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "model"), "model:"))
        assert not browser.find_element(By.ID, "token-form").is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('covip-token')") == "s3cret-token"
