"""The playground page at `/` in a real headless browser (Debian's chromium through Selenium and the
system chromedriver: the `browser` fixture in conftest.py): it loads, speaks a sentence from the tiny
fixture, and the audio element plays the streamed response without a JavaScript error."""

import os

import pytest


@pytest.fixture(scope="module")
def server(start_server, model_dir):
    return start_server(model_dir("customvoice_0b6"))


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_the_playground_speaks_in_a_browser(server, browser, fmt, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    assert browser.title == "mlx-qwen-tts playground"
    WebDriverWait(browser, 20).until(lambda d: "ready" in d.find_element("id", "status").text)
    Select(browser.find_element("id", "voice")).select_by_value("ryan")
    Select(browser.find_element("id", "language")).select_by_value("english")
    Select(browser.find_element("id", "format")).select_by_value(fmt)
    text = browser.find_element("id", "text")
    text.clear()
    text.send_keys("Hi there.")
    browser.find_element("id", "speak").click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return window.playground.state")
                                     in ("done", "failed"))
    pg = browser.execute_script("return window.playground")
    assert pg["state"] == "done" and pg["bytes"] > 1000 and pg["errors"] == [], pg
    assert pg["path"] == ("mediasource" if fmt == "mp3" else "blob")  # mp3 plays while it streams
    WebDriverWait(browser, 20).until(lambda d: d.execute_script(
        "const a = document.getElementById('player'); return a.duration > 0 && a.readyState >= 2"))
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return window.playground.playing"))
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
    browser.save_screenshot(str(tmp_path / "playground.png"))
    if fmt == "mp3" and os.environ.get("MLX_QWEN_TTS_SCREENSHOT"):  # docs/playground.png
        browser.save_screenshot(os.environ["MLX_QWEN_TTS_SCREENSHOT"])
