"""The chat page of `python -m pyengine serve` (pyengine/serve/static/index.html) in a real browser:
headless Chromium driven through Selenium, against the real server in a subprocess on the default
model (SmolLM2-135M-Instruct).

A greedy answer in the page must equal the API's answer to the same messages and settings (so the
page sends the whole conversation, its settings, and shows the streamed text unchanged); Stop keeps
the partial answer, the server stops generating, and the next message carries on the conversation.
Errors are shown (and the message given back), the API key is sent and remembered, and the page's
reader of server-sent events is fed streams cut at every byte.

Chromium and chromedriver (Debian: chromium, chromium-driver) missing skip these tests, except where
CI=true: there they fail (.ci/run installs them). The waits are for conditions, with generous
deadlines: the machine may be busy.
"""

import contextlib
import os
import shutil

import pytest

import serve_util

try:
    import httpx
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    httpx = webdriver = None
    IMPORT_ERROR = f"{e.name} is not installed (pip install \".[test]\")"

ANSWER_S = 180   # a whole answer, on a busy machine with one thread


def missing(what):
    """Skips the test for a missing tool, or fails it where CI=true (CI must install the tools)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI=true, so the CI image must provide it")
    pytest.skip(what)


def browser_paths():
    """(chromium, chromedriver), or a skip (a failure under CI) if either is missing."""
    if webdriver is None:
        missing(IMPORT_ERROR)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if chromium is None or driver is None:
        missing("no chromium or chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    return chromium, driver


@contextlib.contextmanager
def running_server(*args):
    """The base URL of `python -m pyengine serve --port 0 -t 1 *args`, stopped on leaving."""
    browser_paths()  # without a browser, the model is not loaded for nothing
    with serve_util.running_server("-t", "1", *args) as url:
        yield url


@pytest.fixture(scope="module")
def server():
    with running_server() as url:
        yield url


API_KEY = "page-test-key"


@pytest.fixture(scope="module")
def keyed_server():
    with running_server("--api-key", API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium under chromedriver."""
    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,800"):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as e:
        pytest.fail(f"chromium did not start under {driver_path}: {e.msg}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(server, browser):
    """The chat page, freshly loaded with empty settings."""
    browser.get(server + "/")
    browser.execute_script("localStorage.clear()")
    browser.get(server + "/")
    return browser


def settings(driver, **values):
    """Opens the settings panel and fills in its fields (element id = request field)."""
    driver.execute_script("document.getElementById('settings').open = true")
    for name, value in values.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))


def answers(driver):
    """The assistant bubbles' texts (their text content: the answer exactly, whitespace included)."""
    return [el.get_property("textContent") for el in driver.find_elements(By.CSS_SELECTOR, ".message.assistant")]


def ask(driver, text, press_enter=False):
    """Types text and sends it (Enter or the Send button); waits until the answer is complete
    (the stats line shows its speed) and returns that answer."""
    before = len(answers(driver))
    box = driver.find_element(By.ID, "input")
    for i, line in enumerate(text.split("\n")):
        if i:
            box.send_keys(Keys.SHIFT, Keys.ENTER)  # a new line; Enter alone would send
        box.send_keys(line)
    if press_enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, ANSWER_S).until(
        lambda d: (len(answers(d)) == before + 1 and d.find_element(By.ID, "stats").text
                   and d.find_element(By.ID, "send").is_enabled()) or d.find_element(By.ID, "error").text)
    assert driver.find_element(By.ID, "error").text == ""
    assert "tokens/s" in driver.find_element(By.ID, "stats").text
    answer = answers(driver)[-1]
    assert answer
    return answer


def api_answer(server, messages, **fields):
    """The content and usage of a plain (not streamed) request to the API."""
    r = httpx.post(server + "/v1/chat/completions", json={"messages": messages, **fields}, timeout=ANSWER_S)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]


