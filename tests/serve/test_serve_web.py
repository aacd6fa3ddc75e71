"""The chat page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.web  # run by `make test-web` / `make test-all`, which install Chromium first

CHROMIUM = Path(os.environ.get("LMFORGE_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), "
                           "or point LMFORGE_CHROMIUM at a Chromium binary")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def test_chat_page_streams_a_reply(server, browser, tmp_path_factory):
    page = browser.new_page(viewport={"width": 1100, "height": 700})
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('smollm2')")
    assert page.is_hidden("#key-label")  # this server needs no key
    assert page.is_hidden("#attach")  # nor takes images
    page.fill("#system", "You are a helpful assistant. Answer briefly.")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.fill("#input", "What is the capital of France?")
    page.press("#input", "Enter")
    assert page.inner_text(".msg.user") == "What is the capital of France?"
    # While the reply streams in, the page is busy and the bubble already shows text.
    page.wait_for_function("document.querySelector('.msg.assistant.streaming')?.textContent.length > 0", timeout=60_000)
    page.wait_for_function("document.body.dataset.state === 'idle'", timeout=60_000)
    reply = page.locator(".msg.assistant")
    assert "Paris" in reply.inner_text()
    assert int(reply.get_attribute("data-chunks")) > 1  # arrived in several pieces, not at once
    assert "tokens in" in page.inner_text("#stats")
    folder = os.environ.get("LMFORGE_SCREENSHOT_DIR")  # keep the screenshot somewhere known, if asked
    shot = (Path(folder) if folder else tmp_path_factory.mktemp("web")) / "web_chat.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # A second turn sees the first; reset clears the conversation.
    page.fill("#input", "And of Italy?")
    page.press("#input", "Enter")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2 && "
                           "document.body.dataset.state === 'idle'", timeout=60_000)
    assert page.locator(".msg").count() == 4
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    page.close()


def test_chat_page_sends_an_attached_image(vision_model, browser, tmp_path):
    """With a vision-language model served, the page attaches a picture to a message as an OpenAI
    image_url part (a data URL of the file), asks without streaming and shows the reply."""
    import base64
    import io
    import json

    from PIL import Image

    from lmforge.serve import ServeConfig, create_app
    from tests.serve.conftest import live_app

    vlm, tokenizer = vision_model
    picture = tmp_path / "red.png"
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 30, 30)).save(buffer, format="PNG")
    picture.write_bytes(buffer.getvalue())
    with live_app(create_app(vlm.lm, tokenizer, ServeConfig(model_id="tiny-vlm"), vision=vlm)) as live:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(live.url + "/")
        page.wait_for_function("!document.getElementById('attach').hidden")
        page.fill("#max-tokens", "4")
        page.set_input_files("#image", str(picture))
        page.wait_for_function("document.getElementById('attachment').textContent.includes('red.png')")
        page.fill("#input", "What colour is it?")
        with page.expect_request("**/v1/chat/completions") as sent:
            page.press("#input", "Enter")
        body = json.loads(sent.value.post_data)
        assert body["stream"] is False
        assert body["messages"][-1]["content"] == [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()}},
            {"type": "text", "text": "What colour is it?"}]
        page.wait_for_function("document.body.dataset.state === 'idle' && document.querySelector('.msg.assistant')",
                               timeout=60_000)
        assert page.locator(".msg.error").count() == 0
        assert page.locator(".msg.user img").count() == 1 and page.is_hidden("#attachment")
        assert page.locator(".msg.assistant").get_attribute("data-chunks") == "1"  # answered whole
        assert "tokens in" in page.inner_text("#stats")
        page.close()
