"""End to end in a real browser: Debian's Chromium (headless) driven by Playwright against the app.

Uses /usr/bin/chromium (Debian's package; `.ci/run` installs it with apt before the tests, so the tests
themselves never touch the network); Playwright's own browser downloads are never used. Saves a screenshot
under the test's tmp dir.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.test_chat import part_image, speaking_tiny_assistant

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def ensure_chromium() -> Path:
    """Debian's chromium; skipped with the install line when missing (.ci/run installs it)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium); run `apt-get install -y chromium`")
    return CHROMIUM


@pytest.fixture(scope="module")
def app_url(tiny_tokenizer_dir, tmp_path_factory):
    pytest.importorskip("playwright")
    ensure_chromium()
    from assistant import app

    assistant = speaking_tiny_assistant()
    example_dir = tmp_path_factory.mktemp("examples")
    demo = app.build_demo(assistant, example_dir)
    _, url, _ = app.launch(demo, assistant.cfg, example_dir, prevent_thread_lock=True, quiet=True,
                           server_name="127.0.0.1", server_port=None)
    yield url
    demo.close()


LAST_BOT_TEXT = """() => { const b = document.querySelectorAll('#chatbot .bot');
    return b.length ? b[b.length - 1].innerText.trim() : ''; }"""


def ask(page, question: str, n_bot_before: int, timeout_s: float = 120.0) -> tuple[float, float, str]:
    """Type + Enter; returns (seconds to the first streamed text, seconds until the answer is stable, text)."""
    box = page.locator("#ask-box textarea")
    box.fill(question)
    t0 = time.perf_counter()
    box.press("Enter")
    first = done = None
    last, stable_since = None, None
    while time.perf_counter() - t0 < timeout_s:
        texts = page.locator("#chatbot .bot").all_inner_texts()
        text = texts[-1].strip() if len(texts) > n_bot_before else ""
        now = time.perf_counter()
        if first is None and text and text != "…" and not text.startswith("Loading content"):  # Gradio placeholders
            first = now - t0
        if text != last:
            last, stable_since = text, now
        elif first is not None and now - stable_since > 1.5:
            done = stable_since - t0
            break
        page.wait_for_timeout(20)
    assert first is not None and done is not None, f"no answer to {question!r} within {timeout_s} s"
    return first, done, last


def test_upload_ask_see_answer_and_overlay(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    query, ref = tmp_path / "part.png", tmp_path / "good.png"
    part_image(41, defect=(8, 30), size=64).save(query)
    part_image(42, size=64).save(ref)
    broken = tmp_path / "broken.png"
    broken.write_bytes(query.read_bytes()[:100])  # truncated PNG
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            page.wait_for_selector("#ask-box textarea", timeout=60_000)
            page.locator("#references input[type=file]").set_input_files(str(ref))
            page.wait_for_selector("#references img", timeout=30_000)
            page.locator("#ask-box input[type=file]").set_input_files(str(broken))  # a corrupt upload first
            page.wait_for_timeout(500)
            _, _, complaint = ask(page, "Is there any anomaly?", 0)
            page.locator("#ask-box input[type=file]").set_input_files(str(query))
            page.wait_for_selector("#ask-box img, #ask-box .thumbnail-item", timeout=30_000)
            _, _, answer = ask(page, "Is there any anomaly?", 1)
            page.wait_for_selector("#overlay img", timeout=30_000)
            badge = page.locator("#verdict-badge").inner_text()
            first, _, follow = ask(page, "Where is it?", 2)
            chat = page.locator("#chatbot").inner_text()
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            overlay_src = page.locator("#overlay img").first.get_attribute("src")
            n_bot = page.locator("#chatbot .bot").count()
            page.locator("#new-session").click()
            page.wait_for_selector("#verdict-badge.idle", timeout=30_000)
            n_bot_after_reset = page.locator("#chatbot .bot").count()
        finally:
            browser.close()
    assert answer.startswith("scratch scratch") and follow.startswith("scratch scratch")  # streamed LM text
    assert "could not use broken.png" in complaint and "corrupt or truncated" in complaint
    assert "Is there any anomaly?" in chat and "Where is it?" in chat and n_bot == 3 and n_bot_after_reset == 0
    assert ("ANOMALOUS" in badge or "NORMAL" in badge) and "1 reference(s)" in badge
    assert overlay_src and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}; follow-up submit -> first streamed text {first:.2f} s")