def test_page_answers_as_the_api_does(server, page):
    system = "You are a helpful assistant. Answer briefly."
    settings(page, system=system, temperature=0, max_tokens=40, seed=5)
    question = "What is the capital of France?\nAnswer in one sentence."
    answer = ask(page, question, press_enter=False)
    expected, usage = api_answer(server, [{"role": "system", "content": system}, {"role": "user", "content": question}],
                                 temperature=0, max_tokens=40, seed=5)
    assert answer == expected
    stats = page.find_element(By.ID, "stats").text
    assert f"{usage['completion_tokens']} tokens" in stats and f"prompt {usage['prompt_tokens']} tokens" in stats
    # The user's bubble keeps the newline of the message.
    user = page.find_elements(By.CSS_SELECTOR, ".message.user")
    assert [u.get_property("textContent") for u in user] == [question]

    # A second turn, sent with Enter: the page sends the whole conversation.
    follow_up = "And of Italy?"
    answer2 = ask(page, follow_up, press_enter=True)
    expected2, _ = api_answer(server, [{"role": "system", "content": system}, {"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}],
                              temperature=0, max_tokens=40, seed=5)
    assert answer2 == expected2
    assert answers(page) == [answer, answer2]

    # New chat empties the conversation.
    page.find_element(By.ID, "new-chat").click()
    assert answers(page) == [] and page.find_elements(By.CSS_SELECTOR, ".message") == []


def test_messages_are_shown_as_text(server, page):
    """Markup in a message is shown, never interpreted (user and assistant bubbles alike: textContent)."""
    text = "<b id=injected>bold</b> & <img src=x onerror=alert(1)>"
    page.execute_script("document.getElementById('input').value = arguments[0]", text)
    settings(page, max_tokens=1, temperature=0)
    page.find_element(By.ID, "send").click()
    WebDriverWait(page, ANSWER_S).until(lambda d: d.find_element(By.ID, "send").is_enabled())
    assert page.find_elements(By.ID, "injected") == []
    assert page.find_element(By.CSS_SELECTOR, ".message.user").get_property("textContent") == text


def test_stop_keeps_the_partial_answer_and_the_chat_goes_on(server, page):
    settings(page, temperature=0, max_tokens=4000)
    story = "Tell me a very long story about a dragon."
    box = page.find_element(By.ID, "input")
    box.send_keys(story)
    page.find_element(By.ID, "send").click()
    WebDriverWait(page, ANSWER_S, poll_frequency=0.1).until(lambda d: len((answers(d) or [""])[-1]) >= 40)
    assert page.find_element(By.ID, "stop").is_enabled()
    page.find_element(By.ID, "stop").click()
    WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "send").is_enabled())
    assert not page.find_element(By.ID, "stop").is_enabled()
    assert "stopped" in page.find_element(By.ID, "stats").text
    assert page.find_element(By.ID, "error").text == ""
    partial = answers(page)[-1]
    assert len(partial) >= 40
    # The server stops generating once the page has gone away from the stream.
    WebDriverWait(page, 60, poll_frequency=0.5).until(
        lambda d: httpx.get(server + "/health", timeout=30).json()["slots_processing"] == 0)
    assert answers(page)[-1] == partial

    # The page stays usable, and the partial answer is part of the conversation sent next.
    settings(page, max_tokens=20)
    follow_up = "Give the dragon a name."
    answer = ask(page, follow_up)
    expected, _ = api_answer(server, [{"role": "user", "content": story}, {"role": "assistant", "content": partial},
                                      {"role": "user", "content": follow_up}], temperature=0, max_tokens=20)
    assert answer == expected
    assert answers(page) == [partial, answer]


def test_an_error_is_shown_and_the_message_kept(server, page):
    settings(page, temperature=-1)
    page.find_element(By.ID, "input").send_keys("Hello")
    page.find_element(By.ID, "send").click()
    WebDriverWait(page, 60).until(lambda d: d.find_element(By.ID, "error").text)
    error = page.find_element(By.ID, "error").text
    assert "HTTP 400" in error and "temperature must be >= 0" in error
    # The turn is taken back: no bubbles, the message is back in the box to send again.
    assert page.find_elements(By.CSS_SELECTOR, ".message") == []
    assert page.find_element(By.ID, "input").get_property("value") == "Hello"
    assert page.find_element(By.ID, "send").is_enabled()


PARSE_SPLIT_STREAMS = """
const [text, finish] = [arguments[0], arguments[arguments.length - 1]];
const bytes = new TextEncoder().encode(text);
function stream(parts) {
  return new Response(new ReadableStream({ start(c) { for (const p of parts) c.enqueue(p); c.close(); } }));
}
async function read(parts) {
  let got = "";
  try {
    await readEvents(stream(parts), (e) => { got += e.choices[0]?.delta.content ?? ""; });
  } catch (e) {
    return got + " !" + e.message;
  }
  return got;
}
(async () => {
  const results = [];
  for (let cut = 0; cut <= bytes.length; cut++) results.push(await read([bytes.slice(0, cut), bytes.slice(cut)]));
  results.push(await read(Array.from(bytes, (b) => new Uint8Array([b]))));
  finish(results);
})().catch((e) => finish(["failed: " + e]));
"""


@pytest.mark.parametrize("events, expected", [
    # Lines split anywhere, inside a UTF-8 character too; CRLF line ends; comments; the usage chunk.
    ('data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\r\n\r\n: a comment\n\n'
     'data: {"choices":[{"delta":{"content":"é€😀\\n"}}]}\n\ndata: {"choices":[{"delta":{"content":" b"}}]}\n\n'
     'data: {"choices":[],"usage":{"completion_tokens":2}}\n\ndata: [DONE]\n\n', "é€😀\n b"),
    # An error event ends the stream with its message.
    ('data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"error":{"message":"the model failed"}}\n\n',
     "a !the model failed"),
    # A stream that ends without [DONE] is an error, not a complete answer.
    ('data: {"choices":[{"delta":{"content":"a"}}]}\n\n', "a !the connection closed before the answer was complete"),
])
def test_events_split_anywhere_are_read_whole(server, page, events, expected):
    """The page's SSE reader (readEvents) on a stream cut in two at every byte, and one byte at a time."""
    results = page.execute_async_script(PARSE_SPLIT_STREAMS, events)
    assert set(results) == {expected}


def test_the_api_key_is_sent_and_kept(keyed_server, browser):
    browser.get(keyed_server + "/")  # the page itself needs no key
    browser.execute_script("localStorage.clear()")
    browser.get(keyed_server + "/")
    settings(browser, max_tokens=3)
    browser.find_element(By.ID, "input").send_keys("Hi")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.ID, "error").text)
    assert "HTTP 401" in browser.find_element(By.ID, "error").text
    settings(browser, **{"api-key": API_KEY})
    ask(browser, "")  # the message is back in the box: send it again, with the key
    browser.get(keyed_server + "/")  # the key is remembered
    assert browser.find_element(By.ID, "api-key").get_property("value") == API_KEY
