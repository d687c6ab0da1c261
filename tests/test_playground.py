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


def test_live_mode_speaks_text_while_it_is_typed(server, browser, tmp_path):
    """Live mode: pieces typed into the box go over `WS /v1/audio/speech/stream` as they are typed,
    Enter (then the Finish button) ends an utterance, and the PCM is played through Web Audio."""
    import time

    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda d: "ready" in d.find_element("id", "status").text)
    Select(browser.find_element("id", "voice")).select_by_value("ryan")
    Select(browser.find_element("id", "language")).select_by_value("english")
    text = browser.find_element("id", "text")
    text.clear()
    browser.find_element("id", "live").click()
    format_ = Select(browser.find_element("id", "format"))
    assert browser.find_element("id", "speak").text == "Finish" and format_.first_selected_option.text == "pcm (live)"
    for piece in ["Hello the", "re, this is ", "spoken while it is typ", "ed."]:
        text.send_keys(piece)
        time.sleep(0.4)  # longer than the page's debounce: each piece is its own input.text
    text.send_keys(Keys.ENTER)

    def live(driver):
        return driver.execute_script("return window.playground.live")

    def finished(driver):  # every utterance got its audio.done, none is open (the tiny random model may end
        state = live(driver)  # one by itself before the input is done: the page then starts a new one)
        return state["errors"] or (state["state"] == "done" and state["done"] == state["utterances"] > 0)

    WebDriverWait(browser, 90).until(finished)
    state = live(browser)
    assert state["errors"] == [] and state["state"] == "done", state
    assert state["pieces"] >= 4 and state["bytes"] > 1000 and state["ttfa"] is not None, state
    assert abs(state["seconds"] - state["bytes"] / 2 / 24000) < 1e-6, state  # s16le mono at 24 kHz
    assert f"{state['done']} audio.done" in browser.find_element("id", "status").text
    assert text.get_attribute("value") == "Hello there, this is spoken while it is typed."  # Enter: no newline
    # a second utterance in the same session, ended by the button
    text.send_keys(" And more.")
    time.sleep(0.4)
    browser.find_element("id", "speak").click()
    first = state["done"]
    WebDriverWait(browser, 90).until(lambda d: finished(d) and live(d)["done"] > first)
    state = live(browser)
    # every chunk was played through Web Audio (at most real time: headless chromium's clock may run faster)
    WebDriverWait(browser, 30 + state["seconds"]).until(lambda d: live(d)["played"] >= state["seconds"] - 1e-6)
    assert state["errors"] == [] and state["pieces"] >= 5, state
    browser.save_screenshot(str(tmp_path / "playground-live.png"))
    if os.environ.get("MLX_QWEN_TTS_SCREENSHOT_LIVE"):
        browser.save_screenshot(os.environ["MLX_QWEN_TTS_SCREENSHOT_LIVE"])
    browser.find_element("id", "live").click()  # back to HTTP mode: session.close
    assert browser.find_element("id", "speak").text == "Speak" and format_.first_selected_option.text != "pcm (live)"
    assert browser.execute_script("return window.playground.errors") == []
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe
