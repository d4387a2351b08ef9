"""The web chat page in real headless Chromium (Debian's chromium + chromedriver, driven by selenium): type a
message, watch the answer arrive in several streamed pieces, each piece a span whose tooltip gives its tokens'
probabilities and alternatives. Skipped where chromium or selenium is missing."""

import json
import os
import shutil

import pytest
import torch

pytest.importorskip("fastapi")
os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
NEEDS = "needs Debian's chromium and chromium-driver"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=NEEDS)]

from conftest import headless_chromium  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from slmkit.base.tokenizer import train_bpe  # noqa: E402
from slmkit.ship.serve.app import create_app  # noqa: E402
from slmkit.ship.serve.engine import Engine  # noqa: E402
from tests.test_serve import start_server, tiny_model  # noqa: E402

COUNT_UPDATES = """
window.__updates = 0;
new MutationObserver((records) => {
  for (const r of records) {
    const el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
    if (el && el.closest && el.closest('.assistant')) window.__updates += 1;
  }
}).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def url(stdlib_dir):
    torch.set_num_threads(1)
    tok = train_bpe([(stdlib_dir / "textwrap.py").read_text(encoding="utf-8")], 320)
    engine = Engine(tiny_model(tok.vocab_size), tok, slots=2).start()
    server, thread, port = start_server(create_app(engine, "browser-test", max_tokens_cap=400))
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    engine.stop()


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


def test_type_a_message_and_see_a_streamed_answer(url, browser):
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "browser-test")
    browser.execute_script(COUNT_UPDATES)
    box = browser.find_element(By.ID, "input")
    box.send_keys("Hello there, who are you?")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1)
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    wait.until(lambda d: reply.get_attribute("data-state") == "done")
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user .content").text == "Hello there, who are you?"
    assert reply.find_element(By.CLASS_NAME, "content").text.strip() != ""
    assert browser.execute_script("return window.__updates") > 1  # it arrived in pieces, not at once
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []
    # a second turn goes out with the history and streams too
    box.send_keys("And again?")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 2)
    second = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[1]
    wait.until(lambda d: second.get_attribute("data-state") == "done")
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []


def test_each_reply_piece_shows_its_probability_and_alternatives(url, browser):
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "model").text == "browser-test")
    box = browser.find_element(By.ID, "input")
    box.send_keys("What does textwrap do?")
    box.send_keys(Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == 1)
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant")
    wait.until(lambda d: reply.get_attribute("data-state") == "done")
    assert browser.find_elements(By.CSS_SELECTOR, ".msg.error") == []
    spans = reply.find_elements(By.CSS_SELECTOR, ".content .tok")
    assert len(spans) > 1
    content = reply.find_element(By.CLASS_NAME, "content")
    assert "".join(s.get_attribute("textContent") for s in spans) == content.get_attribute("textContent")
    titled = [s for s in spans if s.get_attribute("title")]
    assert len(titled) == len(spans)  # every piece of text came with its tokens' logprobs
    matched = 0
    for span in titled:
        blocks = span.get_attribute("title").split("\n\n")  # one per token in this piece
        tokens = []
        for block in blocks:
            lines = block.split("\n")
            token, chance = lines[0].rsplit(" ", 1)
            tokens.append(json.loads(token))
            assert chance.endswith("%") and 0 < float(chance[:-1]) <= 100, lines
            assert lines[1] == "alternatives:" and len(lines) == 2 + 5, lines  # top_logprobs: 5
            alts = [float(line.rsplit(" ", 1)[1][:-1]) for line in lines[2:]]
            assert alts == sorted(alts, reverse=True) and float(chance[:-1]) <= alts[0] + 1e-9
        # a piece is one streamed delta: one token, or several when the server held text back (a possible stop
        # sequence, part of a character) and sent them together
        matched += "".join(tokens) == span.get_attribute("textContent")
    assert matched > 0  # a piece's tooltip names the tokens that make its text
    # hovering shows the tooltip: the browser's native one, from the title of the span under the pointer
    ActionChains(browser).move_to_element(titled[0]).perform()
    hovered = browser.execute_script("return document.querySelector('.tok:hover')")
    assert hovered is not None and hovered.get_attribute("title") == titled[0].get_attribute("title")
