"""A screenshot of the chat page of `python -m pyengine serve` with a short conversation, for the
docs: starts the server on the default model (SmolLM2-135M-Instruct), asks two questions greedily in
headless Chromium (Debian: chromium, chromium-driver; Python: selenium) and saves the page.

    python bench/screenshot_page.py                       # docs/serve_page.png
    python bench/screenshot_page.py -o /tmp/page.png --size 1000x760
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_util import running_server  # noqa: E402

SYSTEM = "You are a helpful assistant. Answer briefly."
QUESTIONS = ["What is the capital of France?", "Name three things to see there."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "serve_page.png"))
    parser.add_argument("--size", default="900x640", help="window size, WIDTHxHEIGHT (default 900x640)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}",
                "--hide-scrollbars"):
        options.add_argument(arg)
    with running_server("-t", "1") as url:
        shoot(url, options, args.output, width, height)


def shoot(url, options, output, width, height) -> None:
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        # The window's size less its frame is the page's: grow the window by the frame.
        frame_w, frame_h = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight]")
        driver.set_window_size(width + frame_w, height + frame_h)
        driver.get(url + "/")
        driver.execute_script("const [s, t, m] = arguments; document.getElementById('system').value = s;"
                              "document.getElementById('temperature').value = t;"
                              "document.getElementById('max_tokens').value = m;", SYSTEM, "0", "80")
        for question in QUESTIONS:
            before = len(driver.find_elements(By.CSS_SELECTOR, ".message.assistant"))
            driver.find_element(By.ID, "input").send_keys(question)
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 180).until(
                lambda d: len(d.find_elements(By.CSS_SELECTOR, ".message.assistant")) > before
                and "tokens/s" in d.find_element(By.ID, "stats").text)
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(output)
        print(f"{output}: {Path(output).stat().st_size // 1024} KiB")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
